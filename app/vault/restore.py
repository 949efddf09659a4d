"""Restore a generation into a fresh directory, check every chunk, then swap it into place.

A half-restored profile is never launched: files are written into a new sibling directory and
only a complete, verified tree replaces the profile, in one rename (a profile folder that is a
mount point cannot be renamed: its contents are swapped, see app/vault/inplace.py). Paths come
from a checked manifest (relative, no '..'), files are created with O_EXCL|O_NOFOLLOW in a
directory only we write to, and no link is ever created. Chromium's Singleton* lock files are
never restored.
When the newest generation is damaged, the previous one is used and the damage is logged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import time
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import asyncpg
from anyio.streams.memory import MemoryObjectSendStream

from app.errors import CorruptSnapshot, NotFound, UserError
from app.log import get_logger
from app.progress import NullProgress, ProgressSink
from app.snapshot.keep import KeepRules
from app.snapshot.manifest import FileEntry, Manifest
from app.snapshot.mounts import is_mount_point
from app.snapshot.safepath import is_singleton
from app.snapshot.sealing import Base, SessionCodec
from app.snapshot.staging import work_dir_for
from app.store import repo
from app.store.copy_binary import CopyFormatError, CopyRows, Row
from app.store.repo import Conn
from app.tasks import task_group
from app.vault import keyring
from app.vault.inplace import RESTORE_PREFIX, finish_interrupted_swap, swap_contents, work_area
from app.vault.local_marker import LocalMarker
from app.vault.manifests import load_manifest
from app.vault.statcache import StatCache

_RENAME_EXCHANGE = 2
# What a restore writes when the caller names no keep rules: anything a snapshot could have
# taken with some SESSIONKEEPER_INCLUDE, never what every rule drops (lock files, caches, crash
# reports, LevelDB LOG/LOCK, our own work folder).
RESTORABLE = KeepRules(base=("**",))
COPY_SLICE = 8192  # chunk references per COPY
_RUN_CHUNKS = 256  # chunks per write at most (a system call takes 1,024 buffers)
_AT_FDCWD = -100


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What one restore did."""

    session_id: str
    generation: int
    files: int
    bytes_raw: int
    duration_ms: int
    skipped: list[dict[str, Any]] = field(default_factory=list)
    # The generation's label: 'ready', 'qr', 'logged_out' or None (unlabelled).
    login_state: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Plain fields for --json output."""
        return asdict(self)


class _TreeWriter:
    """Writes chunks where the manifest places them, in whatever order they come (runs in a
    worker thread). A file is created with its first chunk (O_EXCL|O_NOFOLLOW, in a directory
    only we write to) and closed, its mtime set, with its last byte; at most MAX_OPEN files
    stay open (one set aside is opened again for its next chunk)."""

    MAX_OPEN = 64

    def __init__(self, root: Path, files: list[FileEntry]) -> None:
        self.root = str(root)
        self.files = files
        self.left = [f.size for f in files]
        self.created = bytearray(len(files))
        self.open: OrderedDict[int, int] = OrderedDict()  # file index -> fd, oldest first

    def _fd(self, index: int) -> int:
        fd = self.open.get(index)
        if fd is not None:
            self.open.move_to_end(index)
            return fd
        if len(self.open) >= self.MAX_OPEN:
            os.close(self.open.popitem(last=False)[1])
        path = f"{self.root}/{self.files[index].path}"
        if self.created[index]:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        else:
            # Owner-only whatever the manifest says (an import may claim 0o644): a profile
            # is a logged-in device. The owner's exec bit is kept.
            mode = (self.files[index].mode & 0o700) | 0o600
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            self.created[index] = 1
        self.open[index] = fd
        return fd

    def write(self, index: int, offset: int, parts: list[bytes]) -> None:
        """Write chunks that follow each other in file `index` from `offset`, in one system
        call; the file is closed with its last byte."""
        fd = self._fd(index)
        size = sum(map(len, parts))
        done = os.pwritev(fd, parts, offset)
        if done < size:  # a short write: the rest as one piece
            rest = memoryview(b"".join(parts))
            while done < size:
                done += os.pwrite(fd, rest[done:], offset + done)
        self.left[index] -= size
        if self.left[index] == 0:
            self._close(index)

    def _close(self, index: int) -> None:
        fd = self.open.pop(index)
        mtime = self.files[index].mtime_ns
        try:
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)

    def abort(self) -> None:
        """Close every open file (a failed restore must not leak them)."""
        while self.open:
            os.close(self.open.popitem()[1])

    def finish(self) -> None:
        """Create the empty files; CorruptSnapshot for a file that lacks bytes."""
        for index, entry in enumerate(self.files):
            if self.left[index]:
                raise CorruptSnapshot(f"{entry.path}: {entry.size - self.left[index]} bytes "
                                      f"written, the manifest says {entry.size}")
            if not self.created[index]:
                self._fd(index)
                self._close(index)


class _ChunkPlaces:
    """Every chunk reference of the files to write, in order: its address, size, file and
    offset (flat arrays: a 500 MB profile has about 67,000)."""

    def __init__(self, files: list[FileEntry]) -> None:
        self.digests: list[bytes] = []
        self.sizes = array("i")
        self.file = array("i")
        self.offset = array("q")
        for index, f in enumerate(files):
            offset = 0
            for d, size in zip(f.chunks, f.chunk_sizes(), strict=True):
                self.digests.append(d)
                self.sizes.append(size)
                self.file.append(index)
                self.offset.append(offset)
                offset += size


class _ChunkStream:
    """Decodes the rows of the restore's COPY (position, codec, data) and writes them where
    they belong (the worker thread's side). A fault ends the COPY (asyncpg cancels it and the
    connection stays usable for the next generation to try). Decoding in two threads was
    tried: on two cores, beside PostgreSQL and the event loop, it made the restore slower."""

    def __init__(self, places: _ChunkPlaces, writer: _TreeWriter,
                 decoder: SessionCodec) -> None:
        self.places = places
        self.writer = writer
        self.decoder = decoder
        self.rows = _copy_rows()
        self.start = 0  # the first reference of the slice the current COPY serves
        self.received = bytearray(len(places.digests))
        self.codecs: dict[bytes, str] = {}

    def consume(self, start: int, blocks: list[bytes]) -> int:
        """Decode and write the rows these blocks of the COPY of the slice beginning at
        reference `start` complete; the raw bytes written."""
        try:
            if start != self.start:  # the previous COPY is over
                self.rows.finish()
                self.rows, self.start = _copy_rows(), start
            return sum(self._rows(block) for block in blocks)
        except CopyFormatError as exc:
            raise CorruptSnapshot(f"chunk stream unreadable: {exc}") from None

    def _rows(self, block: bytes) -> int:
        places, received, done = self.places, self.received, 0
        decode, codecs = self.decoder.decode, self.codecs
        end = min(len(received), self.start + COPY_SLICE)
        # Chunks that follow each other in a file (they mostly come in the manifest's order)
        # are written together: a run of them, its file and where it starts.
        run: list[bytes] = []
        run_file = run_at = run_end = -1
        for row in self.rows.feed(block):
            position, codec_name, data, base_digest = cast(_Row, row[:4])
            n = self.start + int.from_bytes(position, "big", signed=True)
            if not self.start <= n < end or received[n]:
                raise CorruptSnapshot(f"chunk stream: unexpected row {n}")
            received[n] = 1
            codec = codecs.get(bytes(codec_name))
            if codec is None:
                codec = codecs[bytes(codec_name)] = str(codec_name, "utf-8")
            raw = decode(codec, data, places.sizes[n], places.digests[n],
                         None if base_digest is None else _base_of(row))
            file, offset = places.file[n], places.offset[n]
            if file != run_file or offset != run_end or len(run) >= _RUN_CHUNKS:
                if run:
                    self.writer.write(run_file, run_at, run)
                run, run_file, run_at, run_end = [], file, offset, offset
            run.append(raw)
            run_end += len(raw)
            done += len(raw)
        if run:
            self.writer.write(run_file, run_at, run)
        return done

    def check(self) -> None:
        """CorruptSnapshot for a stream cut short or a chunk not received."""
        try:
            if self.received:  # else no COPY ran
                self.rows.finish()
        except CopyFormatError as exc:
            raise CorruptSnapshot(f"chunk stream unreadable: {exc}") from None
        missing = self.received.find(0)
        if missing >= 0:
            raise CorruptSnapshot(f"chunk {self.places.digests[missing].hex()[:12]} is missing")


_Row = tuple[memoryview, memoryview, memoryview, memoryview | None]


def _copy_rows() -> CopyRows:
    """The parser of one COPY of repo.copy_chunks: position, codec, data, then the base row's
    digest, size, codec and data (NULL for a chunk stored whole)."""
    return CopyRows(fields=7, nullable_from=3)


def _base_of(row: Row) -> Base | None:
    """The base row a delta's COPY row carries (None for a chunk stored whole)."""
    digest, size, codec, data = row[3:]
    if digest is None or size is None or codec is None or data is None:
        return None
    return bytes(digest), int.from_bytes(size, "big", signed=True), str(codec, "utf-8"), data


