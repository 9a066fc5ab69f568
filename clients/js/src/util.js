// Small helpers with no state: URLs, HTTP, timers, the backoff, the ids already shown.

import { httpFailure } from "./errors.js";

export const CHANNEL_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

// A throwing callback must not break the client; the page still sees it.
export function report(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}

export function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (err) {
    report(err);
  }
}

export function randomId() {
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

export function cleanBase(baseUrl) {
  return (baseUrl || "").replace(/\/+$/, "");
}

// This page's address, for relative URLs (none in Node: a placeholder).
export function here() {
  return globalThis.location ? globalThis.location.href : "http://localhost/";
}

// `path` is "sse", "sse/<channel>", ...; `query` values may be arrays (repeated).
export function endpoint(baseUrl, path, query) {
  const url = new URL(`${baseUrl || ""}/${path}`, here());
  for (const [key, value] of Object.entries(query || {})) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== undefined && one !== null) url.searchParams.append(key, String(one));
    }
  }
  if (path.startsWith("ws")) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function httpError(res) {
  let reason;
  try {
    const body = await res.json();
    if (body && body.error) reason = String(body.error);
  } catch (_) {
    // not JSON: the status says enough
  }
  return httpFailure(res.status, reason);
}

export async function getJson(url, token, timeoutMs, signal) {
  const control = new AbortController();
  const stop = () => control.abort();
  if (signal) signal.addEventListener("abort", stop);
  const timer = setTimeout(stop, timeoutMs);
  try {
    const res = await fetch(url, { headers: authHeaders(token), cache: "no-store", signal: control.signal });
    if (!res.ok) throw await httpError(res);
    return await res.json();
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener("abort", stop);
  }
}

// Sleep `ms`, unless `wake.resolve()` is called first.
export function sleep(ms, wake) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake.resolve = () => { clearTimeout(timer); resolve(); };
  });
}

export function later(fn) {
  setTimeout(fn, 0);
}

// The wait before reconnect attempt number `attempt` (1, 2, ...): doubling from
// `initial`, capped at `max`, and drawn at random in its upper half so that
// clients dropped together do not come back together. The cap is low on
// purpose: an outage of a minute must not leave a client waiting another.
export function backoffDelay(attempt, { initial, max }, random = Math.random) {
  const ceiling = Math.min(max, initial * 2 ** Math.max(0, attempt - 1));
  return ceiling / 2 + random() * (ceiling / 2);
}

// Ids already shown, the last few thousand.
export class SeenIds {
  constructor(size) {
    this.size = size;
    this.set = new Set();
    this.order = [];
  }

  add(id) {
    if (this.set.has(id)) return false;
    this.set.add(id);
    this.order.push(id);
    if (this.order.length > this.size) this.set.delete(this.order.shift());
    return true;
  }
}
