// The demo page: a login like WhatsApp Web's, with the session kept where Chromium keeps real
// ones (IndexedDB with a Blob, localStorage, a persistent cookie, a service worker).
//
// It exposes WhatsApp's own state the way WhatsApp Web does, through `window.require`:
// WAWebSocketModel (Socket: state, hasSynced, takeover), WAWebCmd (Cmd: refreshQR, logout
// events), WAWebConnModel (Conn: ref, the QR payload) and WAWebAltDeviceLinkingApi (pairing
// codes). The DOM uses WhatsApp's selectors too: div[data-ref] canvas for the QR code,
// #pane-side for the chat list, a data-animate-modal-popup dialog when another window took over.
//
// document.body.dataset.state (tests, the daemon's checks):
//   loading       page starting, or linking (Socket OPENING, PAIRING, CONNECTED before sync)
//   qr            QR code shown (UNPAIRED)            qr-idle       QR code expired (UNPAIRED_IDLE)
//   pairing-code  a pairing code shown (UNPAIRED)     ready         chat list (CONNECTED)
//   connecting    chat list, phone or server unreachable (TIMEOUT)
//   conflict      another window holds the session (CONFLICT)
//   logged-out    the stored session was refused, or the phone logged this device out
//   deprecated / blocked / unknown   blocking screens (DEPRECATED_VERSION, TOS_BLOCK, other)
"use strict";

const AUTH_DB = "demo-auth";
const AUTH_STORE = "creds";
const CREDS_KEY = "creds";
const CHAT_DB = "demo-chat";
const CHAT_STORE = "messages";
const LS_TOKEN = "demo-token";
const COOKIE = "demo_session";
const LOGGED_OUT_MS = 2000;   // how long the logged-out notice stays before the QR code
const QR_TICK_MS = 1000;      // one /api/qr + /api/poll round per tick
const PAIRING_TICK_MS = 1000; // one /api/pairing poll per tick
const HEARTBEAT_MS = 1000;    // pause between two heartbeats
const REQUEST_TIMEOUT_MS = 3000;
const SYNC_DELAY_MS = 300;    // a restored session counts as synced this long after connecting
const RETRY_MS = 5000;        // config retries while the server is unreachable
const QR_SIZE = 264;

// One id per page load: the server tells the page that holds a device's session from others.
const INSTANCE = Array.from(crypto.getRandomValues(new Uint8Array(12)),
                            (b) => b.toString(16).padStart(2, "0")).join("");
// The server turns this off (DemoSite.set_modules(False)), as if WhatsApp renamed its modules.
const MODULES_ON = document.documentElement.dataset.modules !== "off";

// ---- WhatsApp's modules ------------------------------------------------------------------

// Backbone-style events, as WhatsApp's models have: on/off/once/trigger.
class Emitter {
  constructor() {
    Object.defineProperty(this, "_events", { value: new Map() });
  }

  on(name, callback, context) {
    return this._add(name, callback, context, false);
  }

  once(name, callback, context) {
    return this._add(name, callback, context, true);
  }

  _add(name, callback, context, once) {
    if (typeof callback !== "function") return this;
    for (const one of String(name).split(/\s+/).filter(Boolean)) {
      if (!this._events.has(one)) this._events.set(one, []);
      this._events.get(one).push({ callback, context, once });
    }
    return this;
  }

  off(name, callback, context) {
    const names = name == null ? [...this._events.keys()] : String(name).split(/\s+/);
    for (const one of names) {
      const list = this._events.get(one);
      if (!list) continue;
      const kept = list.filter((h) => (callback != null && h.callback !== callback) ||
                                      (context != null && h.context !== context));
      if (kept.length > 0 && (callback != null || context != null)) this._events.set(one, kept);
      else this._events.delete(one);
    }
    return this;
  }

  trigger(name, ...args) {
    const list = this._events.get(name);
    if (!list) return this;
    for (const handler of list.slice()) {
      if (handler.once) {
        const now = this._events.get(name) || [];
        this._events.set(name, now.filter((h) => h !== handler));
      }
      try {
        handler.callback.apply(handler.context === undefined ? this : handler.context, args);
      } catch (err) {
        console.error(`a listener of "${name}" failed`, err);
      }
    }
    return this;
  }
}

