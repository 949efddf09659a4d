// The status page's script (app/status_page.py): served as /static/status.js so the
// page's Content-Security-Policy allows no inline script. Requests carry the page's cookie.
(() => {
  const size = (n) => {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? v + " B" : v.toFixed(1) + " " + units[i];
  };
  // The same texts the server renders (see _fields in app/status_page.py).
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
      const response = await fetch("/api/sessions", {cache: "no-store"});
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
        const src = "/qr/" + encodeURIComponent(s.session_id) + "?v=" + s.qr_serial + "-"
          + Date.now();
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
            const r = await fetch("/qr/" + encodeURIComponent(s.session_id) + "?format=code",
                                  {cache: "no-store"});
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
