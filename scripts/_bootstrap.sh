# Sourced by scripts/test and scripts/demo: installs what a fresh machine lacks.
# uv (from PyPI with pip when missing), then the locked dependencies (uv.lock), a Chromium,
# and for scripts/test Debian's tini where apt-get can install it (the signal tests run the
# daemon under it, as the Docker image does; they skip without it).
# Sets venv_bin: the synced environment's bin folder, whose entry points a script execs once
# the environment is synced (no `uv run` process in between to pass signals on twice).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
export PATH="$HOME/.local/bin:$PATH"
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
# Use the system trust store too (mirrors behind a corporate or sandbox CA).
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}"

say() { printf '[bootstrap] %s\n' "$*" >&2; }

pick_python() {
    local candidate
    # 3.11 and 3.12 first: on 3.13 pgserver (the embedded extra) has no wheel and plyvel
    # builds from source (ensure_leveldb_headers).
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 14)))'; then
            # The interpreter itself, not a pyenv shim: `uv sync --python <shim>` does not
            # match the environment's interpreter and recreates .venv at every call (under
            # every process that is running from it).
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    say "need Python 3.11, 3.12 or 3.13 (python3 --version: $(python3 --version 2>&1 || echo none))"
    return 1
}

ensure_uv() {
    if command -v uv >/dev/null 2>&1; then
        return 0
    fi
    local py
    py="$(pick_python)"
    say "installing uv with pip"
    if ! "$py" -m pip --version >/dev/null 2>&1; then
        "$py" -m ensurepip --user >/dev/null 2>&1 || true
    fi
    "$py" -m pip install --quiet --user uv 2>/dev/null ||
        "$py" -m pip install --quiet --user --break-system-packages uv 2>/dev/null ||
        "$py" -m pip install --quiet uv
    hash -r
    command -v uv >/dev/null 2>&1 || { say "uv did not install"; return 1; }
}

# plyvel publishes wheels up to Python 3.12; on 3.13 it compiles against LevelDB's headers.
ensure_leveldb_headers() {
    local py="$1"
    if "$py" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 13))' &&
        [[ ! -e /usr/include/leveldb/db.h ]] && command -v apt-get >/dev/null 2>&1; then
        local log="${TMPDIR:-/tmp}/sessionkeeper-leveldb-install.log"
        say "Python 3.13: installing Debian's libleveldb-dev for plyvel's build (log: $log)"
        { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y libleveldb-dev g++; } >"$log" 2>&1 ||
            say "libleveldb-dev not installed (see $log): plyvel may not build"
    fi
}

ensure_deps() {
    local py
    py="$(pick_python)"
    ensure_leveldb_headers "$py"
    say "syncing locked dependencies (uv sync --frozen --extra embedded)"
    uv sync --frozen --quiet --extra embedded --python "$py"
}

# The Chromium the daemon drives (the same search order as app/chromium.py).
playwright_chromium() {
    # Playwright's own Chromium, if one is installed and starts; prints its path.
    local root="${PLAYWRIGHT_BROWSERS_PATH:-$HOME/.cache/ms-playwright}" candidate
    for candidate in "$root"/chromium-*/chrome-linux*/chrome; do
        if [[ -f "$candidate" && -x "$candidate" ]] && "$candidate" --version >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

system_chromium() {
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        return 1
    fi
}

ensure_chromium() {
    local configured="${SESSIONKEEPER_CHROMIUM_PATH:-}" found
    if [[ -n "$configured" ]]; then
        if [[ -f "$configured" && -x "$configured" ]]; then
            return 0
        fi
        say "SESSIONKEEPER_CHROMIUM_PATH=$configured is not an executable file; looking for a Chromium anyway"
    fi
    if playwright_chromium >/dev/null || system_chromium >/dev/null; then
        return 0
    fi

    local log="${TMPDIR:-/tmp}/sessionkeeper-chromium-install.log"
    say "no Chromium found: trying Playwright's (playwright install chromium, log: $log)"
    local -a limit=()
    if command -v timeout >/dev/null 2>&1; then
        limit=(timeout 120)
    fi
    if ${limit[@]+"${limit[@]}"} uv run --frozen playwright install chromium >"$log" 2>&1 &&
        found="$(playwright_chromium)"; then
        say "Playwright's Chromium installed: $found"
        return 0
    fi
    say "Playwright's Chromium is not usable (its download may be blocked here)"

    if system_chromium >/dev/null; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "cannot install Chromium: no apt-get here; install Chromium or set SESSIONKEEPER_CHROMIUM_PATH"
        exit 1
    fi
    say "installing Debian's chromium (apt-get install chromium, log: $log)"
    if ! as_root apt-get update >>"$log" 2>&1 ||
        ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >>"$log" 2>&1; then
        say "cannot install Chromium with apt-get (needs root or passwordless sudo; see $log); install it or set SESSIONKEEPER_CHROMIUM_PATH"
        exit 1
    fi
    if ! found="$(system_chromium)"; then
        say "apt-get installed chromium but no chromium is on PATH; set SESSIONKEEPER_CHROMIUM_PATH"
        exit 1
    fi
    say "Chromium installed: $found"
}

# Optional: never fails the bootstrap. Tried once per machine (a marker under .sessionkeeper/),
# so a machine where it cannot be installed does not pay for apt-get at every run.
ensure_tini() {
    local marker="$repo_root/.sessionkeeper/tini-install-tried"
    if command -v tini >/dev/null 2>&1 || [[ -e "$marker" ]] || ! command -v apt-get >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$(dirname "$marker")" && : >"$marker"
    local log="${TMPDIR:-/tmp}/sessionkeeper-tini-install.log"
    say "installing Debian's tini for the signal tests (apt-get install tini, log: $log)"
    if as_root apt-get update >"$log" 2>&1 &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y tini >>"$log" 2>&1; then
        say "tini installed: $(command -v tini)"
    else
        say "tini not installed (see $log): the tests that run the daemon under tini skip"
    fi
}

ensure_uv
ensure_deps
ensure_chromium
venv_bin="${UV_PROJECT_ENVIRONMENT:-$repo_root/.venv}/bin"
# Only the test run needs tini (BASH_SOURCE[1] is the script that sourced this file).
if [[ "$(basename "${BASH_SOURCE[1]:-}")" == "test" ]]; then
    ensure_tini
fi