class Model extends Emitter {
  // Listeners get (model, value), as on WhatsApp's models.
  set(field, value) {
    if (Object.is(this[field], value)) return this;
    this[field] = value;
    this.trigger(`change:${field}`, this, value);
    this.trigger("change", this);
    return this;
  }
}

const Socket = new Model();
Socket.state = "OPENING";
Socket.hasSynced = false;
Socket.takeover = () => takeover();

const Conn = new Model();
Conn.ref = null;

const Cmd = new Emitter();
Cmd.refreshQR = () => { refreshQr(); };

const AltDeviceLinking = {
  pairingType: null,
  setPairingType(type) { this.pairingType = type; },
  async initializeAltDeviceLinking() { return undefined; },
  // Resolves to the 8-character code; a later call gets a fresh code for the same request.
  startAltLinkingFlow(phone, showNotification) { return startPairing(String(phone)); },
};

const MODULES = {
  WAWebSocketModel: { Socket },
  WAWebCmd: { Cmd },
  WAWebConnModel: { Conn },
  WAWebAltDeviceLinkingApi: AltDeviceLinking,
};

window.require = function require(name) {
  if (MODULES_ON && Object.prototype.hasOwnProperty.call(MODULES, name)) return MODULES[name];
  throw new Error(`Requiring unknown module "${name}"`);
};

// ---- page state ----------------------------------------------------------------------------

const root = document.getElementById("app");
let state = "loading";
const stateHistory = ["loading"];
// What the page is doing; `epoch` moves on with every phase change, so a loop or an async
// step started in an older phase sees it and stops.
let phase = "opening";
let epoch = 0;
let creds = null;           // the session this page runs on, once read or linked
let claimed = false;        // this page load was made the device's active one
let lastBeat = null;        // the newest heartbeat answer for `creds` (null: unreachable)
let beatSeq = 0;
let minSeq = 0;             // answers to heartbeats sent before this one are stale
let screen = null;          // the blocking screen shown (from the server), or null
let syncTimer = null;
let freshSync = false;      // a fresh link synced its history: hasSynced at once
let readyTimers = [];       // intervals of the logged-in phases, cleared when leaving them
let messageCount = 0;
let qrShown = null;         // the payload on screen
let qrSince = null;         // when the page started showing codes (performance.now())
let pairingRef = null;

const LOGGED_IN = new Set(["linking", "ready", "connecting", "conflict"]);
const UNPAIRED = new Set(["qr", "qr-idle", "pairing-code"]);

function setState(next) {
  if (next === state) return;
  state = next;
  document.body.dataset.state = next;
  stateHistory.push(next);
}

// A new phase: the dataset state, then (if given) the Socket state, so a listener of
// change:state already finds the DOM that goes with it.
function enter(next, shown, socketState) {
  phase = next;
  epoch += 1;
  setState(shown);
  if (socketState) Socket.set("state", socketState);
  return epoch;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function button(text, onClick) {
  const node = el("button", { type: "button" }, text);
  node.addEventListener("click", onClick);
  return node;
}

function show(node) {
  root.replaceChildren(node);
}

async function answerOf(path, response) {
  if (response.ok) return response.json();
  let detail = `HTTP ${response.status}`;
  try {
    detail = (await response.json()).error || detail;
  } catch (err) { /* not JSON */ }
  const error = new Error(`${path}: ${detail}`);
  error.status = response.status;
  throw error;
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store",
                                       signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  return answerOf(path, response);
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST", cache: "no-store", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body), signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  return answerOf(path, response);
}

// ---- IndexedDB -----------------------------------------------------------------------------

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
  });
}

const dbs = new Map();

function openDb(name) {
  if (!dbs.has(name)) {
    const opening = new Promise((resolve, reject) => {
      const req = indexedDB.open(name, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (name === AUTH_DB) db.createObjectStore(AUTH_STORE);
        else db.createObjectStore(CHAT_STORE, { autoIncrement: true });
      };
      req.onsuccess = () => {
        const db = req.result;
        // Let another tab (or a test) upgrade or delete the database instead of blocking it.
        db.onversionchange = () => { db.close(); dbs.delete(name); };
        resolve(db);
      };
      req.onerror = () => reject(req.error);
    });
    // A failed open is not cached, so the next call tries again.
    opening.catch(() => dbs.delete(name));
    dbs.set(name, opening);
  }
  return dbs.get(name);
}

