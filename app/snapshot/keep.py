"""What is kept from a Chromium user-data-dir, and what is dropped.

Measured on a logged-in profile (22 MB in all, 7.6 MB kept): the login lives in IndexedDB (its
`.leveldb` AND its `.blob` folders: without `.blob` stored files vanish silently), Local Storage,
the cookie store, WebStorage, File System, Preferences, Local State, and the service worker's
`Database` with its `ScriptCache` (one without the other makes Chromium discard the
registration). Caches, crash reports, history and lock files are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wcmatch import glob

_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.BRACE
PROFILE = "{Default,Profile *}"

BASE_INCLUDES: tuple[str, ...] = (
    "Local State",
    f"{PROFILE}/Preferences",
    f"{PROFILE}/IndexedDB/**",
    f"{PROFILE}/Local Storage/**",
    f"{PROFILE}/Cookies",
    f"{PROFILE}/Cookies-journal",
    f"{PROFILE}/Cookies-wal",
    f"{PROFILE}/Network/Cookies",
    f"{PROFILE}/Network/Cookies-journal",
    f"{PROFILE}/Network/Cookies-wal",
    f"{PROFILE}/WebStorage/**",
    f"{PROFILE}/File System/**",
    f"{PROFILE}/Service Worker/Database/**",
    f"{PROFILE}/Service Worker/ScriptCache/**",
)
CACHE_STORAGE = f"{PROFILE}/Service Worker/CacheStorage/**"
# Where a site's localStorage lives (a LevelDB folder), alone: enough to read a login key.
LOCAL_STORAGE = f"{PROFILE}/Local Storage/**"

# Directories never worth descending into (caches, crash reports, sessions).
DROPPED_DIRS = frozenset({
    "Cache", "Code Cache", "GPUCache", "DawnWebGPUCache", "DawnGraphiteCache",
    "GraphiteDawnCache", "GrShaderCache", "ShaderCache", "Media Cache", "Crashpad", "Sessions",
})
# Files dropped wherever they appear, even under an include: lock files and LevelDB logs.
DROPPED_FILES = frozenset({"LOCK", "LOG", "LOG.old", "History", "History-journal"})
# Our own folder inside a profile that is a mount point (staging, stat cache, restore).
WORK_DIR_NAME = ".sessionkeeper"
DROPPED_PREFIXES = ("Singleton", "BrowserMetrics", WORK_DIR_NAME)

SW_DATABASE = "Service Worker/Database"
SW_SCRIPTS = "Service Worker/ScriptCache"


@dataclass(frozen=True)
class KeepRules:
    """Decides, by relative POSIX path, what a snapshot keeps."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    keep_cache_storage: bool = False
    # What is kept before the user's globs: the login-bearing stores above.
    base: tuple[str, ...] = BASE_INCLUDES

    def __post_init__(self) -> None:
        includes = [*self.base, *self.include]
        if self.keep_cache_storage:
            includes.append(CACHE_STORAGE)
        object.__setattr__(self, "_inc", glob.compile(includes, flags=_FLAGS))
        excludes = list(self.exclude) or ["\0never"]
        object.__setattr__(self, "_exc", glob.compile(excludes, flags=_FLAGS))

    @classmethod
    def create(
        cls, include: Iterable[str] = (), exclude: Iterable[str] = (),
        keep_cache_storage: bool = False,
    ) -> KeepRules:
        """Rules with extra user globs."""
        return cls(tuple(include), tuple(exclude), keep_cache_storage)

    def prunes_dir(self, rel: str) -> bool:
        """True for a directory whose whole subtree is dropped."""
        name = rel.rsplit("/", 1)[-1]
        return (
            name in DROPPED_DIRS
            or name.startswith(DROPPED_PREFIXES)
            or bool(self._exc.match(rel))  # type: ignore[attr-defined]
        )

    def keeps(self, rel: str) -> bool:
        """True when the file or directory at rel belongs in a snapshot."""
        name = rel.rsplit("/", 1)[-1]
        if name in DROPPED_FILES or name.startswith(DROPPED_PREFIXES):
            return False
        if any(part in DROPPED_DIRS for part in rel.split("/")[:-1]):
            return False
        if self._exc.match(rel):  # type: ignore[attr-defined]
            return False
        return bool(self._inc.match(rel))  # type: ignore[attr-defined]


# Only localStorage: what a peek at the login state copies.
LOCAL_STORAGE_ONLY = KeepRules(base=(LOCAL_STORAGE,))


def is_immutable(rel: str) -> bool:
    """Files Chromium writes once and never changes: LevelDB tables and IndexedDB blobs.

    These are hard-linked into staging; everything else is copied.
    """
    return rel.endswith((".ldb", ".sst")) or is_stored_blob(rel)


def is_stored_blob(rel: str) -> bool:
    """A file IndexedDB stored for a Blob (its `.blob` folder): written once, and holding one
    value (a photo, a voice note), never a rearrangement of other files' bytes."""
    return any(part.endswith(".blob") for part in rel.split("/")[:-1])


def unpaired_service_workers(paths: Iterable[str]) -> set[str]:
    """Profiles whose service worker has a Database without ScriptCache, or the reverse."""
    seen: dict[str, set[str]] = {}
    for rel in paths:
        for part in (SW_DATABASE, SW_SCRIPTS):
            marker = f"/{part}/"
            idx = rel.find(marker)
            if idx > 0:
                seen.setdefault(rel[:idx], set()).add(part)
    return {profile for profile, parts in seen.items() if len(parts) == 1}


def in_service_worker(rel: str, profile: str) -> bool:
    """True for a path inside the profile's service worker Database or ScriptCache."""
    return rel.startswith((f"{profile}/{SW_DATABASE}/", f"{profile}/{SW_SCRIPTS}/")) or rel in (
        f"{profile}/{SW_DATABASE}", f"{profile}/{SW_SCRIPTS}",
    )
