"""Session ids are names, never paths: one pattern, checked wherever an id comes in.

An id names a profile folder (SESSIONKEEPER_PROFILE_DIR/<id> in claim and multi-session mode),
a stat cache and log lines, so `../x`, `/x` or a trailing newline must never get through. The
same pattern is a CHECK constraint on sessions.id (migrations/0009_session_id_check.sql).
"""

from __future__ import annotations

import re

# 1-128 characters: letters, digits, '.', '_' and '-', starting with a letter or digit (so
# never '.', '..' or a leading '-' that reads like an option). Used with fullmatch only: with
# re.match, '$' would also accept a trailing newline.
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
SESSION_ID_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_session_id(value: object) -> bool:
    """True when value is a string that is a valid session id (the whole string)."""
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


def check_session_id(value: object) -> str:
    """value itself when it is a valid session id; ValueError naming it otherwise."""
    if not is_session_id(value):
        raise ValueError(f"invalid session id {value!r}: use {SESSION_ID_RULE}")
    assert isinstance(value, str)
    return value
