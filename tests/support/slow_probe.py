"""Two tests for tests/test_slow_marker.py, run in a pytest of their own (the file name keeps
them out of the suite): one marked slow, one not."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_marked_slow() -> None:
    pass


def test_not_marked() -> None:
    pass
