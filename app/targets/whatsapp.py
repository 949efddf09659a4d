"""Everything sessionkeeper knows about WhatsApp Web, in one place, with where it was checked.

WhatsApp's own connection state is read first: `window.require('WAWebSocketModel').Socket`
(`state`, `hasSynced`), the way whatsapp-web.js, wppconnect/wa-js, open-wa and WAHA read it.
When that module is missing or changed, the page is read through DOM selectors instead, and
`target_probe_changed` is logged once. The bundled demo site exposes the same module and DOM,
so one code path reads both.

Sources, each checked 2026-11-29:
- whatsapp-web.js (pedroslopez/whatsapp-web.js @ 03498ea, 2026-03-14): src/util/Constants.js
  `WAState` (the state names); src/Client.js (`WAWebSocketModel`.Socket state/hasSynced and
  their change events, `WAWebCmd`.Cmd.refreshQR() on UNPAIRED_IDLE, Cmd `logout` /
  `logout_from_bridge` events, `post_logout=1` in the URL after a logout, Socket.takeover()
  for CONFLICT, `WAWebAltDeviceLinkingApi` for pairing codes, re-requested every 180 s,
  `--user-agent` on the command line).
- wppconnect (wppconnect-team/wppconnect @ 05a7769, 2026-08-20):
  src/api/helpers/scrape-img-qr.ts (the QR `canvas` inside `[data-ref]`, whose `data-ref`
  is the payload; an expired code's reload `button` inside `[data-ref]`, clicked to refresh);
  src/api/model/enum/socket-state.ts (what each state means).
- open-wa (open-wa/wa-automate-nodejs, src/controllers/auth.ts and Transport): the QR
  canvas' `aria-label='Scan me!'`, older builds.
- Public notes on the 2025-2026 DOM: `canvas[aria-label='Scan this QR code to link a
  device!']`, `#pane-side`, `div[aria-label='Chat list']`, and the "Use here" button of the
  "WhatsApp is open in another window" dialog (English labels: the browser runs with en-US).
"""

from __future__ import annotations

URL = "https://web.whatsapp.com/"

# --- WhatsApp's connection states (whatsapp-web.js src/util/Constants.js, WAState) ---------
CONNECTED = "CONNECTED"
# Loading, connecting to the phone after a scan, or the phone / network unreachable.
CONNECTING = frozenset({"OPENING", "PAIRING", "TIMEOUT", "UNLAUNCHED"})
UNPAIRED = "UNPAIRED"
# The QR code expired: WhatsApp stops rotating it until someone asks for a new one.
UNPAIRED_IDLE = "UNPAIRED_IDLE"
CONFLICT = "CONFLICT"
# Screens no login gets past: a browser too old, a ban, a blocking proxy.
BLOCKED = frozenset({"DEPRECATED_VERSION", "TOS_BLOCK", "SMB_TOS_BLOCK", "PROXYBLOCK"})

# --- DOM fallbacks ----------------------------------------------------------------------
# The QR canvas sits in a div whose data-ref is the payload (wppconnect scrape-img-qr.ts); the
# bare `div[data-ref]` also matches while the canvas is being drawn.
QR_SELECTOR = (
    "div[data-ref] canvas, canvas[aria-label='Scan this QR code to link a device!'], "
    "canvas[aria-label*='QR code' i], canvas[aria-label='Scan me!'], div[data-ref]"
)
# The chat list pane of a logged-in session.
READY_SELECTOR = (
    "#pane-side, div[aria-label='Chat list'], div[aria-label='Chats'] [role='grid'], "
    "[data-testid='chat-list']"
)
# The reload control of an expired QR code (wppconnect clicks `[data-ref] button`).
QR_RELOAD_SELECTOR = "div[data-ref] button, div[data-ref] [role='button']"
# "WhatsApp is open in another window. Click 'Use here' to use WhatsApp in this window."
CONFLICT_BUTTON_TEXT = "Use here"
# WhatsApp has no stable logged-out element: after a logout (the phone unlinked this device)
# it reloads with ?post_logout=1 and shows the QR page again (whatsapp-web.js Client.js).
LOGGED_OUT_URL = "post_logout=1"
# Where WhatsApp shows a pairing code (8 characters), when it does.
PAIRING_CODE_SELECTOR = "[data-link-code]"

