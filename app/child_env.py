"""The environment of the processes we start, without our secrets.

Chromium runs a web app and its renderers parse whatever the site sends: nothing in its
environment may help whoever gets code running there, so it gets neither the database URL
(with its password), nor any SESSIONKEEPER_* variable (vault keys, HTTP token, webhook URL),
nor libpq's PG* variables. An `exec` child is the user's own bot: it keeps its environment
(its app may use the same DATABASE_URL), but never the vault keys, which only this process
needs and which are what keep a copy of the database unreadable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Secrets of ours that no child process needs.
VAULT_KEYS = ("SESSIONKEEPER_ENCRYPTION_KEY", "SESSIONKEEPER_ENCRYPTION_KEY_OLD")


def _secret_for_browser(name: str) -> bool:
    upper = name.upper()
    return (upper.startswith(("SESSIONKEEPER_", "PG")) or upper == "DATABASE_URL"
            or upper.endswith("_DATABASE_URL"))


def browser_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment minus every database setting and SESSIONKEEPER_* variable."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not _secret_for_browser(k)}


def exec_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment minus the vault keys, for the user's own command."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k.upper() not in VAULT_KEYS}
