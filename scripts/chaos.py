"""Fault injection against the real daemon (see scripts/chaos and tests/support/chaos.py).

Runs the scenarios against a PostgreSQL cluster of its own (initdb in a temporary folder, a
free port), prints the figures and pass/fail per scenario, writes results/chaos/results.json
and results.md, and exits 1 if any scenario failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.chaos import (  # noqa: E402
    SCENARIOS,
    Chaos,
    ScenarioResult,
    longest_shutdown,
    run_scenario,
)
from tests.support.pgcluster import PgCluster  # noqa: E402

TITLES = {
    "a": "kill -9 during snapshots",
    "b": "PostgreSQL stopped",
    "c": "PostgreSQL black-holed",
    "d": "chunk bytes flipped",
    "e": "Chromium killed / renderer hung",
    "f": "disk full during restore",
}


def _only(value: str) -> list[str]:
    keys = [k.strip().lower() for k in value.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"scenarios are letters among {','.join(SCENARIOS)}")
    return keys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=100, help="kill -9 rounds in scenario a")
    p.add_argument("--outage-s", type=float, default=60, help="PostgreSQL stop in scenario b")
    p.add_argument("--only", type=_only, default=list(SCENARIOS),
                   help="comma-separated scenarios to run (default: a,b,c,d,e,f)")
    p.add_argument("--lanes", type=int, default=2,
                   help="scenario a: daemons killed side by side, each on its own database")
    p.add_argument("--verify-every", type=int, default=10,
                   help="scenario a: restore every kept generation with the CLI this often")
    p.add_argument("--outage-ttl", type=float, default=30,
                   help="scenario b: the lease TTL (default 30, the daemon's default)")
    p.add_argument("--blackhole-ttl", type=float, default=10, help="scenario c: the lease TTL")
    p.add_argument("--seed", type=int, help="scenario a: random seed (printed when not given)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "chaos")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary folder")
    return p.parse_args(argv)


def options_for(key: str, args: argparse.Namespace) -> dict[str, Any]:
    if key == "a":
        return {"kills": args.kills, "lanes": args.lanes, "verify_every": args.verify_every,
                "seed": args.seed}
    if key == "b":
        return {"outage_s": args.outage_s, "ttl": args.outage_ttl}
    if key == "c":
        return {"ttl": args.blackhole_ttl}
    return {}


def headline(result: ScenarioResult) -> str:
    """The figure each scenario is judged by, in one line."""
    f = result.figures
    if result.skipped:
        return f"skipped: {result.skipped}"
    if result.key == "a":
        return (f"{f.get('restores_reached_ready')}/{f.get('kills')} boots after a kill reached "
                f"ready with no QR code; phases hit {f.get('phases')}; CLI restores "
                f"{(f.get('cli_verify') or {}).get('generations')} ok, "
                f"{(f.get('cli_verify') or {}).get('failures')} failed")
    if result.key == "b":
        return (f"recovery: snapshot {f.get('recovery_to_snapshot_s')} s, ready and not degraded "
                f"{f.get('recovery_to_ready_not_degraded_s')} s after PostgreSQL returned; "
                f"lease lost: {f.get('lease_lost')}; the page's message "
                f"#{f.get('page_message_at_return')} at the return: "
                f"{f.get('its_copy_of_that_message')} in the first generation after (which "
                f"goes up to #{f.get('its_last_message')})")
    if result.key == "c":
        return (f"browser stopped {f.get('browser_stopped_after_s')} s after the black hole "
                f"(TTL {f.get('lease_ttl_s')} s); recovery: lease {f.get('recovery_lease_s')} s, "
                f"ready {f.get('recovery_ready_s')} s after it was lifted; two browsers at once "
                f"{f.get('two_browsers_s')} s")
    if result.key == "d":
        return (f"generation {f.get('damaged_generation')} damaged -> restored "
                f"{f.get('fell_back_to')}; logged {f.get('logged')}")
    if result.key == "e":
        killed, hung = f.get("killed") or {}, f.get("hung") or {}
        return (f"kill -9: detected {killed.get('detected_s')} s, ready "
                f"{killed.get('ready_s')} s; renderer hung: detected {hung.get('detected_s')} s, "
                f"ready {hung.get('ready_s')} s")
    if result.key == "f":
        daemon = f.get("daemon") or {}
        said = (f"{daemon.get('error_event')}: {daemon.get('error_reason')}"
                if daemon.get("error_event") else daemon.get("error_line"))
        return (f"daemon: exit {daemon.get('exit_code')}, {said}; CLI exit "
                f"{(f.get('cli') or {}).get('exit_code')}: {(f.get('cli') or {}).get('message')}")
    return ""


def markdown(results: list[ScenarioResult], chaos: Chaos, meta: dict[str, Any]) -> str:
    lines = [f"# scripts/chaos, {meta['date']}", "",
             f"Machine: {meta['machine']}; {meta['command']}", "",
             "| scenario | result | figures |", "|---|---|---|"]
    for r in results:
        mark = "skipped" if r.passed is None else ("pass" if r.passed else "FAIL")
        lines.append(f"| {r.key}: {TITLES[r.key]} | {mark} | {headline(r)} |")
    longest = longest_shutdown(chaos)
    lines += ["", "Longest shutdown seen (SIGTERM to exit): "
              + (f"{longest['seconds']} s ({longest['scenario']}, exit code "
                 f"{longest['exit_code']})" if longest else "none"), ""]
    for r in results:
        if r.failures:
            lines.append(f"## {r.key}: why it failed")
            lines += [f"- {line.splitlines()[0][:400]}" for line in r.failures]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sk-chaos-"))
    work.chmod(0o755)
    started = time.monotonic()
    print(f"chaos: scenarios {','.join(args.only)}; work folder {work}", file=sys.stderr)
    try:
        cluster = PgCluster(work / "pg")
    except (RuntimeError, OSError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        print(f"chaos: cannot start a PostgreSQL cluster: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    chaos = Chaos(cluster, work)
    results: list[ScenarioResult] = []
    try:
        for key in args.only:
            print(f"chaos: {key}: {TITLES[key]}", file=sys.stderr, flush=True)
            result = run_scenario(chaos, key, **options_for(key, args))
            results.append(result)
            mark = "skipped" if result.passed is None else ("pass" if result.passed else "FAIL")
            print(f"chaos: {key}: {mark} ({result.figures.get('duration_s')} s) "
                  f"{headline(result)}", file=sys.stderr, flush=True)
            for line in result.failures:
                print(f"  - {line[:2000]}", file=sys.stderr)
    finally:
        chaos.cleanup()
        cluster.close()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "command": "scripts/chaos "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, Python {platform.python_version()}",
            "duration_s": round(time.monotonic() - started, 1)}
    longest = longest_shutdown(chaos)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({
        **meta, "scenarios": [r.as_json() for r in results], "longest_shutdown": longest,
        "shutdowns": chaos.shutdowns}, indent=2, default=str) + "\n")
    report = markdown(results, chaos, meta)
    (args.out / "results.md").write_text(report + "\n")
    print(report)
    failed = [r.key for r in results if r.passed is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