async function readCreds() {
  const db = await openDb(AUTH_DB);
  const stored = await request(db.transaction(AUTH_STORE).objectStore(AUTH_STORE).get(CREDS_KEY));
  return stored || null;
}

async function writeCreds(value) {
  const db = await openDb(AUTH_DB);
  const tx = db.transaction(AUTH_STORE, "readwrite");
  tx.objectStore(AUTH_STORE).put(value, CREDS_KEY);
  await done(tx);  // resolved = committed, not merely queued
}

async function chatStats() {
  const db = await openDb(CHAT_DB);
  const tx = db.transaction(CHAT_STORE);
  const store = tx.objectStore(CHAT_STORE);
  const count = await request(store.count());
  // Keys are autoIncrement and n only grows, so the last record holds the highest n.
  const cursor = await request(store.openCursor(null, "prev"));
  return { count, last: cursor ? Math.max(0, cursor.value.n) : 0 };
}

async function clearSession() {
  const auth = await openDb(AUTH_DB);
  const tx = auth.transaction(AUTH_STORE, "readwrite");
  tx.objectStore(AUTH_STORE).delete(CREDS_KEY);
  await done(tx);
  const chat = await openDb(CHAT_DB);
  const chatTx = chat.transaction(CHAT_STORE, "readwrite");
  chatTx.objectStore(CHAT_STORE).clear();
  await done(chatTx);
  localStorage.removeItem(LS_TOKEN);
  document.cookie = `${COOKIE}=; Max-Age=0; Path=/; SameSite=Lax`;
}

// ---- heartbeat: the server's word on this page's session, the phone and the screen ----------

async function heartbeat() {
  const seq = ++beatSeq;
  const device = creds ? creds.deviceId : null;
  const claim = creds !== null && !claimed && phase !== "conflict";
  let answer = null;
  try {
    answer = await postJson("/api/heartbeat", {
      instance: INSTANCE, device_id: device, token: creds ? creds.token : null, claim,
      // A page showing the conflict dialog waits for "Use here"; it never takes the session.
      standby: phase === "conflict",
    });
  } catch (err) { /* unreachable: answer stays null */ }
  if (seq < minSeq) return answer;
  const current = creds ? creds.deviceId : null;
  if (device !== null && device === current) {
    lastBeat = answer;
    if (claim && answer && answer.session === "active") claimed = true;
  }
  try {
    applyBeat(answer, device);
  } catch (err) {
    console.error("applying a heartbeat failed", err);
  }
  return answer;
}

async function heartbeatLoop() {
  for (;;) {
    await heartbeat();
    await sleep(HEARTBEAT_MS);
  }
}

function applyBeat(answer, device) {
  if (phase === "leaving") return;
  // A blocking screen first; a link under way finishes before one comes up.
  if (answer && phase !== "linking") {
    const wanted = answer.screen || null;
    if (wanted !== screen) {
      if (wanted !== null) showScreen(wanted);
      else leaveScreen();
      return;
    }
  }
  if (screen !== null || creds === null || device !== creds.deviceId) return;
  if (!LOGGED_IN.has(phase)) return;  // the boot and the link read their own first answer
  const session = answer ? answer.session : null;
  if (session === "revoked") {
    logoutFromPhone();
  } else if (session === "invalid") {
    showLoggedOut();
  } else if (phase === "ready" || phase === "connecting") {
    if (session === "conflict") enterConflict();
    else if (answer === null) toConnection(false);
    else if (session === "active") toConnection(answer.phone_online !== false);
  }
}

// Logged in, chat list shown: CONNECTED, or TIMEOUT with the "Phone not connected" banner.
function toConnection(online) {
  const banner = document.getElementById("phone-banner");
  if (online) {
    if (phase !== "ready") {
      phase = "ready";
      setState("ready");
    }
    if (banner) banner.hidden = true;
    Socket.set("state", "CONNECTED");
    markSynced();
  } else {
    if (phase !== "connecting") {
      phase = "connecting";
      setState("connecting");
    }
    if (banner) banner.hidden = false;
    Socket.set("state", "TIMEOUT");
  }
}

