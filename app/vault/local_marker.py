"""What the profile on disk is: the generation it was restored from or last saved as, and the
fencing token it was written under. Kept in the profile's work folder (beside the profile, or
in its own `.sessionkeeper` folder when the profile is a mount point: a volume, which keeps it
across restarts), cleared before a restore swaps a tree in, rewritten after each restore and
each committed snapshot.

With it, a profile already on disk (a volume, a restart in place, the same process taking its
lease back after a partition) is kept rather than restored over when it is at least as new as
what the database would restore: newer local data is never thrown away.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from app.private_files import private_dir, write_private_text
from app.snapshot.keep import WORK_DIR_NAME
from app.snapshot.staging import work_dir_for
from app.store.repo import GenerationInfo


@dataclass(frozen=True, slots=True)
class LocalMarker:
    """The generation the local profile holds (and maybe more since), and under which token."""

    session_id: str
    generation: int
    token: int | None
    login_state: str | None

    @staticmethod
    def path_for(profile: Path, session_id: str) -> Path:
        """Where a session's marker lives: the profile's work folder."""
        return work_dir_for(profile) / f"{session_id}.marker.json"

    @classmethod
    def read(cls, profile: Path, session_id: str) -> LocalMarker | None:
        """The marker beside profile, if any and readable (a damaged one counts as none)."""
        try:
            data = json.loads(cls.path_for(profile, session_id).read_text())
            marker = cls(str(data["session_id"]), int(data["generation"]),
                         None if data.get("token") is None else int(data["token"]),
                         data.get("login_state"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return marker if marker.session_id == session_id else None

    def write(self, profile: Path) -> None:
        """Replace the marker atomically (a crash leaves the old one or the new one)."""
        path = self.path_for(profile, self.session_id)
        private_dir(path.parent)
        tmp = path.with_suffix(".tmp")
        write_private_text(tmp, json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def clear(cls, profile: Path, session_id: str) -> None:
        """Forget what the profile holds (it is about to be replaced)."""
        with contextlib.suppress(FileNotFoundError):
            cls.path_for(profile, session_id).unlink()

    def keeps(self, generations: list[GenerationInfo], choice: int | None, token: int) -> bool:
        """True when the local profile is at least as new as what a restore would bring:
        - its generation is `choice`, the one a restore would take (so it holds that, or
          more), or
        - it was written under the token just before ours (nobody held the lease in between)
          and no generation newer than it has been committed."""
        known = {g.generation for g in generations}
        if self.generation not in known:
            return False  # pruned or deleted: the database decides
        if choice == self.generation:
            return True
        newest = max(known)
        return self.token is not None and self.token == token - 1 and self.generation >= newest


def profile_has_files(profile: Path) -> bool:
    """True when the profile folder exists and holds anything but our own work folder."""
    try:
        with os.scandir(profile) as entries:
            return any(e.name != WORK_DIR_NAME for e in entries)
    except OSError:
        return False
