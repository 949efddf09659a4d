"""sessionkeeper: keeps a headless Chromium session logged in across container restarts."""

__version__ = "0.1.0"