function markSynced() {
  if (Socket.hasSynced || syncTimer !== null) return;
  if (freshSync) {
    freshSync = false;
    Socket.set("hasSynced", true);
    return;
  }
  const my = epoch;
  syncTimer = setTimeout(() => {
    syncTimer = null;
    if (my === epoch && Socket.state === "CONNECTED") Socket.set("hasSynced", true);
  }, SYNC_DELAY_MS);
}

// ---- credentials ---------------------------------------------------------------------------

// A real PNG of random pixels (about 35 KB): a Blob that IndexedDB must keep in its .blob folder.
async function makeAvatar() {
  const size = 96;
  try {
    const canvas = el("canvas", { width: String(size), height: String(size) });
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(size, size);
    const noise = crypto.getRandomValues(new Uint8Array(size * size * 4));
    for (let i = 0; i < noise.length; i += 4) {
      image.data[i] = noise[i];
      image.data[i + 1] = noise[i + 1];
      image.data[i + 2] = noise[i + 2];
      image.data[i + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    if (blob && blob.size > 0) return blob;
  } catch (err) {
    console.warn("canvas avatar failed, using random bytes", err);
  }
  return new Blob([crypto.getRandomValues(new Uint8Array(40000))],
                  { type: "application/octet-stream" });
}

async function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return;
  try {
    await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    // Wait for activation (its cache filled) so READY means the worker is in the profile too.
    await Promise.race([navigator.serviceWorker.ready, sleep(5000)]);
  } catch (err) {
    console.warn("service worker registration failed", err);
  }
}

// Right after a link WhatsApp Web downloads chat history; the demo writes `history_kb` of
// older messages (4 KiB each: text and random bytes), and every 16th carries a 60 KB photo as a
// Blob (Chromium keeps those as separate blob files), before it shows the chat list.
const HISTORY_RECORD_BYTES = 4096;
const HISTORY_MEDIA_EVERY = 16;
const HISTORY_MEDIA_BYTES = 60000;

async function syncHistory(my) {
  let kb = 0;
  try {
    kb = Number((await getJson("/api/config")).history_kb) || 0;
  } catch (err) {
    return;
  }
  const total = kb * 1024;
  let written = 0;
  let i = 0;
  while (written < total && my === epoch) {
    show(el("p", {}, `Syncing history\u2026 ${Math.floor(written / 1024)}/${kb} KiB`));
    const db = await openDb(CHAT_DB);
    const tx = db.transaction(CHAT_STORE, "readwrite");
    const store = tx.objectStore(CHAT_STORE);
    for (let k = 0; k < 100 && written < total; k++, i++) {
      const record = { n: -(i + 1), text: messageText(-(i + 1)), at: Date.now(),
                       bin: crypto.getRandomValues(new Uint8Array(3700)), history: true };
      written += HISTORY_RECORD_BYTES;
      if ((i + 1) % HISTORY_MEDIA_EVERY === 0) {
        record.media = new Blob([crypto.getRandomValues(new Uint8Array(HISTORY_MEDIA_BYTES))],
                                { type: "image/jpeg" });
        written += HISTORY_MEDIA_BYTES;
      }
      store.add(record);
    }
    await done(tx);
  }
}

// The phone approved a QR payload or a pairing code: PAIRING, store the creds, become the
// device's active page (CONNECTED), sync history, then hasSynced and the chat list.
async function onLinked(answer) {
  const my = enter("linking", "loading", "PAIRING");
  show(el("p", {}, "Linking this device\u2026"));
  if (new URLSearchParams(location.search).has("post_logout")) history.replaceState(null, "", "/");
  const linked = {
    token: answer.token,
    deviceId: answer.device_id,
    key: crypto.getRandomValues(new Uint8Array(32)),
    avatar: await makeAvatar(),
    linkedAt: Date.now(),
  };
  await writeCreds(linked);
  if (my !== epoch) return;
  creds = linked;
  claimed = false;
  lastBeat = null;
  minSeq = beatSeq + 1;
  const beat = await heartbeat();
  if (my !== epoch) return;
  if (beat && beat.session === "active") Socket.set("state", "CONNECTED");
  await syncHistory(my);
  if (my !== epoch) return;
  localStorage.setItem(LS_TOKEN, linked.token);
  document.cookie = `${COOKIE}=${linked.token}; Max-Age=31536000; Path=/; SameSite=Lax`;
  await registerServiceWorker();
  if (my !== epoch) return;
  freshSync = true;
  await enterSession(lastBeat);
}

// ---- QR code -------------------------------------------------------------------------------

async function loadQrImage(payload) {
  const img = new Image();
  img.alt = "QR code";
  img.src = `/api/qr.svg?payload=${encodeURIComponent(payload)}`;
  try {
    await img.decode();
    return img;
  } catch (err) {
    return null;  // server unreachable: try again next tick
  }
}

function drawQr(canvas, img) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
}

