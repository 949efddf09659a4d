"""The vault's knobs, taken from Settings once."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.settings import Settings
from app.snapshot.keep import KeepRules

BATCH_CHUNKS = 256  # chunks per database round trip: about 2 MiB raw
BATCH_BYTES = 2 * 1024 * 1024  # and at most about this much (stored blobs come in 64 KiB)


@dataclass(frozen=True)
class VaultOptions:
    """How snapshots are taken and kept."""

    zstd_level: int = 3
    keep_generations: int = 5
    capture_attempts: int = 5
    rules: KeepRules = field(default_factory=KeepRules)

    @classmethod
    def from_settings(cls, settings: Settings) -> VaultOptions:
        """Options as configured by the environment."""
        return cls(
            zstd_level=settings.zstd_level,
            keep_generations=settings.keep_generations,
            capture_attempts=settings.capture_attempts,
            rules=KeepRules.create(settings.include, settings.exclude,
                                   settings.keep_cache_storage),
        )
