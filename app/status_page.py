"""The status page: plain server-rendered HTML and a small script that keeps it current.

The script (app/static/status.js) and the style (app/static/status.css) are served files, so
the page's Content-Security-Policy needs no inline code. The script polls /api/sessions every
two seconds: it updates each session's state, shows the QR image while a login is needed
(reloading it, with a cache-buster, whenever the code rotates), or the pairing code (from
/qr/{session}?format=code, never in the JSON), and hides them once the session is ready. A new
or vanished session reloads the page.
Every value put into the HTML is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value, unit = float(n), 0
    units = ("B", "KiB", "MiB", "GiB")
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def _fields(s: dict[str, Any]) -> dict[str, str]:
    """The texts of a session's rows; the script computes the same ones from /api/sessions."""
    g = s["last_snapshot"]
    return {
        "holder": str(s["lease_holder"] or "none"),
        "generation": str(g["generation"]) if g else "none",
        "taken": f"{g['at']} ({g['kind']})" if g else "-",
        "size": (f"{_size(g['bytes_raw'])} in {g['files']} files, {_size(g['bytes_stored'])} "
                 f"stored") if g else "-",
        "uploaded": f"{_size(g['bytes_uploaded'])} in {g['duration_ms']} ms" if g else "-",
        "kept": str(s["generations_kept"] or 0),
    }


_ROWS = (("lease holder", "holder"), ("last generation", "generation"), ("taken", "taken"),
         ("size", "size"), ("uploaded", "uploaded"), ("generations kept", "kept"))


def _session(s: dict[str, Any]) -> str:
    sid = str(s["session_id"])
    state = str(s["state"] or "elsewhere")
    src = f"/qr/{quote(sid, safe='')}?v={int(s['qr_serial'])}"
    img = f' src="{escape(src)}"' if s["qr_available"] else ""
    where = "this process" if s["run_here"] else "another replica (or none)"
    texts = _fields(s)
    rows = "".join(f'\n    <dt>{escape(label)}</dt><dd data-field="{name}">'
                   f"{escape(texts[name])}</dd>" for label, name in _ROWS)
    return f"""
<section class="session" data-session="{escape(sid)}">
  <h2>{escape(sid)} <span class="state state-{escape(state)}">{escape(state)}</span></h2>
  <dl>
    <dt>run by</dt><dd>{escape(where)}</dd>{rows}
  </dl>
  <div class="qr"{"" if s["qr_available"] else " hidden"}>
    <p>Scan this code with the phone (WhatsApp: Settings, Linked devices, Link a device).</p>
    <img alt="QR code to log in session {escape(sid)}" data-serial="{int(s["qr_serial"])}"{img}>
  </div>
  <div class="code" hidden>
    <p>Enter this code on the phone (WhatsApp: Linked devices, Link a device, Link with phone
    number instead).</p>
    <code></code>
  </div>
</section>"""


def render_page(overview: dict[str, Any]) -> str:
    """The whole page for an /api/sessions overview. It carries no token: its requests are
    authenticated by the cookie (app/http.py)."""
    sessions = "".join(_session(s) for s in overview["sessions"])
    if not sessions:
        sessions = "<p>No sessions yet.</p>"
    error = ""
    if overview.get("database_error"):
        error = (f'<p class="warn">database unavailable: '
                 f'{escape(str(overview["database_error"]))}</p>')
    mode = "claim mode" if overview.get("claim_mode") else "fixed sessions"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>sessionkeeper</title>
<link rel="stylesheet" href="/static/status.css">
</head>
<body>
<h1>sessionkeeper</h1>
<p class="meta">process {escape(str(overview["owner"]))}, {escape(mode)}</p>
{error}{sessions}
<script src="/static/status.js"></script>
</body>
</html>
"""
