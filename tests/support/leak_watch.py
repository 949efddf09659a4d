"""The whole suite's output, grepped for every secret the tests used (issue 13).

Every secret a test hands to a process it starts (the HTTP token, vault keys, the webhook
URL, a database password: in the child's environment or after `--old-key`/`--new-key`) is
recorded, and so is everything those processes print (subprocess.run's captured output, the
daemons' lines) and each test's captured stdout and stderr. At the end of the run the
controller reads what every worker recorded and fails the run, naming the test and the
secret's variable, if any secret appears in any output. A secret a process prints on purpose
(`keygen`'s key) is not output to grep.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SECRET_VARIABLES = ("SESSIONKEEPER_HTTP_TOKEN", "SESSIONKEEPER_ENCRYPTION_KEY",
                    "SESSIONKEEPER_ENCRYPTION_KEY_OLD", "SESSIONKEEPER_WEBHOOK_URL")
SECRET_FLAGS = ("--old-key", "--new-key")
_DIR_VARIABLE = "SK_LEAK_WATCH_DIR"
_MIN_LENGTH = 8  # shorter values would match by chance

secrets: dict[str, str] = {}  # value -> where it came from
outputs: list[tuple[str, str]] = []  # (test or process, text)
current_test = ""
worker = ""  # this process's xdist worker id ("" in the controller or without workers)


def note_secret(value: str | None, source: str) -> None:
    """A secret a test used."""
    if value and len(value) >= _MIN_LENGTH:
        secrets.setdefault(value, source)


def note_env(env: Mapping[str, str] | None) -> None:
    """The secrets of an environment a test gives a process."""
    if not env:
        return
    for name in SECRET_VARIABLES:
        note_secret(env.get(name), name)
    url = env.get("DATABASE_URL")
    if url:
        note_secret(urlsplit(url).password, "DATABASE_URL password")


def note_args(args: Any) -> bool:
    """The secrets on a command line; False for a command whose output is a secret."""
    if not isinstance(args, list | tuple):
        return True
    words = [str(a) for a in args]
    for flag, value in itertools.pairwise(words):
        if flag in SECRET_FLAGS:
            note_secret(value, flag)
    return "keygen" not in words


def note_output(text: Any, where: str = "") -> None:
    """Something a test or a process it started printed."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if isinstance(text, str) and text:
        outputs.append((where or current_test, text))


def install() -> None:
    """Wrap subprocess.run and Popen.communicate to record secrets and output."""
    original_run = subprocess.run
    original_communicate = subprocess.Popen.communicate
    original_init = subprocess.Popen.__init__

    def run(*args: Any, **kwargs: Any) -> Any:
        command = args[0] if args else kwargs.get("args")
        note_env(kwargs.get("env"))
        grep = note_args(command)
        result = original_run(*args, **kwargs)
        if grep:
            note_output(result.stdout)
            note_output(result.stderr)
        return result

    def init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        command = args[0] if args else kwargs.get("args")
        note_env(kwargs.get("env"))
        self._sk_grep = note_args(command)  # type: ignore[attr-defined]
        original_init(self, *args, **kwargs)

    def communicate(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        out, err = original_communicate(self, *args, **kwargs)
        if getattr(self, "_sk_grep", True):
            note_output(out)
            note_output(err)
        return out, err

    subprocess.run = run  # type: ignore[assignment]
    subprocess.Popen.__init__ = init  # type: ignore[method-assign]
    subprocess.Popen.communicate = communicate  # type: ignore[method-assign]


def leaks() -> list[str]:
    """One line per secret found in an output."""
    found = []
    for value, source in secrets.items():
        for where, text in outputs:
            if value in text:
                found.append(f"{source} appears in the output of {where}")
                break
    return found


def share_dir() -> Path | None:
    """Where workers leave what they recorded for the controller (set by the controller)."""
    folder = os.environ.get(_DIR_VARIABLE)
    return Path(folder) if folder else None


def set_share_dir(folder: Path) -> None:
    os.environ[_DIR_VARIABLE] = str(folder)


def save(folder: Path, name: str) -> None:
    """This process's record, for the controller."""
    (folder / f"{name}.json").write_text(json.dumps({"secrets": secrets,
                                                     "outputs": outputs}))


def load_all(folder: Path) -> None:
    """Merge every worker's record into this process's."""
    for path in folder.glob("*.json"):
        doc = json.loads(path.read_text())
        for value, source in doc["secrets"].items():
            secrets.setdefault(value, source)
        outputs.extend((where, text) for where, text in doc["outputs"])


def report_lines(found: Iterable[str]) -> str:
    return "secrets leaked into the suite's output:\n" + "\n".join(f"  {f}" for f in found)