class _Handoff:
    """Collects the blocks of the COPYs into batches of about HANDOFF_BYTES for the worker
    thread (one hand-off per block, tens of kilobytes, would cost more than the decoding);
    each batch says which slice of the references its COPY serves."""

    HANDOFF_BYTES = 1024 * 1024

    def __init__(self, send: MemoryObjectSendStream[tuple[int, list[bytes]]]) -> None:
        self.send = send
        self.start = 0
        self.blocks: list[bytes] = []
        self.size = 0

    def at(self, start: int) -> Callable[[bytes], Coroutine[Any, Any, None]]:
        """The sink of the COPY of the slice beginning at reference `start`."""
        async def sink(block: bytes) -> None:
            if start != self.start:
                await self.flush()
                self.start = start
            self.blocks.append(block)
            self.size += len(block)
            if self.size >= self.HANDOFF_BYTES:
                await self.flush()
        return sink

    async def flush(self) -> None:
        """Hand over what is collected."""
        if self.blocks:
            blocks, self.blocks, self.size = self.blocks, [], 0
            await self.send.send((self.start, blocks))


async def materialize(
    conn: Conn, session_id: str, manifest: Manifest, target: Path,
    progress: ProgressSink, rules: KeepRules | None = None,
) -> list[str]:
    """Write every file of the manifest that the keep rules allow under target (which must
    not exist yet); the paths left out. A manifest (an imported one, a planted row) cannot
    put a file where a snapshot would never have taken one from: an extension, a policy, a
    lock file. Without rules, only what no rules keep is left out (RESTORABLE)."""
    rules = rules or RESTORABLE
    files = sorted((f for f in manifest.files
                    if not is_singleton(f.path) and rules.keeps(f.path)), key=lambda f: f.path)
    skipped = sorted({f.path for f in manifest.files} - {f.path for f in files})
    parents = {"/".join(f.path.split("/")[:i]) for f in files
               for i in range(1, f.path.count("/") + 1)}
    # A folder comes back when it holds a kept file or the rules keep it (an empty one).
    kept_dirs = [d for d in manifest.dirs if d.path in parents or rules.keeps(d.path)]
    paths = [*(d.path for d in kept_dirs), *(f.path for f in files)]
    dirs = sorted({d.path for d in kept_dirs} | {
        "/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)
    })

    def make_dirs() -> None:
        # Owner-only folders whatever modes the manifest records (see _TreeWriter).
        target.mkdir(mode=0o700)
        for rel in dirs:
            (target / rel).mkdir(mode=0o700)

    await anyio.to_thread.run_sync(make_dirs)
    writer = _TreeWriter(target, files)
    places = _ChunkPlaces(files)
    stream = _ChunkStream(places, writer, keyring.active().reader(session_id, manifest))
    progress.start("restore", sum(f.size for f in files))
    # One COPY brings every chunk (this task); a worker thread decodes, checks and writes
    # them meanwhile. At most two batches wait in between, so memory stays bounded.
    send, receive = anyio.create_memory_object_stream[tuple[int, list[bytes]]](2)

    async def decode_and_write() -> None:
        async with receive:
            async for start, blocks in receive:
                progress.advance(await anyio.to_thread.run_sync(stream.consume, start, blocks))

    try:
        async with task_group() as tg:
            tg.start_soon(decode_and_write)
            async with send:
                handoff = _Handoff(send)
                # In slices: the query names its chunks (64 hex digits each), so one COPY for
                # a 500 MB profile would hold megabytes of query text.
                for start in range(0, len(places.digests), COPY_SLICE):
                    await repo.copy_chunks(conn, session_id,
                                           places.digests[start : start + COPY_SLICE],
                                           handoff.at(start))
                await handoff.flush()
        stream.check()
        await anyio.to_thread.run_sync(writer.finish)
    finally:
        writer.abort()
    return skipped


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        return False
    rc = func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def swap_into_place(fresh: Path, target: Path) -> None:
    """Replace target with fresh in one rename; the old tree is removed afterwards."""
    if not target.exists() and not target.is_symlink():
        fresh.rename(target)
        return
    if target.is_dir() and not target.is_symlink() and _exchange(fresh, target):
        shutil.rmtree(fresh, ignore_errors=True)  # fresh now holds the old profile
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    fresh.rename(target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def restore_order(generations: list[repo.GenerationInfo]) -> list[int]:
    """Newest first, but a snapshot taken while the page showed a QR code never comes before
    a logged-in (or unlabelled, manual) one: a QR-state profile is no login to go back to.
    A generation marked logged out (the phone unlinked the device) never comes back, nor one
    that came up asking for a QR code although captured logged in (restore_failed_at)."""
    usable = [g for g in generations if g.restore_failed_at is None]
    logged_in = [g.generation for g in usable if g.login_state in (None, "ready")]
    return logged_in + [g.generation for g in usable if g.login_state == "qr"]


def _clear_leftovers(profile: Path) -> bool:
    """Remove half-written trees of a restore or swap that was interrupted; finish a swap of
    a mount point's contents that was past its commit point (True then)."""
    for prefix in (f".{profile.name}.restore-", f".{profile.name}.old-"):
        for path in profile.parent.glob(f"{prefix}*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
    return profile.is_dir() and finish_interrupted_swap(profile)


def _prepare(profile: Path) -> tuple[bool, bool]:
    """Clear what an interrupted restore left; whether the profile is a mount point (restored
    in place, through its work area), and whether an interrupted swap was finished."""
    profile.parent.mkdir(parents=True, exist_ok=True)
    finished = _clear_leftovers(profile)
    in_place = is_mount_point(profile)
    if in_place:
        work_area(profile).mkdir(exist_ok=True)
    return in_place, finished


def _fresh_dir(profile: Path, in_place: bool) -> Path:
    tag = uuid.uuid4().hex[:8]
    if in_place:
        return work_area(profile) / f"{RESTORE_PREFIX}{tag}"
    return profile.parent / f".{profile.name}.restore-{tag}"


def _put_in_place(fresh: Path, profile: Path, in_place: bool) -> str:
    """Swap the restored tree into place; says how: by 'rename', or by swapping 'contents'
    (a mount point; 'contents_after_ebusy' for one is_mount_point did not recognise)."""
    if in_place:
        swap_contents(fresh, profile)
        return "contents"
    try:
        swap_into_place(fresh, profile)
        return "rename"
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
    # Nothing was changed: the exchange and the rename both failed. The tree goes into the
    # mount point's own filesystem (a copy) and its contents are swapped.
    area = work_area(profile)
    area.mkdir(exist_ok=True)
    moved = area / f"{RESTORE_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        shutil.move(fresh, moved)
    except BaseException:
        shutil.rmtree(moved, ignore_errors=True)
        raise
    swap_contents(moved, profile)
    return "contents_after_ebusy"


def _seed_cache(profile: Path, session_id: str, generation: int, manifest: Manifest,
                addressing: str) -> None:
    """Record the restored files' stats so the next snapshot need not re-read them."""
    cache = StatCache(session_id, addressing=addressing)
    cache.belongs_to(generation, manifest.content_digest())
    now = time.time_ns()
    root = str(profile)
    for f in manifest.files:
        try:
            st = os.stat(f"{root}/{f.path}")  # noqa: PTH116  (a str path: 1000s of files)
        except FileNotFoundError:
            continue
        cache.record(f.path, (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev),
                     (f.chunks, f.chunk_sizes()), now)
    cache.save(StatCache.path_for(work_dir_for(profile), session_id))


@keyring.with_keyring
async def restore_profile(
    pool: asyncpg.Pool, session_id: str, profile: Path, *, generation: int | None = None,
    progress: ProgressSink | None = None, rules: KeepRules | None = None,
) -> RestoreResult:
    """Restore the newest good generation (or the named one) into profile, writing only the
    paths the keep rules allow (RESTORABLE without rules)."""
    log = get_logger(session_id=session_id)
    progress = progress or NullProgress()
    started = time.monotonic()
    profile = profile.absolute()
    if not profile.name or profile == profile.parent:
        raise UserError(f"cannot restore into {profile}: name a profile directory")
    if profile.exists() and not profile.is_dir():
        raise UserError(f"cannot restore into {profile}: it exists and is not a directory")
    try:
        in_place, finished = await anyio.to_thread.run_sync(_prepare, profile)
    except OSError as exc:
        raise UserError(f"cannot prepare {profile} for a restore: "
                        f"{exc.strerror or exc}") from None
    if finished:
        log.warning("restore_swap_finished", profile=str(profile),
                    note="an interrupted restore into this mount point was completed")
    skipped: list[dict[str, Any]] = []
    async with pool.acquire() as conn, repo.chunk_lock_shared(conn, session_id):
        if not await repo.session_exists(conn, session_id):
            raise NotFound(f"no session {session_id!r} in the database")
        generations = await repo.list_generations(conn, session_id)
        labels = {g.generation: g.login_state for g in generations}
        if generation is not None:
            candidates = [generation]
        else:
            candidates = restore_order(generations)
            if not candidates and generations:
                raise NotFound(f"session {session_id!r} has no generation to restore: every "
                               "one is logged out (the phone unlinked the device)")
            if not candidates:
                raise NotFound(f"session {session_id!r} has no snapshot yet")
        for gen in candidates:
            fresh = _fresh_dir(profile, in_place)
            try:
                manifest = (await load_manifest(conn, session_id, gen)).manifest
                left_out = await materialize(conn, session_id, manifest, fresh, progress,
                                             rules)
            except OSError as exc:
                # A local fault (a full disk, too many open files) says nothing about the
                # generation: falling back would restore an older one over newer data.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(shutil.rmtree, fresh, True)
                raise UserError(f"cannot write the profile beside {profile}: "
                                f"{exc.strerror or exc}; nothing was replaced") from None
            except NotFound as exc:
                if generation is not None:
                    raise
                # Pruned since the list was read: not corrupt, not a new session; the next.
                await anyio.to_thread.run_sync(shutil.rmtree, fresh, True)
                log.info("restore_generation_gone", generation=gen, reason=str(exc))
                skipped.append({"generation": gen, "reason": str(exc)})
                continue
            except CorruptSnapshot as exc:
                await anyio.to_thread.run_sync(shutil.rmtree, fresh, True)
                log.error("restore_generation_corrupt", generation=gen, reason=str(exc))
                skipped.append({"generation": gen, "reason": str(exc)})
                if generation is not None:
                    raise CorruptSnapshot(f"generation {gen} cannot be restored: {exc}") from None
                continue
            if left_out:
                log.warning("restore_paths_skipped", generation=gen, count=len(left_out),
                            paths=left_out[:10],
                            reason="outside the keep rules: never written")
            # Whatever the marker said of the profile on disk holds no more.
            LocalMarker.clear(profile, session_id)
            try:
                how = await anyio.to_thread.run_sync(_put_in_place, fresh, profile, in_place)
            except OSError as exc:
                # Local, like a full disk: no reason to try an older generation. A swap of a
                # mount point's contents past its commit point is finished at the next restore.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(shutil.rmtree, fresh, True)
                raise UserError(f"cannot put the restored profile in place at {profile}: "
                                f"{exc.strerror or exc}") from None
            await anyio.to_thread.run_sync(_seed_cache, profile, session_id, gen, manifest,
                                           keyring.active().tag(manifest.addressing))
            result = RestoreResult(session_id, gen, len(manifest.files), manifest.bytes_raw,
                                   int((time.monotonic() - started) * 1000), skipped,
                                   labels.get(gen))
            # `bytes` is deprecated for bytes_raw, kept one release (README, Logs).
            log.info("restore_completed", generation=gen, files=result.files,
                     bytes_raw=result.bytes_raw, bytes=result.bytes_raw,
                     duration_ms=result.duration_ms, swapped=how,
                     skipped=[s["generation"] for s in skipped])
            return result
    raise CorruptSnapshot(
        f"no generation of session {session_id!r} could be restored "
        f"(tried {', '.join(str(g) for g in candidates)})"
    )