async function showQr(expired = null) {
  const my = enter("qr", "qr", null);
  stopReady();
  show(el("p", { class: "hint" }, "Fetching a QR code\u2026"));
  qrShown = null;
  qrSince = null;
  let box = null;
  let canvas = null;
  let idleAfterMs = Infinity;
  while (my === epoch) {
    let qr = null;
    try {
      // After an expiry, ask for a code other than the expired one.
      qr = expired !== null ? await postJson("/api/qr", { expired }) : await getJson("/api/qr");
      expired = null;
    } catch (err) {
      // Server unreachable: keep showing the last code and try again next tick.
    }
    if (my !== epoch) return;
    // Poll the displayed payload only after fetching the current one: a payload can only be
    // approved while current, so an approval is never missed when the code rotates meanwhile.
    if (qrShown !== null) {
      try {
        const answer = await getJson(`/api/poll?payload=${encodeURIComponent(qrShown)}` +
                                     `&instance=${encodeURIComponent(INSTANCE)}`);
        if (my !== epoch) return;
        if (answer.linked) {
          await onLinked(answer);
          return;
        }
      } catch (err) { /* try again next tick */ }
    }
    if (qr) idleAfterMs = Number(qr.idle_after) * 1000 || Infinity;
    if (qr && qr.payload !== qrShown) {
      const img = await loadQrImage(qr.payload);
      if (my !== epoch) return;
      if (img !== null) {
        if (box === null) {
          canvas = el("canvas", { width: String(QR_SIZE), height: String(QR_SIZE), role: "img",
                                  "aria-label": "Scan this QR code to link a device!" });
          box = el("div", { id: "qr", "data-testid": "qr-code", "data-ref": qr.payload });
          show(el("div", {},
            el("h2", {}, "Link this browser"),
            el("p", { class: "hint" },
               "Scan the code with the phone (POST /api/link), or call DemoSite.link()."),
            box,
            el("p", { class: "ref" }, "")));
        }
        // data-ref, the canvas and the image change in the same task: they never disagree.
        drawQr(canvas, img);
        box.setAttribute("data-ref", qr.payload);
        box.replaceChildren(canvas, img);
        root.querySelector(".ref").textContent = qr.payload;
        qrShown = qr.payload;
        if (qrSince === null) qrSince = performance.now();
        Conn.set("ref", qrShown);
        Socket.set("state", "UNPAIRED");
      }
    }
    if (qrSince !== null && performance.now() - qrSince >= idleAfterMs) {
      goIdle(box);
      return;
    }
    await sleep(QR_TICK_MS);
  }
}

// Shown codes for `idle_after` seconds without a link: stop, as WhatsApp does, until the
// reload button (or Cmd.refreshQR()) asks for a fresh code.
function goIdle(box) {
  enter("qr-idle", "qr-idle", null);
  box.classList.add("idle");
  box.append(button("Click to reload QR code", () => refreshQr()));
  Socket.set("state", "UNPAIRED_IDLE");
}

function refreshQr() {
  if (phase === "qr-idle") showQr(qrShown).catch((err) => console.error("QR failed", err));
  else if (phase === "qr") qrSince = performance.now();
}

// ---- pairing code --------------------------------------------------------------------------

async function startPairing(phone) {
  if (!UNPAIRED.has(phase)) {
    throw new Error(`no phone number link now: Socket state is ${Socket.state}`);
  }
  const answer = await postJson("/api/pairing", { phone, ref: pairingRef });
  if (!UNPAIRED.has(phase)) {
    throw new Error(`no phone number link now: Socket state is ${Socket.state}`);
  }
  const fresh = phase !== "pairing-code" || pairingRef !== answer.ref;
  pairingRef = answer.ref;
  if (fresh) showPairing(phone);
  renderCode(answer.code);
  return answer.code;
}

