"""The command line behaves as users of other tools expect (issue 14, item 5): global options
before or after the command, a confirmation before `delete`, help that says what the tool is
for, the version from the package's metadata, Playwright's own Chromium found as Playwright
finds it, Python 3.13 admitted."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import asyncpg
import pytest

from app import chromium
from tests.support.profile_tree import ProfileTree

ROOT = Path(__file__).resolve().parent.parent


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def one_json(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    out: dict[str, object] = json.loads(lines[0])
    return out


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def session_ids(env: dict[str, str]) -> list[str]:
    sessions = one_json(cli(env, "sessions", "--json"))["sessions"]
    assert isinstance(sessions, list)
    return [s["session_id"] for s in sessions]


def snapshot(env: dict[str, str], session: str, profile: ProfileTree) -> None:
    one_json(cli(env, "snapshot", session, "--profile", str(profile.root), "--json"))


# --- global options on either side of the command -------------------------------------------


def test_json_before_or_after_the_command(cli_env: dict[str, str], profile: ProfileTree) -> None:
    snapshot(cli_env, "s1", profile)
    before = one_json(cli(cli_env, "--json", "sessions"))
    after = one_json(cli(cli_env, "sessions", "--json"))
    assert before == after and before["sessions"][0]["session_id"] == "s1"  # type: ignore[index]
    gens = one_json(cli(cli_env, "--json", "snapshots", "s1"))["generations"]
    assert [g["generation"] for g in gens] == [1]  # type: ignore[attr-defined]
    # Without --json anywhere the output is for a person.
    assert not cli(cli_env, "sessions").stdout.lstrip().startswith("{")


@pytest.mark.parametrize("args", [["--help", "snapshots"], ["snapshots", "--help"],
                                  ["-h", "snapshots"], ["--json", "--help", "snapshots"]])
def test_help_before_or_after_the_command(args: list[str]) -> None:
    proc = cli(dict(os.environ), *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: sessionkeeper snapshots"), proc.stdout
    assert "list a session's generations" in proc.stdout


def test_top_level_help_says_what_the_tool_is_for() -> None:
    proc = cli(dict(os.environ), "--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert "logged in" in text and "PostgreSQL" in text  # what it is for
    for command in ("run", "exec", "demo", "sessions", "snapshots", "restore", "delete"):
        assert re.search(rf"^\s+{command}\s", text, re.M), command
    assert "--json" in text and "--version" in text
    examples = text[text.index("examples:"):]
    assert "sessionkeeper run" in examples and "DATABASE_URL=" in examples
    # Without a command: the same help, on stderr, exit 2.
    bare = cli(dict(os.environ))
    assert bare.returncode == 2 and "examples:" in bare.stderr


# --- delete asks first ----------------------------------------------------------------------


def test_delete_off_a_terminal_needs_yes(cli_env: dict[str, str], profile: ProfileTree) -> None:
    snapshot(cli_env, "s1", profile)
    line = one_error_line(proc := cli(cli_env, "delete", "s1"))
    assert proc.returncode == 2 and "--yes" in line and "'s1'" in line, line
    assert session_ids(cli_env) == ["s1"]
    out = one_json(cli(cli_env, "delete", "s1", "--yes", "--json"))
    assert out == {"session_id": "s1", "deleted": True}
    assert session_ids(cli_env) == []
    # -y, and --yes before the command's arguments, are the same.
    snapshot(cli_env, "s2", profile)
    assert one_json(cli(cli_env, "--json", "delete", "-y", "s2"))["deleted"] is True


def test_delete_refused_off_a_terminal_opens_no_database(empty_database_url: str,
                                                         tmp_path: Path) -> None:
    """The refusal comes before the database is opened: an empty one stays empty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env.update(DATABASE_URL=empty_database_url, SESSIONKEEPER_DATA_DIR=str(tmp_path / "st"),
               SESSIONKEEPER_LOG_FORMAT="json")
    proc = cli(env, "delete", "s1")
    assert proc.returncode == 2 and "--yes" in one_error_line(proc)

    async def tables() -> list[str]:
        conn = await asyncpg.connect(empty_database_url)
        try:
            rows = await conn.fetch("SELECT table_schema || '.' || table_name AS t FROM "
                                    "information_schema.tables WHERE table_schema NOT IN "
                                    "('pg_catalog', 'information_schema')")
        finally:
            await conn.close()
        return [r["t"] for r in rows]

    assert asyncio.run(tables()) == []


