"""Snapshot a profile into the vault: capture, chunk, upload what is new, commit a generation.

An unchanged profile uploads nothing and creates no generation. A generation row is written
in one statement after every chunk it names is stored, so it is never visible half-written.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from app.errors import CorruptSnapshot, NotFound
from app.log import get_logger
from app.progress import NullProgress, ProgressSink
from app.snapshot.codec import iter_chunks, iter_fixed_chunks
from app.snapshot.keep import is_stored_blob
from app.snapshot.manifest import FileEntry, Manifest
from app.snapshot.sealing import SessionCodec
from app.snapshot.staging import (
    StagedTree,
    capture,
    clear_stale_staging,
    scan_live,
    work_dir_for,
)
from app.store import repo
from app.store.repo import Conn
from app.tasks import task_group
from app.vault import keyring
from app.vault.commit import commit_manifest
from app.vault.delta_bases import DeltaBases, encode_against
from app.vault.manifests import OpenManifest, load_manifest
from app.vault.options import BATCH_BYTES, BATCH_CHUNKS, VaultOptions
from app.vault.retention import prune
from app.vault.statcache import StatCache


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What one snapshot did."""

    session_id: str
    changed: bool
    generation: int | None
    files: int
    bytes_raw: int
    bytes_uploaded: int
    chunks_new: int
    chunks_reused: int
    duration_ms: int
    capture_attempts: int
    # The login state the capture showed ('ready', 'qr', or None: unlabelled).
    login_state: str | None = None
    # Why nothing was committed although something changed (a QR capture over a login).
    skipped: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Plain fields for --json output and log events (`skipped` only when set)."""
        fields = asdict(self)
        if self.skipped is None:
            del fields["skipped"]
        return fields


# A label for a capture: fixed ('ready', 'qr', None), or read from the staged copy (the
# target's login key in its localStorage) when no page tells the state.
Label = str | None
LabelFn = Callable[[Path], Label]
QR_OVER_LOGIN = "qr capture; a logged-in generation is kept"


def _read_hash(chunks: Iterator[bytes], count: int,
               address: Callable[[bytes], bytes]) -> list[tuple[bytes, bytes]]:
    """The next chunks of a file with their addresses, at most `count` of them and about
    BATCH_BYTES (runs in a worker thread)."""
    batch, size = [], 0
    for raw in itertools.islice(chunks, count):
        batch.append((address(raw), raw))
        size += len(raw)
        if size >= BATCH_BYTES:
            break
    return batch


Batch = list[tuple[bytes, bytes]]
# After an upload this big the planner's idea of the chunk table is stale (a first snapshot:
# "empty"), and lookups by digest slow down until autovacuum analyzes it.
_ANALYZE_AFTER_CHUNKS = 1000


class _Uploader:
    """Streams chunks of changed files to the database in bounded batches.

    Reading and hashing (the caller, in worker threads) overlap with storing (a task of its
    own: the existence check, zstd in a worker thread, the insert): at most two batches wait
    in between, so memory stays bounded whatever the profile's size.
    """

    def __init__(self, conn: Conn, session_id: str, known: set[bytes],
                 codec: SessionCodec, progress: ProgressSink,
                 bases: DeltaBases | None = None) -> None:
        self.conn = conn
        self.session_id = session_id
        self.known = known
        self.codec = codec
        self.bases = bases or DeltaBases(None)
        self.wanted_bases: dict[bytes, bytes] = {}  # new chunk -> its base candidate
        self.progress = progress
        self.pending: Batch = []
        self.pending_set: set[bytes] = set()
        self.pending_bytes = 0
        self.chunks_new = 0
        self.bytes_uploaded = 0
        self._send, self._receive = anyio.create_memory_object_stream[Batch](2)

    async def store_batches(self) -> None:
        """The storing side: runs until `finish()` closes the stream."""
        async with self._receive:
            async for batch in self._receive:
                await self._store(batch)

    async def add_file(self, path: Path, rel: str) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
        """Chunk one staged file (`rel`: its path in the profile); returns its chunks'
        digests and sizes. A stored blob is cut into fixed pieces, everything else by
        content."""
        digests: list[bytes] = []
        sizes: list[int] = []
        fh = await anyio.to_thread.run_sync(path.open, "rb")
        chunks = iter_fixed_chunks(fh) if is_stored_blob(rel) else iter_chunks(fh)
        try:
            while batch := await anyio.to_thread.run_sync(_read_hash, chunks, BATCH_CHUNKS,
                                                          self.codec.address):
                for d, raw in batch:
                    if d not in self.known and d not in self.pending_set:
                        self.pending.append((d, raw))
                        self.pending_set.add(d)
                        self.pending_bytes += len(raw)
                        base = self.bases.candidate(rel, len(digests),
                                                    digests[-1] if digests else None)
                        if base is not None:
                            self.wanted_bases[d] = base
                    else:
                        self.progress.advance(len(raw))
                    digests.append(d)
                    sizes.append(len(raw))
                if len(self.pending) >= BATCH_CHUNKS or self.pending_bytes >= BATCH_BYTES:
                    await self._hand_over()
        finally:
            fh.close()
        return tuple(digests), tuple(sizes)

    async def _hand_over(self) -> None:
        batch, self.pending, self.pending_set = self.pending, [], set()
        self.pending_bytes = 0
        if batch:
            self.known.update(d for d, _ in batch)
            await self._send.send(batch)

    async def finish(self) -> None:
        """Hand over the last batch and let the storing side end."""
        async with self._send:
            await self._hand_over()

    async def _store(self, batch: Batch) -> None:
        wanted = {d: self.wanted_bases.pop(d) for d, _ in batch if d in self.wanted_bases}
        bases = (await DeltaBases.resolve(self.conn, self.session_id, self.codec, wanted)
                 if wanted else {})

        rows, delta = await anyio.to_thread.run_sync(encode_against, self.codec, batch, bases)
        # Chunks stored earlier (by a generation pruned since, or an interrupted snapshot)
        # are skipped by the insert; only what it stored counts as uploaded.
        stored = await repo.insert_chunks(self.conn, self.session_id, rows, delta)
        self.chunks_new += len(stored)
        self.bytes_uploaded += sum(len(r[3]) for r in rows if r[0] in stored)
        self.progress.advance(sum(len(raw) for _, raw in batch))


async def _previous(conn: Conn, session_id: str,
                    latest: repo.GenerationInfo | None) -> OpenManifest | None:
    if latest is None:
        return None
    try:
        return await load_manifest(conn, session_id, latest.generation)
    except (CorruptSnapshot, NotFound):
        return None  # not trusted: every chunk is checked against the table instead


@keyring.with_keyring
async def save_snapshot(
    pool: asyncpg.Pool, session_id: str, profile: Path, options: VaultOptions,
    *, kind: str = "manual", login_state: Label | LabelFn = None, keep_login: bool = False,
    progress: ProgressSink | None = None, lease_token: int | None = None,
    work_dir: Path | None = None, force: bool = False,
) -> SaveResult:
    """Capture the profile and commit a new generation if anything changed.

    login_state labels the generation; a function is called with the staged copy's root.
    With keep_login a capture labelled 'qr' is not committed while a logged-in generation
    exists (a QR page holds no login to go back to). With a lease token the commit is fenced:
    LeaseLost if another process owns the session; without one, LeaseHeld while any process
    holds its lease, unless force. work_dir (default: beside the profile) holds the staged
    copies and the stat cache.
    """
    log = get_logger(session_id=session_id)
    progress = progress or NullProgress()
    started = time.monotonic()
    work = work_dir or work_dir_for(profile)
    cache_path = StatCache.path_for(work, session_id)
    cache = await anyio.to_thread.run_sync(StatCache.load, cache_path, session_id)
    if cache.addressing != keyring.active().tag():
        # Recorded under another addressing (the store was keyed since): its chunk lists
        # would name addresses this store no longer writes.
        cache = StatCache(session_id, addressing=keyring.active().tag())
    same = await _unchanged_by_stat(pool, session_id, profile, options, cache, started)
    if same is not None:
        log.info("snapshot_unchanged", files=same.files, bytes_raw=same.bytes_raw,
                 duration_ms=same.duration_ms, by="stat")
        return same
    await anyio.to_thread.run_sync(clear_stale_staging, work)
    # Shielded: a capture cancelled in its worker thread would leave a staging folder nobody
    # knows of (its hard links keep deleted LevelDB tables on the disk).
    with anyio.CancelScope(shield=True):
        tree: StagedTree = await anyio.to_thread.run_sync(
            capture, profile, work, options.rules, options.capture_attempts
        )
    for note in tree.notes:
        fields = dict(note)
        log.warning(str(fields.pop("event")), **fields)
    try:
        label = (await anyio.to_thread.run_sync(login_state, tree.root)
                 if callable(login_state) else login_state)
        if keep_login and label == "qr" and await _has_login(pool, session_id):
            return _skipped(session_id, tree, label, started)
        result = await _save_tree(pool, session_id, tree, cache, options, kind, label,
                                  progress, started, lease_token, force=force)
    finally:
        with anyio.CancelScope(shield=True):  # a cancelled snapshot still cleans up
            await anyio.to_thread.run_sync(shutil.rmtree, tree.root, True)
    await anyio.to_thread.run_sync(cache.save, cache_path)
    if result.changed:
        # One name per field: bytes_raw, as in --json, the API and the database. raw_bytes is
        # deprecated, kept one release for readers of it (README, Logs).
        log.info("snapshot_committed", kind=kind, raw_bytes=result.bytes_raw,
                 **result.as_json())
        await prune(pool, session_id, options.keep_generations)
    else:
        log.info("snapshot_unchanged", files=result.files, bytes_raw=result.bytes_raw,
                 duration_ms=result.duration_ms)
    return result


async def _has_login(pool: asyncpg.Pool, session_id: str) -> bool:
    async with pool.acquire() as conn:
        return await repo.has_logged_in_generation(conn, session_id)


def _skipped(session_id: str, tree: StagedTree, label: Label, started: float) -> SaveResult:
    return SaveResult(
        session_id=session_id, changed=False, generation=None, files=len(tree.files),
        bytes_raw=sum(f.size for f in tree.files), bytes_uploaded=0, chunks_new=0,
        chunks_reused=0, duration_ms=int((time.monotonic() - started) * 1000),
        capture_attempts=tree.attempts, login_state=label, skipped=QR_OVER_LOGIN)


async def _unchanged_by_stat(
    pool: asyncpg.Pool, session_id: str, profile: Path, options: VaultOptions,
    cache: StatCache, started: float,
) -> SaveResult | None:
    """The result for an unchanged profile, told without staging a copy: every kept file has
    the size, mtime, inode and device the stat cache recorded for the newest generation, and
    the manifest they make is that generation's. None when anything differs (or is unknown):
    then the profile is captured and compared as usual."""
    if cache.generation is None or not cache.entries or not profile.is_dir():
        return None
    files, dirs = await anyio.to_thread.run_sync(scan_live, profile, options.rules)
    entries = []
    for rel, live in files.items():
        known = cache.entries.get(rel)
        if known is None or known[:4] != (live.size, live.mtime_ns, live.ino, live.dev):
            return None
        entries.append(FileEntry(rel, live.mode, live.size, live.mtime_ns, *known[4]))
    manifest = Manifest(files=entries, dirs=dirs, addressing=keyring.active().addressing)
    async with pool.acquire() as conn:
        latest = await repo.latest_generation(conn, session_id)
    if (latest is None or not cache.matches(latest.generation, latest.content_digest)
            or manifest.content_digest() != latest.content_digest):
        return None
    return SaveResult(
        session_id=session_id, changed=False, generation=latest.generation,
        files=len(entries), bytes_raw=manifest.bytes_raw, bytes_uploaded=0, chunks_new=0,
        chunks_reused=len(manifest.digests()),
        duration_ms=int((time.monotonic() - started) * 1000), capture_attempts=0,
        login_state=latest.login_state)


async def _save_tree(
    pool: asyncpg.Pool, session_id: str, tree: StagedTree, cache: StatCache,
    options: VaultOptions, kind: str, login_state: str | None, progress: ProgressSink,
    started: float, lease_token: int | None, *, force: bool = False,
) -> SaveResult:
    def result(changed: bool, manifest: Manifest, generation: int | None,
               uploader: _Uploader | None) -> SaveResult:
        total = len(manifest.digests())
        new = uploader.chunks_new if uploader else 0
        return SaveResult(
            session_id=session_id, changed=changed, generation=generation,
            files=len(manifest.files), bytes_raw=manifest.bytes_raw,
            bytes_uploaded=(uploader.bytes_uploaded if uploader else 0),
            chunks_new=new, chunks_reused=total - new,
            duration_ms=int((time.monotonic() - started) * 1000),
            capture_attempts=tree.attempts,
            login_state=login_state if changed or latest is None else latest.login_state,
        )

    async with pool.acquire() as conn:
        await repo.ensure_session(conn, session_id)
        latest = await repo.latest_generation(conn, session_id)
        if latest is None or not cache.matches(latest.generation, latest.content_digest):
            cache.entries.clear()
        entries: dict[str, FileEntry] = {}
        pending = []
        for f in tree.files:
            chunks = cache.lookup(f)
            if chunks is None:
                pending.append(f)
            else:
                entries[f.path] = FileEntry(f.path, f.mode, f.size, f.live.mtime_ns, *chunks)
        codec = keyring.active().codec(session_id, level=options.zstd_level)
        if not pending:
            manifest = Manifest(files=list(entries.values()), dirs=tree.dirs,
                                addressing=codec.addressing)
            if latest is not None and manifest.content_digest() == latest.content_digest:
                return result(False, manifest, latest.generation, None)
        async with repo.chunk_lock_shared(conn, session_id):
            previous = await _previous(conn, session_id, latest)
            # Bases come from the previous generation, if its chunks are addressed as ours.
            base_from = (previous.manifest if previous is not None
                         and previous.manifest.addressing == codec.addressing else None)
            uploader = _Uploader(conn, session_id,
                                 previous.referenced() if previous else set(), codec, progress,
                                 DeltaBases(base_from))
            progress.start("snapshot", sum(f.size for f in pending))
            async with task_group() as tg:
                tg.start_soon(uploader.store_batches)
                for f in pending:
                    digests, sizes = await uploader.add_file(tree.root / f.path, f.path)
                    entries[f.path] = FileEntry(f.path, f.mode, sum(sizes), f.live.mtime_ns,
                                                digests, sizes)
                await uploader.finish()
            manifest = Manifest(files=list(entries.values()), dirs=tree.dirs,
                                addressing=codec.addressing)
            cache.keep_only({f.path for f in tree.files})  # compaction deletes tables
            for f in tree.files:
                entry = entries[f.path]
                if entry.size == f.live.size:  # else it grew while being staged
                    cache.record(f.path, (f.live.size, f.live.mtime_ns, f.live.ino, f.live.dev),
                                 (entry.chunks, entry.chunk_sizes()), tree.started_ns)
            if latest is not None and manifest.content_digest() == latest.content_digest:
                cache.belongs_to(latest.generation, latest.content_digest)
                return result(False, manifest, latest.generation, uploader)
            generation, uploader.bytes_uploaded = await commit_manifest(
                conn, session_id, manifest, level=options.zstd_level, kind=kind,
                login_state=login_state, chunks_new=uploader.chunks_new,
                bytes_uploaded=uploader.bytes_uploaded, started=started, lease_token=lease_token,
                force=force, bases=uploader.bases,
            )
            cache.belongs_to(generation, manifest.content_digest())
        if uploader.chunks_new >= _ANALYZE_AFTER_CHUNKS:
            await repo.refresh_chunk_stats(conn)
        return result(True, manifest, generation, uploader)