function showPairing(phone) {
  const my = enter("pairing-code", "pairing-code", "UNPAIRED");
  // As WhatsApp renders it: data-link-code holds the characters joined by commas.
  const cells = el("div", { "data-link-code": "", "data-testid": "link-with-phone-number-code-cells",
                            "aria-details": "link-device-phone-number-code-screen-instructions" });
  show(el("div", { class: "pairing" },
    el("h2", {}, "Enter code on phone"),
    el("p", { class: "hint" }, `Linking WhatsApp account ${phone}`),
    cells,
    el("p", { class: "hint" },
       "Type it on the phone (POST /api/link {\"code\": ...}, or DemoSite.link_code())."),
    button("Link with QR code", () => {
      pairingRef = null;
      showQr();
    })));
  pollPairing(my).catch((err) => console.error("pairing poll failed", err));
}

function renderCode(code) {
  const cells = root.querySelector("[data-link-code]");
  const chars = String(code).split("");
  if (!cells || cells.getAttribute("data-link-code") === chars.join(",")) return;
  cells.setAttribute("data-link-code", chars.join(","));
  cells.replaceChildren(
    ...chars.slice(0, 4).map((c) => el("span", {}, c)),
    el("span", { class: "dash" }, "-"),
    ...chars.slice(4).map((c) => el("span", {}, c)));
}

async function pollPairing(my) {
  while (my === epoch) {
    await sleep(PAIRING_TICK_MS);
    if (my !== epoch) return;
    let answer = null;
    try {
      answer = await getJson(`/api/pairing?ref=${encodeURIComponent(pairingRef)}`);
    } catch (err) {
      if (err.status === 404 && my === epoch) {
        // The server forgot the request (it restarted): back to the QR code.
        pairingRef = null;
        await showQr();
        return;
      }
      continue;
    }
    if (my !== epoch) return;
    if (answer.linked) {
      pairingRef = null;
      await onLinked(answer);
      return;
    }
    renderCode(answer.code);
  }
}

// ---- logged in -----------------------------------------------------------------------------

function stopReady() {
  for (const id of readyTimers) clearInterval(id);
  readyTimers = [];
}

function renderReady() {
  const avatar = el("img", { alt: "avatar" });
  if (creds.avatar instanceof Blob) avatar.src = URL.createObjectURL(creds.avatar);
  const counter = el("span", { id: "message-count" }, String(messageCount));
  const banner = el("div", { id: "phone-banner", class: "banner", role: "alert",
                             "data-testid": "phone-offline" },
    el("strong", {}, "Phone not connected"),
    el("div", {}, "Make sure your phone has an active Internet connection."));
  banner.hidden = true;
  const chats = el("ul", {},
    ...["Alice", "Bob", "Family", "Work"].map((name) => el("li", {}, name)));
  show(el("div", { id: "chat-list" },
    banner,
    el("div", { class: "me" }, avatar, el("span", {}, `Device ${creds.deviceId}`)),
    el("div", { id: "pane-side", "data-testid": "chat-list", "aria-label": "Chat list" },
      el("h2", {}, "Chats"),
      el("p", {}, counter, " messages stored"),
      chats)));
}

function updateCounter() {
  const counter = document.getElementById("message-count");
  if (counter) counter.textContent = String(messageCount);
}

const WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " +
               "incididunt ut labore et dolore magna aliqua session profile restore").split(" ");

function messageText(n) {
  const words = [`#${n}`];
  while (words.join(" ").length < 300) words.push(WORDS[Math.floor(Math.random() * WORDS.length)]);
  return words.join(" ");
}