def _on_a_terminal(env: dict[str, str], answer: str | None, *args: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin and stderr; type `answer` once it has
    asked (None: end of input; "^C": SIGINT). Returns the exit code and what the terminal
    showed."""
    leader, follower = pty.openpty()
    shown = b""
    try:
        proc = subprocess.Popen([sys.executable, "-m", "app", *args], env=env, cwd=ROOT,
                                stdin=follower, stdout=subprocess.PIPE, stderr=follower)
        os.close(follower)
        answered = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the process ended and closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
            if not answered and b"to confirm: " in shown:
                if answer == "^C":
                    proc.send_signal(signal.SIGINT)
                else:
                    os.write(leader, b"\x04" if answer is None else answer.encode() + b"\n")
                answered = True
        proc.communicate(timeout=20)
    finally:
        os.close(leader)
    return proc.returncode, shown.decode(errors="replace")


def test_delete_on_a_terminal_asks_for_the_session_id(cli_env: dict[str, str],
                                                      profile: ProfileTree) -> None:
    snapshot(cli_env, "s1", profile)
    code, err = _on_a_terminal(cli_env, "yes", "delete", "s1")
    assert "Type the session id" in err and "1 generation" in err, err
    assert code == 1 and "nothing deleted" in err, err
    assert session_ids(cli_env) == ["s1"]
    code, err = _on_a_terminal(cli_env, None, "delete", "s1")  # end of input: no
    assert code == 1 and "nothing deleted" in err and session_ids(cli_env) == ["s1"], err
    code, err = _on_a_terminal(cli_env, "^C", "delete", "s1")  # Ctrl-C: at once, no
    assert code == 130 and "interrupted" in err and session_ids(cli_env) == ["s1"], err
    code, err = _on_a_terminal(cli_env, "s1", "delete", "s1")
    assert code == 0, err
    assert session_ids(cli_env) == []
    # An unknown session is said before any question.
    code, err = _on_a_terminal(cli_env, "s1", "delete", "s1")
    assert code == 1 and "no session 's1'" in err and "Type" not in err, err


# --- run --json -----------------------------------------------------------------------------


def test_run_json_logs_json_lines(cli_env: dict[str, str], tmp_path: Path) -> None:
    """The daemon has no result to print: --json makes its log (on stdout) JSON lines, as
    SESSIONKEEPER_LOG_FORMAT=json does, whatever that variable says."""
    env = {**cli_env, "SESSIONKEEPER_LOG_FORMAT": "console",
           "SESSIONKEEPER_CHROMIUM_PATH": str(tmp_path / "no-chromium")}
    for args in (["run", "--json"], ["--json", "run"]):
        proc = cli(env, *args)
        assert proc.returncode == 2  # stops at the missing Chromium, after its first lines
        assert "SESSIONKEEPER_CHROMIUM_PATH" in one_error_line(proc)
        lines = proc.stdout.strip().splitlines()
        assert lines, proc.stdout
        events = [json.loads(line) for line in lines]
        assert all("event" in e and "level" in e for e in events), lines
    plain = cli(env, "run")
    assert plain.stdout.strip() and not plain.stdout.lstrip().startswith("{")


# --- the version ----------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    """An installed distribution of another version comes first on the path: --version and
    app.__version__ both report it (no second copy of the number in the code)."""
    info = tmp_path / "sessionkeeper-9.8.7.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sessionkeeper\n"
                                   "Version: 9.8.7\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = cli(env, "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "sessionkeeper 9.8.7", proc
    out = subprocess.run([sys.executable, "-c", "import app; print(app.__version__)"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "9.8.7"
    assert not re.search(r"\d+\.\d+\.\d+", (ROOT / "app/__init__.py").read_text())


def test_version_is_pyprojects() -> None:
    from importlib.metadata import version

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert version("sessionkeeper") == pyproject["project"]["version"]
    proc = cli(dict(os.environ), "--version")
    assert proc.stdout.strip() == f"sessionkeeper {pyproject['project']['version']}"


# --- Python 3.13 ----------------------------------------------------------------------------


def test_python_313_is_admitted() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(project["requires-python"])
    assert {"3.11", "3.12", "3.13"} <= {v for v in ("3.10", "3.11", "3.12", "3.13", "3.14")
                                         if spec.contains(v + ".0")}
    for minor in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {minor}" in project["classifiers"]
    lock = (ROOT / "uv.lock").read_text()
    assert re.search(r'^requires-python = ">=3.11, <3.14"', lock, re.M)


def test_bootstrap_accepts_python_313(tmp_path: Path) -> None:
    """scripts/_bootstrap.sh's pick_python takes a 3.13 when it is the only Python."""
    source = (ROOT / "scripts/_bootstrap.sh").read_text()
    body = source[source.index("pick_python() {"):]
    body = body[:body.index("\n}\n") + 3]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, version in (("python3", "(3, 13)"), ("python3.13", "(3, 13)")):
        fake = bindir / name
        fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c \"import sys; "
                        f"sys.version_info = {version} + tuple(sys.version_info[2:]); "
                        f"exec(sys.argv[2])\" \"$@\"\n")
        fake.chmod(0o755)
    script = f"say() {{ echo \"$*\" >&2; }}\n{body}\npick_python\n"
    proc = subprocess.run(["/bin/bash", "-c", script], env={"PATH": str(bindir)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- Chromium: Playwright's own, found as Playwright finds it ------------------------------


def _fake_chromium(root: Path, folder: str, inner: str = "chrome-linux64/chrome") -> Path:
    path = root / folder / inner
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ms-playwright"
    root.mkdir()
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(root))
    return root


def test_playwright_revisions_sort_as_numbers(registry: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chromium, "playwright_revision", lambda name="chromium": None)
    _fake_chromium(registry, "chromium-999")
    newest = _fake_chromium(registry, "chromium-1200")
    _fake_chromium(registry, "chromium_headless_shell-1300",
                   "chrome-headless-shell-linux64/chrome-headless-shell")
    assert chromium.find_chromium() == newest


def test_the_revision_playwright_expects_comes_first(registry: Path) -> None:
    expected = chromium.playwright_revision()
    assert expected is not None and expected.isdigit()
    wanted = _fake_chromium(registry, f"chromium-{expected}")
    _fake_chromium(registry, f"chromium-{int(expected) + 500}")
    assert chromium.find_chromium() == wanted


def test_playwright_revision_is_its_browsers_json() -> None:
    import importlib.util

    spec = importlib.util.find_spec("playwright")
    assert spec is not None and spec.origin is not None
    browsers = json.loads((Path(spec.origin).parent / "driver/package/browsers.json")
                          .read_text())
    revision = next(b["revision"] for b in browsers["browsers"] if b["name"] == "chromium")
    assert chromium.playwright_revision() == revision


def test_registry_folder_as_playwright_computes_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLAYWRIGHT_BROWSERS_PATH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert chromium.playwright_registry() == tmp_path / "cache" / "ms-playwright"
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", "0")
    assert chromium.playwright_registry().name == ".local-browsers"
    assert chromium.playwright_registry().parent.name == "package"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", "relative/browsers")
    assert chromium.playwright_registry() == tmp_path / "relative/browsers"


def test_an_explicit_path_still_wins(registry: Path, tmp_path: Path) -> None:
    _fake_chromium(registry, "chromium-1200")
    mine = _fake_chromium(tmp_path, "mine", "chrome")
    assert chromium.find_chromium(mine) == mine


def test_discovery_does_not_load_playwright() -> None:
    code = ("import sys; from app.chromium import find_chromium; find_chromium(); "
            "print(sorted(m for m in sys.modules if m.startswith('playwright')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
