"""The benchmark's own parts: the RemoteAuth baseline, the change replay, the RSS wrapper."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench import ProfilePair, _diff, replay_changes, run_measured, tree_differences
from tests.support.profile_tree import ProfileTree, tree_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("variant", ["zip-bytea", "zip9-base64"])
def test_remoteauth_baseline_round_trip(variant: str, database_url: str, profile: ProfileTree,
                                        tmp_path: Path) -> None:
    env = dict(os.environ)
    base = [sys.executable, str(ROOT / "scripts" / "remoteauth_baseline.py")]
    common = ["--variant", variant, "--database-url", database_url, "--session", "s"]
    first = run_measured([*base, "backup", *common, "--profile", str(profile.root)], env)
    assert first.out["zip_bytes"] > 100_000 and first.rss > 20_000_000
    if variant == "zip9-base64":  # base64 text is a third larger than the zip
        assert first.out["stored_bytes"] == 4 * ((first.out["zip_bytes"] + 2) // 3)
    profile.add_messages(10, size=500)
    run_measured([*base, "backup", *common, "--profile", str(profile.root)], env)
    target = tmp_path / "restored"
    run_measured([*base, "restore", *common, "--profile", str(target)], env)
    kept = ("Default/IndexedDB/", "Default/Local Storage/")
    want = {k: v for k, v in tree_files(profile.root).items() if k.startswith(kept)}
    assert want and tree_files(target) == want  # what RemoteAuth keeps, and nothing else


def test_replay_changes_turns_a_into_b(profile: ProfileTree, tmp_path: Path) -> None:
    a = tmp_path / "a"
    (profile.root / "Default" / "Old").write_text("gone in B")
    shutil.copytree(profile.root, a, symlinks=True)
    profile.add_messages(30, size=400)
    profile.set_cookie("k", "v2")
    (profile.root / "Default" / "Old").unlink()
    pair = ProfilePair(1, a, profile.root, {}, {})
    _diff(pair)
    assert "Default/Cookies" in pair.changed and "Default/Old" in pair.removed
    live = tmp_path / "replayed"
    shutil.copytree(a, live, symlinks=True)
    untouched = [rel for rel in tree_files(a) if rel not in pair.changed]
    inodes = {rel: (live / rel).stat().st_ino for rel in untouched if (live / rel).exists()}
    replay_changes(pair, live)
    assert tree_files(live) == tree_files(profile.root)
    # Files the writer did not touch keep their inode: the stat cache still knows them.
    assert all((live / rel).stat().st_ino == ino for rel, ino in inodes.items()
               if (live / rel).exists())
    assert tree_differences(profile.root, live, "Default") == []


def test_peak_rss_is_the_commands_own() -> None:
    held = bytearray(200_000_000)  # a large parent must not inflate the child's figure
    small = run_measured([sys.executable, "-c", "print('{}')"], dict(os.environ))
    big = run_measured([sys.executable, "-c", "x = bytearray(150_000_000); print('{}')"],
                       dict(os.environ))
    assert small.rss < 40_000_000 < 150_000_000 < big.rss < 200_000_000
    del held


def test_failed_command_is_one_line_error() -> None:
    with pytest.raises(SystemExit, match="failed"):
        run_measured([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
    assert subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--sizes", "x"],
                          capture_output=True, text=True, cwd=ROOT).stderr.strip() \
        == "bench: --sizes must be integers, got 'x'"
