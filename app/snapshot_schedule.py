"""When a session's next periodic snapshot is due.

Sessions started together (several in one process, replicas deployed together) would
otherwise snapshot together for ever: the jitter spreads their phase once, at the first wait,
and keeps it from locking again afterwards.
"""

from __future__ import annotations

import random


def next_wait(interval: float, jitter: float, *, first: bool, rng: random.Random) -> float:
    """Seconds until the next periodic snapshot. Jitter 0: exactly `interval`. Otherwise the
    first wait is uniform in [interval/2, interval] (the boot and the login checkpoint already
    cover the start), each later one uniform in interval * [1 - jitter, 1 + jitter]."""
    if jitter <= 0:
        return interval
    if first:
        return rng.uniform(interval / 2, interval)
    return rng.uniform(interval * (1 - jitter), interval * (1 + jitter))
