// The demo page: a QR login like WhatsApp Web's, with the session kept where Chromium keeps
// real ones (IndexedDB with a Blob, localStorage, a persistent cookie, a service worker).
// States (document.body.dataset.state): loading -> qr -> loading -> ready, or
// loading -> ready (stored credentials verify), or loading -> logged-out -> qr (they do not).
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
const RETRY_MS = 5000;        // config / verify retries while the server is unreachable

const root = document.getElementById("app");
let state = "loading";
const stateHistory = ["loading"];
let readyTimers = [];         // intervals of the READY state, cleared when leaving it
let messageCount = 0;

function setState(next) {
  state = next;
  document.body.dataset.state = next;
  stateHistory.push(next);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function show(node) {
  root.replaceChildren(node);
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
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
  const creds = await request(db.transaction(AUTH_STORE).objectStore(AUTH_STORE).get(CREDS_KEY));
  return creds || null;
}

async function writeCreds(creds) {
  const db = await openDb(AUTH_DB);
  const tx = db.transaction(AUTH_STORE, "readwrite");
  tx.objectStore(AUTH_STORE).put(creds, CREDS_KEY);
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

// ---- credentials ---------------------------------------------------------------------------

// true / false from the server; null when it cannot be asked (down, erroring).
async function verify(creds) {
  try {
    const q = new URLSearchParams({ token: creds.token, device_id: creds.deviceId });
    const answer = await getJson(`/api/verify?${q}`);
    return answer.valid === true;
  } catch (err) {
    return null;
  }
}

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

async function syncHistory() {
  let kb = 0;
  try {
    kb = Number((await getJson("/api/config")).history_kb) || 0;
  } catch (err) {
    return;
  }
  const total = kb * 1024;
  let written = 0;
  let i = 0;
  while (written < total) {
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

async function onLinked(answer) {
  setState("loading");
  show(el("p", {}, "Linking this device\u2026"));
  const creds = {
    token: answer.token,
    deviceId: answer.device_id,
    key: crypto.getRandomValues(new Uint8Array(32)),
    avatar: await makeAvatar(),
    linkedAt: Date.now(),
  };
  await writeCreds(creds);
  await syncHistory();
  localStorage.setItem(LS_TOKEN, creds.token);
  document.cookie = `${COOKIE}=${creds.token}; Max-Age=31536000; Path=/; SameSite=Lax`;
  await registerServiceWorker();
  await enterReady(creds, true);
}

// ---- states --------------------------------------------------------------------------------

async function showQr() {
  setState("qr");
  show(el("p", { class: "hint" }, "Fetching a QR code\u2026"));
  let shown = null;
  let box = null;
  while (state === "qr") {
    let qr = null;
    try {
      qr = await getJson("/api/qr");
    } catch (err) {
      // Server unreachable: keep showing the last code and try again next tick.
    }
    // Poll the displayed payload only after fetching the current one: a payload can only be
    // approved while current, so an approval is never missed when the code rotates meanwhile.
    if (shown !== null) {
      try {
        const answer = await getJson(`/api/poll?payload=${encodeURIComponent(shown)}`);
        if (answer.linked) {
          await onLinked(answer);
          return;
        }
      } catch (err) { /* try again next tick */ }
    }
    if (qr && qr.payload !== shown) {
      shown = qr.payload;
      const img = el("img", { alt: "QR code", src: `/api/qr.svg?payload=${encodeURIComponent(shown)}` });
      if (box === null) {
        box = el("div", { id: "qr", "data-testid": "qr-code", "data-ref": shown }, img);
        show(el("div", {},
          el("h2", {}, "Link this browser"),
          el("p", { class: "hint" },
             "Scan the code with the phone (POST /api/link), or call DemoSite.link()."),
          box,
          el("p", { class: "ref" }, "")));
      } else {
        // data-ref and the image change in the same task: they never disagree on screen.
        box.setAttribute("data-ref", shown);
        box.replaceChildren(img);
      }
      root.querySelector(".ref").textContent = shown;
    }
    await sleep(QR_TICK_MS);
  }
}

async function showLoggedOut() {
  stopReady();
  setState("logged-out");
  show(el("div", { "data-testid": "logged-out" },
          "This device was logged out. Its stored session is not valid any more."));
  // Clear at once rather than after the notice: a page closed meanwhile must not keep them.
  try {
    await clearSession();
  } catch (err) {
    console.warn("clearing the session failed", err);
  }
  await sleep(LOGGED_OUT_MS);
  await showQr();
}

function stopReady() {
  for (const id of readyTimers) clearInterval(id);
  readyTimers = [];
}

function renderReady(creds) {
  const avatar = el("img", { alt: "avatar" });
  if (creds.avatar instanceof Blob) avatar.src = URL.createObjectURL(creds.avatar);
  const counter = el("span", { id: "message-count" }, String(messageCount));
  const chats = el("ul", {},
    ...["Alice", "Bob", "Family", "Work"].map((name) => el("li", {}, name)));
  show(el("div", { id: "chat-list", "data-testid": "chat-list" },
    el("div", { class: "me" }, avatar, el("span", {}, `Device ${creds.deviceId}`)),
    el("h2", {}, "Chats"),
    el("p", {}, counter, " messages stored"),
    chats));
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

// Writes messages at `rate` per minute. Catches up by elapsed time rather than counting timer
// ticks, so a throttled or busy page still ends up at the right rate.
async function startMessages(rate) {
  if (!(rate > 0)) return;
  const { count, last } = await chatStats();
  messageCount = count;
  let n = last;
  let written = 0;
  let busy = false;
  const t0 = performance.now();
  const period = Math.min(1000, Math.max(50, 60000 / rate));
  updateCounter();
  const id = setInterval(async () => {
    if (busy || state !== "ready") return;
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

async function enterReady(creds, verified) {
  stopReady();
  setState("ready");
  try {
    messageCount = (await chatStats()).count;
  } catch (err) {
    messageCount = 0;
  }
  renderReady(creds);
  if (!verified) {
    // The server could not be asked at load: keep the session and ask again until it answers.
    const id = setInterval(async () => {
      const valid = await verify(creds);
      if (valid === null) return;
      clearInterval(id);
      readyTimers = readyTimers.filter((t) => t !== id);
      if (!valid && state === "ready") await showLoggedOut();
    }, RETRY_MS);
    readyTimers.push(id);
  }
  // The rate comes from the server; until it answers no messages are written.
  const loadConfig = async () => {
    try {
      const config = await getJson("/api/config");
      if (state === "ready") await startMessages(Number(config.message_rate));
      return true;
    } catch (err) {
      return false;
    }
  };
  if (!(await loadConfig())) {
    const id = setInterval(async () => {
      if (await loadConfig()) {
        clearInterval(id);
        readyTimers = readyTimers.filter((t) => t !== id);
      }
    }, RETRY_MS);
    readyTimers.push(id);
  }
}

async function boot() {
  let creds = null;
  try {
    creds = await readCreds();
  } catch (err) {
    console.warn("reading stored credentials failed", err);
  }
  if (creds === null) {
    await showQr();
    return;
  }
  if (typeof creds.token !== "string" || typeof creds.deviceId !== "string") {
    await showLoggedOut();
    return;
  }
  const valid = await verify(creds);
  if (valid === false) {
    await showLoggedOut();
    return;
  }
  await enterReady(creds, valid === true);
}

// ---- inspection (tests, the daemon's checks) -------------------------------------------------

window.demoInspect = async () => {
  let creds = null;
  try {
    creds = await readCreds();
  } catch (err) { /* reported as hasCreds: false */ }
  let chat = { count: 0, last: 0 };
  try {
    chat = await chatStats();
  } catch (err) { /* reported as zero messages */ }
  const avatar = creds && creds.avatar instanceof Blob ? creds.avatar : null;
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
    messages: chat.count,
    lastMessage: chat.last,
    hasCreds: creds !== null,
    token: creds ? creds.token : null,
    deviceId: creds ? creds.deviceId : null,
    keyLength: creds && creds.key ? creds.key.byteLength : 0,
    avatarSize: avatar ? avatar.size : 0,
    avatarType: avatar ? avatar.type : null,
    avatarReadable,
    localStorageToken: localStorage.getItem(LS_TOKEN),
    cookie: document.cookie.split("; ").some((c) => c.startsWith(`${COOKIE}=`)),
    serviceWorker,
  };
};

boot().catch((err) => console.error("demo page failed", err));
