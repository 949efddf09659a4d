"""The status page: plain server-rendered HTML and a small script that keeps it current.

The script polls /api/sessions every two seconds: it updates each session's state, shows the
QR image while a login is needed (reloading it, with a cache-buster, whenever the code
rotates), or the pairing code (from /qr/{session}?format=code, never in the JSON), and hides
them once the session is ready. A new or vanished session reloads the page.
Every value put into the HTML is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #111; background: #fafafa; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
.meta { color: #555; margin-top: 0; }
.session { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 1rem 1.2rem;
           margin: 1rem 0; max-width: 56rem; }
.session h2 { font-size: 1.1rem; margin: 0 0 .5rem; }
.state { display: inline-block; padding: .1rem .6rem; border-radius: 1rem; font-weight: 600;
         background: #eee; }
.state-ready { background: #d7f5dd; color: #0b5e1c; }
.state-qr_required, .state-logged_out, .state-connecting { background: #fff1c2; color: #6b4e00; }
.state-degraded, .state-conflict, .state-unknown { background: #ffd9d9; color: #8a1010; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { color: #555; }
dd { margin: 0; }
.qr { margin-top: .8rem; }
.qr img { width: 296px; height: 296px; image-rendering: pixelated; border: 1px solid #ccc; }
.code code { font-size: 2rem; letter-spacing: .3rem; padding: .3rem .8rem; background: #eef;
             border-radius: 6px; }
.warn { color: #8a1010; }
"""

_SCRIPT = """
(() => {
  const token = document.body.dataset.token || "";
  const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token="
    + encodeURIComponent(token) : url;
  const size = (n) => {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? v + " B" : v.toFixed(1) + " " + units[i];
  };
  // The same texts the server renders (see FIELDS in status_page.py).
  const FIELDS = {
    holder: (s) => s.lease_holder || "none",
    generation: (s, g) => g ? String(g.generation) : "none",
    taken: (s, g) => g ? g.at + " (" + g.kind + ")" : "-",
    size: (s, g) => g ? size(g.bytes_raw) + " in " + g.files + " files, " + size(g.bytes_stored)
      + " stored" : "-",
    uploaded: (s, g) => g ? size(g.bytes_uploaded) + " in " + g.duration_ms + " ms" : "-",
    kept: (s) => String(s.generations_kept || 0),
  };
  const known = new Set(Array.from(document.querySelectorAll(".session"),
                                   (el) => el.dataset.session));
  async function refresh() {
    let data;
    try {
      const response = await fetch(withToken("/api/sessions"), {cache: "no-store"});
      if (!response.ok) return;
      data = await response.json();
    } catch (e) { return; }
    const ids = new Set(data.sessions.map((s) => s.session_id));
    if (ids.size !== known.size || [...ids].some((id) => !known.has(id))) {
      location.reload();
      return;
    }
    for (const s of data.sessions) {
      const card = document.querySelector('.session[data-session="' + CSS.escape(s.session_id)
                                          + '"]');
      if (!card) continue;
      const state = card.querySelector(".state");
      const shown = s.state || "elsewhere";
      if (state.textContent !== shown) {
        state.textContent = shown;
        state.className = "state state-" + shown;
      }
      for (const el of card.querySelectorAll("[data-field]")) {
        const text = FIELDS[el.dataset.field](s, s.last_snapshot);
        if (el.textContent !== text) el.textContent = text;
      }
      const box = card.querySelector(".qr");
      const img = box.querySelector("img");
      if (s.qr_available) {
        const src = withToken("/qr/" + encodeURIComponent(s.session_id) + "?v=" + s.qr_serial
                              + "-" + Date.now());
        if (img.dataset.serial !== String(s.qr_serial) || box.hidden) {
          img.dataset.serial = String(s.qr_serial);
          img.src = src;
        }
        box.hidden = false;
      } else {
        box.hidden = true;
        img.removeAttribute("src");
      }
      const code = card.querySelector(".code");
      if (s.pairing_code_available) {
        if (code.dataset.serial !== String(s.qr_serial) || code.hidden) {
          try {
            const r = await fetch(withToken("/qr/" + encodeURIComponent(s.session_id)
                                            + "?format=code"), {cache: "no-store"});
            if (r.ok) {
              const text = await r.text();
              code.querySelector("code").textContent = text.length === 8
                ? text.slice(0, 4) + "-" + text.slice(4) : text;
              code.dataset.serial = String(s.qr_serial);
              code.hidden = false;
            }
          } catch (e) { /* next round */ }
        }
      } else {
        code.hidden = true;
        code.querySelector("code").textContent = "";
      }
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
"""


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


def _session(s: dict[str, Any], token: str | None) -> str:
    sid = str(s["session_id"])
    state = str(s["state"] or "elsewhere")
    src = f"/qr/{quote(sid, safe='')}?v={int(s['qr_serial'])}"
    if token:
        src += f"&token={quote(token, safe='')}"
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


def render_page(overview: dict[str, Any], token: str | None) -> str:
    """The whole page for an /api/sessions overview; `token` goes into every URL it uses."""
    sessions = "".join(_session(s, token) for s in overview["sessions"])
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
<style>{_STYLE}</style>
</head>
<body data-token="{escape(token or "")}">
<h1>sessionkeeper</h1>
<p class="meta">process {escape(str(overview["owner"]))}, {escape(mode)}</p>
{error}{sessions}
<script>{_SCRIPT}</script>
</body>
</html>
"""