// Writes messages at `rate` per minute while the chat list shows. Catches up by elapsed time
// rather than counting timer ticks, so a throttled or busy page still ends up at the right rate.
async function startMessages(rate, my) {
  if (!(rate > 0)) return;
  const { count, last } = await chatStats();
  if (my !== epoch) return;
  messageCount = count;
  let n = last;
  let written = 0;
  let busy = false;
  const t0 = performance.now();
  const period = Math.min(1000, Math.max(50, 60000 / rate));
  updateCounter();
  const id = setInterval(async () => {
    if (busy || my !== epoch || (phase !== "ready" && phase !== "connecting")) return;
    busy = true;
    try {
      const due = Math.floor(((performance.now() - t0) * rate) / 60000) - written;
      const batch = Math.min(due, 200);
      if (batch > 0) {
        const db = await openDb(CHAT_DB);
        const tx = db.transaction(CHAT_STORE, "readwrite");
        const store = tx.objectStore(CHAT_STORE);
        for (let i = 0; i < batch; i++) {
          n += 1;
          store.add({ n, text: messageText(n), at: Date.now(),
                      bin: crypto.getRandomValues(new Uint8Array(256)) });
        }
        await done(tx);
        written += batch;
        messageCount += batch;
        updateCounter();
      }
    } catch (err) {
      console.warn("writing messages failed", err);
    } finally {
      busy = false;
    }
  }, period);
  readyTimers.push(id);
}

// The chat list, CONNECTED or TIMEOUT as `answer` (a heartbeat answer, null: unreachable) says.
async function enterSession(answer) {
  const my = ++epoch;
  stopReady();
  try {
    messageCount = (await chatStats()).count;
  } catch (err) {
    messageCount = 0;
  }
  if (my !== epoch) return;
  renderReady();
  toConnection(answer !== null && answer.session === "active" && answer.phone_online !== false);
  // The rate comes from the server; until it answers no messages are written.
  const loadConfig = async () => {
    try {
      const config = await getJson("/api/config");
      if (my === epoch) await startMessages(Number(config.message_rate), my);
      return true;
    } catch (err) {
      return false;
    }
  };
  if (!(await loadConfig()) && my === epoch) {
    const id = setInterval(async () => {
      if (await loadConfig()) {
        clearInterval(id);
        readyTimers = readyTimers.filter((t) => t !== id);
      }
    }, RETRY_MS);
    readyTimers.push(id);
  }
}

// ---- another window, logouts, blocking screens ----------------------------------------------

function enterConflict() {
  enter("conflict", "conflict", "CONFLICT");
  stopReady();
  show(el("div", { "data-animate-modal-popup": "true", role: "dialog", "aria-modal": "true",
                   "data-testid": "conflict-dialog" },
    el("div", {}, "WhatsApp is open in another window. Click \u201cUse here\u201d to use " +
                  "WhatsApp in this window."),
    el("div", { class: "buttons" },
       button("Close", () => show(el("p", { class: "hint" },
         "WhatsApp is open in another window. Reload this page to use it here."))),
       button("Use here", () => { takeover(); }))));
}

// Socket.takeover(): make this page the device's active one again ("Use here").
async function takeover() {
  if (creds === null || phase === "leaving") return false;
  const device = creds.deviceId;
  let answer;
  try {
    answer = await postJson("/api/takeover",
                            { instance: INSTANCE, device_id: device, token: creds.token });
  } catch (err) {
    return false;
  }
  // Heartbeats sent before the server recorded the takeover may still say "conflict".
  minSeq = beatSeq + 1;
  if (creds === null || creds.deviceId !== device) return false;
  lastBeat = answer;
  if (answer.session === "active") {
    claimed = true;
    if (phase === "conflict") await enterSession(answer);
    return true;
  }
  if (answer.session === "revoked") logoutFromPhone();
  else if (answer.session === "invalid") showLoggedOut();
  return false;
}

// The phone logged this device out: WhatsApp fires Cmd "logout", drops the session and
// reloads with ?post_logout=1, which shows the QR page.
async function logoutFromPhone() {
  if (phase === "leaving") return;
  enter("leaving", "logged-out", null);
  stopReady();
  creds = null;
  Cmd.trigger("logout");
  Cmd.trigger("logout_from_bridge");
  try {
    await clearSession();
  } catch (err) {
    console.warn("clearing the session failed", err);
  }
  location.replace("/?post_logout=1");
}

// The stored session is not valid (the server refused the token): a notice, then the QR code.
async function showLoggedOut() {
  const my = enter("logged-out", "logged-out", "OPENING");
  stopReady();
  creds = null;
  Cmd.trigger("logout");
  show(el("div", { "data-testid": "logged-out" },
          "This device was logged out. Its stored session is not valid any more."));
  // Clear at once rather than after the notice: a page closed meanwhile must not keep them.
  try {
    await clearSession();
  } catch (err) {
    console.warn("clearing the session failed", err);
  }
  await sleep(LOGGED_OUT_MS);
  if (my === epoch) await showQr();
}

