# Sourced by scripts/test and scripts/demo: installs what a fresh machine lacks.
# uv (from PyPI with pip when missing), then the locked dependencies (uv.lock).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
export PATH="$HOME/.local/bin:$PATH"
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
# Use the system trust store too (mirrors behind a corporate or sandbox CA).
export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"

say() { printf '[bootstrap] %s\n' "$*" >&2; }

pick_python() {
    local candidate
    for candidate in python3.11 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
            command -v "$candidate"
            return 0
        fi
    done
    say "need Python 3.11 or 3.12 (python3 --version: $(python3 --version 2>&1 || echo none))"
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

ensure_deps() {
    local py
    py="$(pick_python)"
    say "syncing locked dependencies (uv sync --frozen)"
    uv sync --frozen --quiet --python "$py"
}

ensure_uv
ensure_deps
