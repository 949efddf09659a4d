"""The RemoteAuth approach with a SQL store, as the baseline of scripts/bench.

whatsapp-web.js RemoteAuth backs up by copying the profile to a temporary folder, keeping
`Default/IndexedDB` and `Default/Local Storage`, zipping that folder with archiver('zip') and
handing the whole zip to its store; a restore fetches the zip and unzips it over the profile.
This is that, against PostgreSQL, in two variants:

- `zip-bytea`: deflate at zlib's default level (archiver's default), one `bytea` row per
  session, upserted whole on every backup.
- `zip9-base64`: deflate at level 9, stored as a base64 string in a `text` column, as the
  user's own write-up (DatabaseAuth / DatabaseStore) does.

Each call prints one JSON object: duration_ms (the operation, after interpreter start),
zip_bytes and stored_bytes.

Usage: remoteauth_baseline.py {backup|restore} --variant V --database-url URL
           --session ID --profile DIR
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import asyncpg

# RemoteAuth's requiredDirs: everything else in the copy is deleted before zipping.
KEPT = ("Default/IndexedDB", "Default/Local Storage")

VARIANTS = {
    "zip-bytea": {"level": zlib.Z_DEFAULT_COMPRESSION, "table": "remoteauth_zip",
                  "column": "bytea"},
    "zip9-base64": {"level": 9, "table": "remoteauth_zip9_base64", "column": "text"},
}


def _zip_folder(folder: Path, out: Path, level: int) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())


async def backup(variant: str, url: str, session: str, profile: Path) -> dict[str, int]:
    spec = VARIANTS[variant]
    table = spec["table"]
    with tempfile.TemporaryDirectory(prefix="remoteauth-") as tmp:
        copy = Path(tmp) / "session"
        copy.mkdir()
        for rel in KEPT:
            if (profile / rel).is_dir():
                # fs.copy(...).catch(() => {}): a file vanishing mid-copy is ignored.
                shutil.copytree(profile / rel, copy / rel, dirs_exist_ok=True,
                                ignore_dangling_symlinks=True)
        zip_path = Path(tmp) / f"{session}.zip"
        _zip_folder(copy, zip_path, int(spec["level"]))
        data = zip_path.read_bytes()
    value: bytes | str = data if spec["column"] == "bytea" else base64.b64encode(data).decode()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (session text PRIMARY KEY, "
            f"data {spec['column']} NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())")
        await conn.execute(
            f"INSERT INTO {table} (session, data) VALUES ($1, $2) ON CONFLICT (session) "
            "DO UPDATE SET data = excluded.data, updated_at = now()", session, value)
    finally:
        await conn.close()
    return {"zip_bytes": len(data), "stored_bytes": len(value)}


async def restore(variant: str, url: str, session: str, profile: Path) -> dict[str, int]:
    spec = VARIANTS[variant]
    conn = await asyncpg.connect(url)
    try:
        value = await conn.fetchval(f"SELECT data FROM {spec['table']} WHERE session = $1",
                                    session)
    finally:
        await conn.close()
    if value is None:
        raise SystemExit(f"no backup of {session!r}")
    data = value if isinstance(value, bytes) else base64.b64decode(value)
    profile.mkdir(parents=True, exist_ok=True)
    zip_path = profile.parent / f"{session}.zip"
    zip_path.write_bytes(data)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(profile)
    finally:
        zip_path.unlink()
    return {"zip_bytes": len(data), "stored_bytes": len(value)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["backup", "restore"])
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--session", default="bench")
    parser.add_argument("--profile", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    action = backup if args.action == "backup" else restore
    facts = asyncio.run(action(args.variant, args.database_url, args.session, args.profile))
    print(json.dumps({**facts, "duration_ms": round((time.perf_counter() - started) * 1000, 1)}))


if __name__ == "__main__":
    main()
