// Service worker of the demo site. Its registration and CacheStorage entries live in the
// profile (Service Worker/ folder), one more thing a restore must bring back intact.
"use strict";

const CACHE = "demo-shell-v1";
const SHELL = ["/", "/app.js"];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

// Network first, cache as the fallback: the shell loads while the server is down (as WhatsApp
// Web does), but a running server always wins so an updated app.js is never masked.
self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin ||
      !SHELL.includes(url.pathname)) {
    return;
  }
  event.respondWith((async () => {
    try {
      const response = await fetch(event.request);
      if (response.ok) {
        const copy = response.clone();
        caches.open(CACHE).then((cache) => cache.put(url.pathname, copy)).catch(() => {});
      }
      return response;
    } catch (err) {
      const cached = await caches.match(url.pathname);
      return cached || Response.error();
    }
  })());
});