# How often whatsapp-web.js asks for a new pairing code (WhatsApp's codes last about 3 min).
PAIRING_REFRESH_S = 180.0

# --- In the page ---------------------------------------------------------------------------
# One read per observation: WhatsApp's socket state (or why it could not be read), the DOM's
# answer, the URL and title, and whether a logout happened (a Cmd `logout` event: WhatsApp
# reloads right after it, so a listener notes it in sessionStorage, which survives the
# reload of the same tab).
PROBE_JS = """
([qrSel, readySel, outSel, attr, outUrl, reloadSel, conflictText, codeSel, useApp]) => {
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const find = (sel) => {
    if (!sel) return null;
    try {
      for (const el of document.querySelectorAll(sel)) if (visible(el)) return el;
    } catch (e) { return null; }
    return null;
  };
  const out = {url: location.href, title: document.title, dom: "unknown", payload: null,
               code: null, idle: false, app: null, logout: false};
  const q = find(qrSel);
  if (find(readySel)) out.dom = "ready";
  else if (q) {
    let el = q;
    while (el && el.nodeType === 1) {
      if (attr && el.hasAttribute(attr)) { out.payload = el.getAttribute(attr); break; }
      el = el.parentElement;
    }
    if (out.payload === null) out.payload = (q.textContent || "").trim() || null;
    out.dom = "qr";
  } else if (find(outSel)) out.dom = "logged_out";
  out.idle = !!find(reloadSel);
  const code = find(codeSel);
  if (code) out.code = (code.getAttribute("data-link-code") || code.textContent || "").trim();
  if (conflictText) {
    for (const b of document.querySelectorAll("button, [role='button']")) {
      if (visible(b) && (b.textContent || "").trim() === conflictText) {
        out.dom = "conflict";
        break;
      }
    }
  }
  if (outUrl && location.href.includes(outUrl)) out.logout = true;
  if (!useApp) return out;
  try {
    if (typeof window.require !== "function") { out.app = {status: "absent"}; return out; }
    const socket = window.require("WAWebSocketModel").Socket;
    if (!socket || typeof socket.state !== "string") {
      out.app = {status: "changed", reason: "WAWebSocketModel.Socket.state is not a string"};
      return out;
    }
    out.app = {status: "ok", state: socket.state, synced: !!socket.hasSynced};
    try {
      if (!window.__sessionkeeperLogoutHook) {
        const cmd = window.require("WAWebCmd").Cmd;
        const note = () => sessionStorage.setItem("sessionkeeper-logout", "1");
        cmd.on("logout", note);
        cmd.on("logout_from_bridge", note);
        window.__sessionkeeperLogoutHook = true;
      }
    } catch (e) { /* no logout events: the URL still tells */ }
    if (sessionStorage.getItem("sessionkeeper-logout") === "1") out.logout = true;
  } catch (e) {
    out.app = {status: "changed", reason: String((e && e.message) || e).slice(0, 200)};
  }
  return out;
}
"""

# Forget a logout once it has been handled (the same tab may log in again).
FORGET_LOGOUT_JS = "() => sessionStorage.removeItem('sessionkeeper-logout')"

# A fresh QR code for an expired one: WhatsApp's own command, else its reload button.
REFRESH_QR_JS = """
(reloadSel) => {
  try { window.require("WAWebCmd").Cmd.refreshQR(); return "command"; } catch (e) {}
  const button = document.querySelector(reloadSel);
  if (button) { button.click(); return "button"; }
  return null;
}
"""

# "Use here": WhatsApp's own takeover, else the dialog's button.
TAKE_OVER_JS = """
(text) => {
  try { window.require("WAWebSocketModel").Socket.takeover(); return "command"; } catch (e) {}
  for (const b of document.querySelectorAll("button, [role='button']")) {
    if ((b.textContent || "").trim() === text) { b.click(); return "button"; }
  }
  return null;
}
"""

# A pairing code for a phone number (digits only), as whatsapp-web.js asks for one.
PAIRING_CODE_JS = """
async (phone) => {
  const api = window.require("WAWebAltDeviceLinkingApi");
  api.setPairingType("ALT_DEVICE_LINKING");
  await api.initializeAltDeviceLinking();
  return await api.startAltLinkingFlow(phone, true);
}
"""
