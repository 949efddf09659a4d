"""Settings from the environment and the shape of log lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.errors import ConfigError
from app.log import configure_logging, get_logger, register_secret
from app.settings import describe_settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, _, _ in describe_settings():
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.session_id == "default" and s.keep_generations == 5 and s.port == 8080
    assert s.database_url is None and s.zstd_level == 3 and not s.keep_cache_storage


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@h/d")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("SESSIONKEEPER_SESSION_ID", "wa-1")
    monkeypatch.setenv("SESSIONKEEPER_KEEP_GENERATIONS", "2")
    monkeypatch.setenv("SESSIONKEEPER_LOG_FORMAT", "CONSOLE")
    monkeypatch.setenv("SESSIONKEEPER_INCLUDE", "a/**, b/c")
    monkeypatch.setenv("SESSIONKEEPER_KEEP_CACHE_STORAGE", "true")
    s = load_settings()
    assert s.database_url is not None and s.database_url.get_secret_value().endswith("/d")
    assert (s.port, s.session_id, s.keep_generations) == (9000, "wa-1", 2)
    assert s.resolved_log_format() == "console"
    assert s.include == ["a/**", "b/c"] and s.keep_cache_storage


@pytest.mark.parametrize("var,value,accepts", [
    ("SESSIONKEEPER_KEEP_GENERATIONS", "-1", "integer >= 1"),
    ("SESSIONKEEPER_LOG_LEVEL", "verbose", "'debug', 'info'"),
    ("PORT", "0", "1 to 65535"),
    ("SESSIONKEEPER_CAPTURE_ATTEMPTS", "100", "1 to 20"),
    ("SESSIONKEEPER_SNAPSHOT_JITTER", "0.6", "fraction from 0.0 to 0.5"),
    ("SESSIONKEEPER_SNAPSHOT_JITTER", "-0.1", "fraction from 0.0 to 0.5"),
    ("SESSIONKEEPER_SNAPSHOT_JITTER", "ten percent", "fraction from 0.0 to 0.5"),
])
def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str,
                                          value: str, accepts: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert var in str(err.value) and accepts in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("value,expected", [(None, 0.1), ("0", 0.0), ("0.5", 0.5),
                                            (" 0.25 ", 0.25)])
def test_snapshot_jitter_is_read(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                 expected: float) -> None:
    if value is None:
        monkeypatch.delenv("SESSIONKEEPER_SNAPSHOT_JITTER", raising=False)
    else:
        monkeypatch.setenv("SESSIONKEEPER_SNAPSHOT_JITTER", value)
    assert load_settings().snapshot_jitter == expected


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for var, default, _ in describe_settings():
        assert f"| `{var}` | `{default}` |" in readme, var


def test_env_example_documents_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    for var, _, _ in describe_settings():
        assert f"{var}=" in example, var


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONKEEPER_TARGET_URL", "")
    monkeypatch.setenv("SESSIONKEEPER_CHROMIUM_PATH", "")
    s = load_settings()
    assert s.target_url is None and s.chromium_path is None


def test_log_lines_are_json_events_without_secrets() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    register_secret("pa55word-xyz")
    log = get_logger(session_id="s1")
    log.info("snapshot_committed", generation=3, bytes=10, duration_ms=5)
    log.info("db_error", detail="connect to postgresql://me:pa55word-xyz@db:5432/x failed")
    log.info("db_error", detail="password pa55word-xyz rejected", api_key="k-123")
    log.debug("hidden_at_info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    events = [json.loads(line) for line in lines]
    assert events[0]["event"] == "snapshot_committed"
    assert events[0]["session_id"] == "s1" and events[0]["generation"] == 3
    assert "pa55word-xyz" not in out.getvalue() and "k-123" not in out.getvalue()
    assert "me:***@db" in events[1]["detail"]
