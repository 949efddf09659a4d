"""The vault demo behind scripts/demo: the real CLI against an embedded PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.snapshot.keep import KeepRules  # noqa: E402
from tests.support.profile_tree import build_profile, tree_files  # noqa: E402

WORK = ROOT / ".sessionkeeper" / "demo"


def cli(*args: str) -> dict[str, object]:
    env = {**os.environ, "SESSIONKEEPER_DATA_DIR": str(WORK / "state"),
           "SESSIONKEEPER_LOG_FORMAT": os.environ.get("SESSIONKEEPER_LOG_FORMAT", "console")}
    print(f"\n$ sessionkeeper {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "app", *args, "--json"], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    out: dict[str, object] = json.loads(proc.stdout)
    print(json.dumps(out, indent=1))
    return out


def kept(root: Path) -> dict[str, bytes]:
    rules = KeepRules()
    return {k: v for k, v in tree_files(root).items() if rules.keeps(k)}


def main() -> None:
    shutil.rmtree(WORK / "profile", ignore_errors=True)
    shutil.rmtree(WORK / "restored", ignore_errors=True)
    (WORK / "state").mkdir(parents=True, exist_ok=True)
    server = None
    if not os.environ.get("DATABASE_URL"):
        # Hold the embedded server open for the whole demo so each command reuses it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(str(WORK / "state" / "pgdata"), cleanup_mode="stop")
        print("embedded PostgreSQL running in", WORK / "state" / "pgdata")
    profile = build_profile(WORK / "profile", idb_bytes=20 * 1024 * 1024, blob_count=8)
    print("built a profile-shaped tree of",
          sum(len(v) for v in tree_files(profile.root).values()) // 1024, "KiB in", profile.root)

    cli("migrate")
    first = cli("snapshot", "demo", "--profile", str(profile.root))
    before = kept(profile.root)
    profile.add_messages(40, size=1024)
    profile.set_cookie("session", "rotated")
    profile.add_blob("photo", 150_000)
    second = cli("snapshot", "demo", "--profile", str(profile.root))
    after = kept(profile.root)
    cli("snapshot", "demo", "--profile", str(profile.root))
    cli("snapshots", "demo")
    for gen, expected in ((first["generation"], before), (second["generation"], after)):
        target = WORK / "restored" / f"gen-{gen}"
        cli("restore", "demo", "--profile", str(target), "--generation", str(gen))
        same = tree_files(target) == expected
        print(f"generation {gen} restored byte for byte: {same}")
        if not same:
            sys.exit(1)
    print(f"\nfirst snapshot uploaded {first['bytes_uploaded']:,} bytes; after a small change "
          f"the second uploaded {second['bytes_uploaded']:,} bytes.")
    if server is not None:
        server.cleanup()


if __name__ == "__main__":
    main()