const SCREENS = {
  deprecated: {
    state: "deprecated", socket: "DEPRECATED_VERSION",
    render: () => el("div", { "data-testid": "deprecated" },
      el("h2", {}, "WhatsApp works with Google Chrome 85+"),
      el("p", {}, "To use WhatsApp, update Chrome or use Mozilla Firefox, Safari, Microsoft " +
                  "Edge or Opera."),
      el("a", { href: "https://www.google.com/chrome/", role: "button" },
         "Update Google Chrome")),
  },
  blocked: {
    state: "blocked", socket: "TOS_BLOCK",
    render: () => el("div", { "data-testid": "blocked" },
      el("h2", {}, "This account is not allowed to use WhatsApp"),
      el("p", {}, "It was banned for a breach of the Terms of Service.")),
  },
  mystery: {
    // Nothing anybody's selectors know, with a Socket state nobody knows.
    state: "unknown", socket: "MYSTERY_STATE",
    render: () => el("div", { class: "mystery" }, el("p", {}, "\u2026")),
  },
};

function showScreen(name) {
  const spec = SCREENS[name] || SCREENS.mystery;
  screen = name;
  enter("screen", spec.state, spec.socket);
  stopReady();
  Socket.set("hasSynced", false);
  show(spec.render());
}

function leaveScreen() {
  screen = null;
  boot().catch((err) => console.error("demo page failed", err));
}

// ---- start ---------------------------------------------------------------------------------

async function boot() {
  const my = enter("opening", "loading", "OPENING");
  creds = null;
  claimed = false;
  lastBeat = null;
  let stored = null;
  try {
    stored = await readCreds();
  } catch (err) {
    console.warn("reading stored credentials failed", err);
  }
  if (my !== epoch) return;
  if (stored === null) {
    await showQr();
    return;
  }
  if (typeof stored.token !== "string" || typeof stored.deviceId !== "string") {
    await showLoggedOut();
    return;
  }
  creds = stored;
  minSeq = beatSeq + 1;
  // The first heartbeat claims the session for this page load (OPENING until it answers).
  const answer = await heartbeat();
  if (my !== epoch) return;
  const session = answer ? answer.session : null;
  if (session === "revoked") await logoutFromPhone();
  else if (session === "invalid") await showLoggedOut();
  else await enterSession(answer);
}

// ---- inspection (tests, the daemon's checks) -------------------------------------------------

window.demoInspect = async () => {
  let stored = null;
  try {
    stored = await readCreds();
  } catch (err) { /* reported as hasCreds: false */ }
  let chat = { count: 0, last: 0 };
  try {
    chat = await chatStats();
  } catch (err) { /* reported as zero messages */ }
  const avatar = stored && stored.avatar instanceof Blob ? stored.avatar : null;
  // Reading the bytes, not just the record, proves the .blob file came back with the database.
  let avatarReadable = false;
  if (avatar) {
    try {
      avatarReadable = (await avatar.arrayBuffer()).byteLength === avatar.size;
    } catch (err) { /* the record survived but its blob file did not */ }
  }
  let serviceWorker = false;
  if ("serviceWorker" in navigator) {
    serviceWorker = (await navigator.serviceWorker.getRegistrations()).length > 0;
  }
  return {
    state,
    history: stateHistory.slice(),
    socketState: Socket.state,
    hasSynced: Socket.hasSynced,
    instance: INSTANCE,
    messages: chat.count,
    lastMessage: chat.last,
    hasCreds: stored !== null,
    token: stored ? stored.token : null,
    deviceId: stored ? stored.deviceId : null,
    keyLength: stored && stored.key ? stored.key.byteLength : 0,
    avatarSize: avatar ? avatar.size : 0,
    avatarType: avatar ? avatar.type : null,
    avatarReadable,
    localStorageToken: localStorage.getItem(LS_TOKEN),
    cookie: document.cookie.split("; ").some((c) => c.startsWith(`${COOKIE}=`)),
    serviceWorker,
  };
};

boot().catch((err) => console.error("demo page failed", err));
heartbeatLoop();
