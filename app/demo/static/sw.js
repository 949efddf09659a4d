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

// What this worker sees of the browser, for checks of what a site's scripts can read: its
// navigator (a worker's own, not the page's) and the User-Agent header of the request. Only
// the worker answers this path (the server has no such route); `source` says so.
function userAgentReport(request) {
  const data = navigator.userAgentData;
  const body = {
    source: "service-worker",
    userAgent: navigator.userAgent,
    brands: data && data.brands ? data.brands.map((b) => ({ brand: b.brand, version: b.version }))
                                : null,
    header: request.headers.get("User-Agent"),
  };
  return new Response(JSON.stringify(body), {
    headers: { "Content-Type": "application/json", "Cache-Control": "no-store" },
  });
}

// Network first, cache as the fallback: the shell loads while the server is down (as WhatsApp
// Web does), but a running server always wins so an updated app.js is never masked.
self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname === "/__sw/ua") {
    event.respondWith(userAgentReport(event.request));
    return;
  }
  if (!SHELL.includes(url.pathname)) return;
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
