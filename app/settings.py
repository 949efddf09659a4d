"""Every knob is an environment variable, validated once at start.

`DATABASE_URL` and `PORT` are unprefixed because Railway and Render inject them; everything else
is `SESSIONKEEPER_*`. `describe_settings()` feeds the README table and the error messages.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    IPvAnyAddress,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.errors import ConfigError
from app.session_ids import SESSION_ID_PATTERN, is_session_id

ENV_PREFIX = "SESSIONKEEPER_"

# What each setting accepts, in words; used for the one-line error and the README table.
ACCEPTS: dict[str, str] = {
    "database_url": "a postgres:// or postgresql:// URL",
    "port": "an integer from 1 to 65535",
    "session_ids": "comma-separated session ids (each like SESSIONKEEPER_SESSION_ID), no "
    "duplicates",
    "session_id": "1-128 characters of letters, digits, '.', '_' or '-', starting alphanumeric",
    "profile_dir": "a directory path",
    "keep_generations": "an integer >= 1",
    "log_format": "'json' or 'console'",
    "log_level": "'debug', 'info', 'warning' or 'error'",
    "zstd_level": "an integer from 1 to 19",
    "keep_cache_storage": "true or false",
    "include": "comma-separated glob patterns relative to the profile directory",
    "exclude": "comma-separated glob patterns relative to the profile directory",
    "capture_attempts": "an integer from 1 to 20",
    "data_dir": "a directory path",
    "db_connect_timeout": "a number of seconds > 0",
    "db_command_timeout": "a number of seconds > 0",
    "db_schema": "a lower-case identifier: a-z, 0-9 and _, 1-63 characters, not starting with "
    "a digit",
    "migrate": "true or false",
    "target": "'whatsapp', 'demo' or 'custom'",
    "target_url": "an http:// or https:// URL",
    "qr_selector": "a CSS selector",
    "ready_selector": "a CSS selector",
    "logged_out_selector": "a CSS selector",
    "qr_attribute": "an attribute name",
    "chromium_path": "the path of a Chromium executable",
    "snapshot_interval": "a number of seconds >= 30",
    "snapshot_jitter": "a fraction from 0.0 to 0.5",
    "shutdown_timeout": "a number of seconds > 0",
    "demo_port": "an integer from 1 to 65535",
    "lease_ttl": "a number of seconds from 2 to 3600",
    "max_sessions": "an integer from 1 to 1000",
    "demo_message_rate": "a number of messages per minute >= 0",
    "demo_link_after": "a number of seconds >= 0",
    "demo_history_mb": "a number of MB from 0 to 4096",
    "http_token": "a string of at least 16 characters",
    "log_qr": "true or false",
    "webhook_url": "an http:// or https:// URL",
    "webhook_timeout": "a number of seconds from 0.1 to 60",
    "login_key": "a localStorage item name (1-256 characters)",
    "cdp": "true or false",
    "cdp_bind": "an IP address: 0.0.0.0 (any) or a local one such as 127.0.0.1",
    "connecting_degraded_after": "a number of seconds > 0",
    "connecting_reload_after": "a number of seconds > 0",
    "unknown_after": "a number of seconds > 0",
    "login_settle": "a number of seconds >= 0",
    "restore_fallbacks": "an integer from 0 to 20",
    "pairing_phone": "a phone number in international form: + and 7 to 15 digits",
}


def _split_globs(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Validated configuration of one sessionkeeper process."""

    # An empty variable (easy to leave in a platform's dashboard) counts as unset.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False,
                                      extra="ignore", env_ignore_empty=True)

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL"),
        description="PostgreSQL URL. Unset: an embedded PostgreSQL in the data directory, for "
        "local use only (the `embedded` extra; refused on Railway, on Render and in the image).",
    )
    port: int = Field(
        default=8080, ge=1, le=65535, validation_alias=AliasChoices("PORT"),
        description="HTTP port (health, status).",
    )
    session_id: str = Field(
        default="default", pattern=SESSION_ID_PATTERN,
        description="The session this process keeps.",
    )
    session_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Several sessions in one process (comma-separated): one Chromium, lease "
        "and snapshot loop each, profiles in SESSIONKEEPER_PROFILE_DIR/<id>.",
    )
    profile_dir: Path = Field(
        default=Path(".sessionkeeper/profile"),
        description="Chromium user-data-dir that is restored into and snapshotted.",
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="Vault key (32 bytes, base64; `sessionkeeper keygen` prints one): every "
        "chunk, list object, manifest and export is sealed with AES-256-GCM and addressed by "
        "HMAC. Unset: stored in plaintext (`encryption_disabled` at start).",
    )
    encryption_key_old: SecretStr | None = Field(
        default=None,
        description="The previous vault key during a rotation: rows still sealed with it are "
        "read, new ones are sealed with SESSIONKEEPER_ENCRYPTION_KEY (`sessionkeeper rekey` "
        "re-seals the rest).",
    )
    keep_generations: int = Field(default=5, ge=1, description="Generations kept per session.")
    log_format: Literal["json", "console"] | None = Field(
        default=None, description="Log format; default json unless stdout is a TTY.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged.",
    )
    zstd_level: int = Field(default=3, ge=1, le=19, description="zstd level for chunks.")
    keep_cache_storage: bool = Field(
        default=False, description="Also keep the service worker's CacheStorage.",
    )
    include: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra globs to keep (e.g. `Default/Extension State/**`).",
    )
    exclude: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra globs to drop; win over every include.",
    )
    capture_attempts: int = Field(
        default=5, ge=1, le=20,
        description="Staged copies tried before a live capture is given up as inconsistent.",
    )
    data_dir: Path = Field(
        default=Path(".sessionkeeper"),
        description="Local state (the embedded PostgreSQL lives in its `pgdata`).",
    )
    db_connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for the database at connect.",
    )
    db_command_timeout: float = Field(
        default=120.0, gt=0,
        description="Longest a single query may take (client timeout and the server's "
        "statement_timeout): a half-open connection never blocks for longer.",
    )
    db_schema: str = Field(
        default="sessionkeeper", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema that holds every table (made by the migrations; a store "
        "found in `public` is moved there). Each connection's search_path is this schema alone.",
    )
    migrate: bool = Field(
        default=True,
        description="Apply pending migrations at start (needs the owner role). false: "
        "`sessionkeeper migrate` does it, and a store behind the code stops the process with "
        "one line. Read-only commands never migrate.",
    )

    target: Literal["whatsapp", "demo", "custom"] = Field(
        default="whatsapp", description="What the browser keeps logged in.",
    )
    target_url: str | None = Field(
        default=None, pattern=r"^https?://", description="Page to open (custom target).",
    )
    qr_selector: str | None = Field(
        default=None, description="CSS selector of the QR code (custom target).",
    )
    ready_selector: str | None = Field(
        default=None, description="CSS selector present once logged in (custom target).",
    )
    logged_out_selector: str | None = Field(
        default=None, description="CSS selector of a logged-out page (custom, optional).",
    )
    qr_attribute: str = Field(
        default="data-ref",
        description="Attribute of the QR element (or an ancestor) holding its payload; "
        "else its text.",
    )
    chromium_path: Path | None = Field(
        default=None, description="Chromium to launch; else Playwright's, else a system one.",
    )
    snapshot_interval: float = Field(
        default=300.0, ge=30, description="Seconds between periodic snapshots.",
    )
    snapshot_jitter: float = Field(
        default=0.1, ge=0, le=0.5,
        description="Spread of the periodic snapshots, as a fraction of the interval: the "
        "first wait after a start is drawn from half an interval to a whole one, each later "
        "one within this fraction of the interval either side, so sessions started together "
        "do not snapshot together. 0: exactly every interval.",
    )
    shutdown_timeout: float = Field(
        default=25.0, gt=0,
        description="Seconds for close + final snapshot after SIGTERM (Render kills at 30).",
    )
    max_sessions: int | None = Field(
        default=None, ge=1, le=1000,
        description="Claim mode: run up to this many of the sessions registered with "
        "`sessionkeeper sessions add`, claimed from the database.",
    )
    lease_ttl: float = Field(
        default=30.0, ge=2, le=3600,
        description="Seconds a session's lease lasts unless renewed (every third of it).",
    )
    demo_port: int = Field(
        default=8765, ge=1, le=65535, description="Loopback port of the bundled demo site.",
    )
    demo_message_rate: float = Field(
        default=30.0, ge=0, description="Messages per minute the demo site writes once linked.",
    )
    demo_history_mb: float = Field(
        default=0.0, ge=0, le=4096,
        description="Demo only: chat history (MB) the page stores right after a link.",
    )
    demo_link_after: float | None = Field(
        default=None, ge=0,
        description="Demo only: approve the first QR code after this many seconds, as a "
        "phone would (unset: run `sessionkeeper demo link`).",
    )

    http_token: SecretStr | None = Field(
        default=None, min_length=16,
        description="Token the status page, /api/sessions, /qr and /metrics ask for (bearer "
        "header or ?token=); unset: open to anyone who reaches PORT.",
    )
    # Unset means "is stdout a terminal?": resolved when the settings are read, so the field
    # is a plain bool afterwards.
    log_qr: bool = Field(
        default=None, validate_default=True,
        description="Log each new QR code (and pairing code): terminal art on a TTY, the "
        "payload in a JSON field otherwise; default true only when stdout is a terminal (a "
        "QR code links whoever scans it into this browser).",
    )
    webhook_url: SecretStr | None = Field(
        default=None,
        description="URL that receives a JSON POST on every state change and failed snapshot.",
    )
    webhook_timeout: float = Field(
        default=5.0, ge=0.1, le=60, description="Seconds one webhook POST may take.",
    )
    login_key: str | None = Field(
        default=None, min_length=1, max_length=256,
        description="localStorage item on the target's origin whose presence means logged in, "
        "read from each staged copy by `exec` and `import` (whatsapp: `last-wid-md`, demo: "
        "its own; custom: none unless set, on the origin of SESSIONKEEPER_TARGET_URL).",
    )
    cdp: bool = Field(
        default=False,
        description="Let automation clients attach to each session's Chromium through "
        "`/cdp/{session}` on PORT (needs SESSIONKEEPER_HTTP_TOKEN unless "
        "SESSIONKEEPER_CDP_BIND=127.0.0.1).",
    )
    connecting_degraded_after: float = Field(
        default=60.0, gt=0,
        description="Seconds the target may stay connecting (loading, syncing, phone or network "
        "unreachable) before the session shows as degraded.",
    )
    connecting_reload_after: float = Field(
        default=300.0, gt=0,
        description="Seconds connecting before the daemon reloads its own page (never a "
        "client's), again after each such period.",
    )
    unknown_after: float = Field(
        default=60.0, gt=0,
        description="Seconds a page may match no known screen before the session is "
        "`unknown` (never ready).",
    )
    login_settle: float = Field(
        default=10.0, ge=0,
        description="Seconds a fresh login read from the DOM (no site state to say it has "
        "synced) stays ready before its checkpoint.",
    )
    restore_fallbacks: int = Field(
        default=3, ge=0, le=20,
        description="A restored logged-in generation that comes up asking for a QR code is "
        "marked and the previous logged-in one restored instead, this many times at most "
        "per boot, before the session is declared logged out.",
    )
    pairing_phone: str | None = Field(
        default=None, pattern=r"^\+?[0-9]{7,15}$",
        description="Log in with a pairing code for this phone number (+ and digits) instead "
        "of scanning a QR code: the code is logged (`pairing_code`), shown on the status page "
        "and at /qr/{session}?format=code.",
    )
    cdp_bind: IPvAnyAddress | None = Field(
        default=None,
        description="The local address `/cdp` answers on: unset or 0.0.0.0, any address PORT "
        "is reached at; 127.0.0.1, only connections made to loopback (no token needed).",
    )

    @field_validator("target", mode="before")
    @classmethod
    def _target_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("session_ids", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _split_globs(value)

    @field_validator("session_id", mode="after")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        # Also checked by the pattern above; fullmatch makes sure no engine lets a trailing
        # newline through.
        if not is_session_id(value):
            raise ValueError(f"bad session id {value!r}")
        return value

    @field_validator("session_ids", mode="after")
    @classmethod
    def _valid_ids(cls, value: list[str]) -> list[str]:
        for sid in value:
            if not is_session_id(sid):
                raise ValueError(f"bad session id {sid!r}")
        if len(set(value)) != len(value):
            raise ValueError("duplicate session id")
        return value

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _globs(cls, value: Any) -> Any:
        return _split_globs(value)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower() or None
        return value

    @field_validator("log_qr", mode="before")
    @classmethod
    def _log_qr(cls, value: Any) -> Any:
        return sys.stdout.isatty() if value is None else value

    @field_validator("webhook_url", mode="after")
    @classmethod
    def _webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value.get_secret_value()):
            raise ValueError("not an http(s) URL")
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("postgres://", "postgresql://")):
            raise ValueError("not a postgres URL")
        return value

    def resolved_log_format(self) -> Literal["json", "console"]:
        """The configured format, else console on a TTY and json otherwise."""
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stdout.isatty() else "json"

    @property
    def embedded_pg_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its cluster."""
        return self.data_dir / "pgdata"


def env_name(field: str) -> str:
    """The environment variable that sets a field."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    return ENV_PREFIX + field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; an invalid value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        if field not in Settings.model_fields:
            # The error is reported under the alias for unprefixed variables.
            field = next(
                (name for name in Settings.model_fields if env_name(name) == field.upper()),
                field,
            )
        name = env_name(field) if field in Settings.model_fields else field
        raw = os.environ.get(name, overrides.get(field))
        accepts = ACCEPTS.get(field, err["msg"])
        secret = field in ("database_url", "http_token", "webhook_url", "encryption_key",
                          "encryption_key_old")
        shown = "" if secret else f"={raw!r}"
        raise ConfigError(f"invalid {name}{shown}: accepts {accepts}") from None


def describe_settings() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for the README."""
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or "(none)"
        elif default is None:
            default = "(unset)"
        rows.append((env_name(name), str(default), info.description or ""))
    return rows
