"""Breaks the README's promises one line at a time; the tests that prove each must notice.

The breaks are data (scripts/sabotage.toml). The working tree (tracked and untracked files, not
ignored ones) is copied once into a temporary folder. For each break, its targeted tests first
run on the unbroken copy and must pass; then the one line is replaced, the tests run again and
must fail, and the line is put back. Every process of a run imports `app` from the copy
(PYTHONPATH), the daemons and CLIs the tests start included.

Prints a table (break | targeted tests | result) and exits 1 unless every break was caught:
a break survives when its tests pass with it, and is not proven when its tests do not exist,
fail without it, or its line is no longer in the code (`stale`: update the break).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BREAKS = ROOT / "scripts" / "sabotage.toml"

# pytest's exit codes (pytest.ExitCode): 0 passed, 1 some failed, 4 usage error (a file or
# node id that does not exist), 5 no test collected.
PASSED, FAILED, USAGE, NO_TESTS = 0, 1, 4, 5


@dataclass(frozen=True)
class Break:
    """One promise, the line that breaks it, and the tests that must notice."""

    name: str
    promise: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    after: str | None = None

    def apply(self, text: str) -> str:
        """text with the line broken; ValueError (stale) when `old` is not there exactly once."""
        start = 0
        if self.after is not None:
            if text.count(self.after) != 1:
                raise ValueError(f"{self.after!r} is not in {self.file} exactly once")
            start = text.index(self.after)
        head, tail = text[:start], text[start:]
        if self.after is None and tail.count(self.old) != 1:
            raise ValueError(f"{self.old!r} is not in {self.file} exactly once")
        if self.old not in tail:
            raise ValueError(f"{self.old!r} is not in {self.file} after {self.after!r}")
        return head + tail.replace(self.old, self.new, 1)


@dataclass
class Outcome:
    brk: Break
    result: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def caught(self) -> bool:
        return self.result == "caught"


def load_breaks(path: Path) -> list[Break]:
    """The breaks of the data file, checked for the fields each needs."""
    data = tomllib.loads(path.read_text())
    breaks = []
    for raw in data.get("break", []):
        missing = {"name", "promise", "file", "old", "new", "tests"} - raw.keys()
        if missing:
            raise SystemExit(f"sabotage: {path.name}: break {raw.get('name', '?')!r} lacks "
                             f"{', '.join(sorted(missing))}")
        if "\n" in raw["old"] or "\n" in raw["new"]:
            raise SystemExit(f"sabotage: {path.name}: break {raw['name']!r} is not one line")
        breaks.append(Break(raw["name"], raw["promise"], raw["file"], raw["old"], raw["new"],
                            tuple(raw["tests"]), raw.get("after")))
    names = [b.name for b in breaks]
    if len(set(names)) != len(names):
        raise SystemExit(f"sabotage: {path.name}: break names repeat")
    return breaks


def copy_tree(dest: Path) -> None:
    """The working tree as it is now (uncommitted edits included), without ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue  # tracked but deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def test_env(copy: Path) -> dict[str, str]:
    """Every process imports app from the copy; no bytecode (a line put back within the same
    second, at the same size, would otherwise run from a stale .pyc); no coverage; tests
    marked slow run too (a break's tests are named on purpose)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env.update(PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1", SK_SLOW="1")
    return env


def run_tests(copy: Path, tests: tuple[str, ...], log: Path, verbose: bool) -> int:
    """pytest on the copy; its output goes to log (and to the terminal with verbose)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        if verbose:
            proc = subprocess.Popen(cmd, cwd=copy, env=test_env(copy), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                out.write(line)
            return proc.wait()
        return subprocess.run(cmd, cwd=copy, env=test_env(copy), stdout=out,
                              stderr=subprocess.STDOUT).returncode


def last_lines(log: Path, n: int = 3) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return " / ".join(lines[-n:])[-300:]


def ran_a_test(log: Path) -> bool:
    """Whether pytest's summary line of the last run counts a passed test."""
    run = log.read_text().rsplit("\n$ ", 1)[-1].splitlines()
    return any(" passed" in line for line in run[-3:])


def first_failure(log: Path) -> str:
    """pytest's first FAILED/ERROR summary line of the last run (why the break was caught),
    else its last line."""
    run = log.read_text().rsplit("\n$ ", 1)[-1].splitlines()
    failed = [line for line in run if line.startswith(("FAILED ", "ERROR "))]
    return failed[0][:300] if failed else last_lines(log, 1)


Baselines = dict[tuple[str, ...], tuple[int, str]]


def sabotage(brk: Break, copy: Path, logs: Path, baselines: Baselines,
             verbose: bool) -> Outcome:
    """Apply one break in the copy, run its tests, put the line back."""
    started = time.monotonic()
    log = logs / f"{brk.name}.log"
    path = copy / brk.file
    try:
        original = path.read_text()
        broken = brk.apply(original)
    except (OSError, ValueError) as exc:
        return Outcome(brk, "stale", str(exc))
    if brk.tests not in baselines:
        code = run_tests(copy, brk.tests, log, verbose)
        if code == PASSED and not ran_a_test(log):
            code = NO_TESTS  # every one skipped: a pass proves nothing
        baselines[brk.tests] = (code, last_lines(log, 1 if code in (USAGE, NO_TESTS) else 3))
    base, said = baselines[brk.tests]
    if base in (USAGE, NO_TESTS):
        return Outcome(brk, "no tests", said, time.monotonic() - started)
    if base != PASSED:
        return Outcome(brk, "fails unbroken", f"exit {base}: {said}", time.monotonic() - started)
    path.write_text(broken)
    try:
        code = run_tests(copy, brk.tests, log, verbose)
    finally:
        path.write_text(original)
    seconds = time.monotonic() - started
    if code == FAILED:
        return Outcome(brk, "caught", first_failure(log), seconds)
    if code == PASSED:
        return Outcome(brk, "survived", last_lines(log, 1), seconds)
    return Outcome(brk, "error", f"exit {code}: {last_lines(log)}", seconds)


def table(outcomes: list[Outcome]) -> str:
    rows = [("break", "targeted tests", "result", "s"), ("---", "---", "---", "---")]
    rows += [(o.brk.name, " ".join(o.brk.tests), o.result, f"{o.seconds:.0f}") for o in outcomes]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only breaks whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the breaks and exit")
    parser.add_argument("--check", action="store_true",
                        help="only check that every break still applies to the code (no tests)")
    parser.add_argument("--breaks", type=Path, default=BREAKS, help="the data file")
    parser.add_argument("--keep", action="store_true", help="keep the copy and the logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    args = parser.parse_args()

    breaks = load_breaks(args.breaks)
    if args.names:
        breaks = [b for b in breaks if any(n in b.name for n in args.names)]
        if not breaks:
            print(f"sabotage: no break named like {' '.join(args.names)}", file=sys.stderr)
            return 2
    if args.list:
        for b in breaks:
            print(f"{b.name}: {b.promise}\n    {b.file}: {b.old}  ->  {b.new}\n"
                  f"    tests: {' '.join(b.tests)}")
        return 0

    if args.check:
        stale = []
        for b in breaks:
            try:
                b.apply((ROOT / b.file).read_text())
            except (OSError, ValueError) as exc:
                stale.append(f"{b.name}: {exc}")
        for line in stale:
            print(f"sabotage: stale break {line}", file=sys.stderr)
        if not stale:
            print(f"all {len(breaks)} breaks apply")
        return 1 if stale else 0

    work = Path(tempfile.mkdtemp(prefix="sessionkeeper-sabotage-"))
    copy, logs = work / "repo", work / "logs"
    logs.mkdir()
    outcomes: list[Outcome] = []
    try:
        copy_tree(copy)
        baselines: Baselines = {}
        for i, brk in enumerate(breaks, 1):
            print(f"[{i}/{len(breaks)}] {brk.name}: {brk.file}", flush=True)
            outcome = sabotage(brk, copy, logs, baselines, args.verbose)
            print(f"    {outcome.result} ({outcome.seconds:.0f} s) {outcome.detail}", flush=True)
            outcomes.append(outcome)
    finally:
        if args.keep:
            print(f"copy and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(table(outcomes))
    bad = [o for o in outcomes if not o.caught]
    print()
    if bad:
        print(f"{len(bad)} of {len(outcomes)} breaks not caught: "
              f"{', '.join(f'{o.brk.name} ({o.result})' for o in bad)}")
        return 1
    print(f"all {len(outcomes)} breaks caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
