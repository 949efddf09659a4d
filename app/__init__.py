"""sessionkeeper: keeps a headless Chromium session logged in across container restarts."""

from __future__ import annotations


def package_version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("sessionkeeper")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
        return "0+unknown"


def __getattr__(name: str) -> str:
    # Computed on first use: importing the package (every process does) reads no metadata.
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
