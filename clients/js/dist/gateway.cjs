// Generated from clients/js/src by clients/js/build.mjs: do not edit, run `npm run build` there.
var __defProp = Object.defineProperty;
var __getOwnPropDesc = Object.getOwnPropertyDescriptor;
var __getOwnPropNames = Object.getOwnPropertyNames;
var __hasOwnProp = Object.prototype.hasOwnProperty;
var __export = (target, all) => {
  for (var name in all)
    __defProp(target, name, { get: all[name], enumerable: true });
};
var __copyProps = (to, from, except, desc) => {
  if (from && typeof from === "object" || typeof from === "function") {
    for (let key of __getOwnPropNames(from))
      if (!__hasOwnProp.call(to, key) && key !== except)
        __defProp(to, key, { get: () => from[key], enumerable: !(desc = __getOwnPropDesc(from, key)) || desc.enumerable });
  }
  return to;
};
var __toCommonJS = (mod) => __copyProps(__defProp({}, "__esModule", { value: true }), mod);

// src/index.js
var index_exports = {};
__export(index_exports, {
  GatewayError: () => GatewayError,
  connections: () => connections,
  default: () => index_default,
  presence: () => presence,
  publish: () => publish,
  subscribe: () => subscribe,
  transports: () => transports
});
module.exports = __toCommonJS(index_exports);

// src/errors.js
var GatewayError = class extends Error {
  constructor(message, { fatal = false, status, code, expired = false } = {}) {
    super(message);
    this.name = "GatewayError";
    this.fatal = fatal;
    this.status = status;
    this.code = code;
    this.expired = expired;
  }
};
function flat(err) {
  return {
    message: String(err && err.message),
    fatal: !!(err && err.fatal),
    status: err && err.status,
    code: err && err.code,
    expired: !!(err && err.expired)
  };
}
function unflat(obj) {
  return new GatewayError(obj.message, obj);
}
var FATAL_HTTP = /* @__PURE__ */ new Set([400, 401, 403, 413]);
var FATAL_WS = /* @__PURE__ */ new Set([1008, 4003]);
var WS_EXPIRED = 4001;
var EXPIRED_REASON = /token expired/i;
function httpFailure(status, reason) {
  const text = reason ? `HTTP ${status}: ${reason}` : `HTTP ${status}`;
  const expired = status === 401 && EXPIRED_REASON.test(reason || "");
  return new GatewayError(text, { fatal: FATAL_HTTP.has(status), status, expired });
}
function wsFailure(code, reason, opened) {
  const why = reason ? `: ${reason}` : "";
  const expired = code === WS_EXPIRED || code === 1008 && EXPIRED_REASON.test(reason || "");
  const fatal = opened && FATAL_WS.has(code);
  return new GatewayError(`websocket closed ${code}${why}`, { fatal, code, expired });
}

// src/eventstream.js
var EventStreamParser = class {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }
  reset() {
    this.event = "";
    this.id = "";
    this.data = [];
  }
  push(text) {
    const buf = this.buffer + text;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i];
      if (c !== "\n" && c !== "\r") continue;
      if (c === "\r" && i + 1 === buf.length) break;
      this.line(buf.slice(start, i));
      if (c === "\r" && buf[i + 1] === "\n") i++;
      start = i + 1;
    }
    this.buffer = buf.slice(start);
  }
  line(line) {
    if (line === "") return this.dispatch();
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
  dispatch() {
    const { event, id, data } = this;
    this.reset();
    if (data.length === 0) return;
    this.onEvent({ event: event || "message", id, data: data.join("\n") });
  }
};

// src/util.js
var CHANNEL_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
function report(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => {
    throw err;
  });
}
function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (err) {
    report(err);
  }
}
function randomId() {
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}
function cleanBase(baseUrl) {
  return (baseUrl || "").replace(/\/+$/, "");
}
function here() {
  return globalThis.location ? globalThis.location.href : "http://localhost/";
}
function endpoint(baseUrl, path, query) {
  const url = new URL(`${baseUrl || ""}/${path}`, here());
  for (const [key, value] of Object.entries(query || {})) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== void 0 && one !== null) url.searchParams.append(key, String(one));
    }
  }
  if (path.startsWith("ws")) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}
function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}
async function httpError(res) {
  let reason;
  try {
    const body = await res.json();
    if (body && body.error) reason = String(body.error);
  } catch (_) {
  }
  return httpFailure(res.status, reason);
}
async function getJson(url, token, timeoutMs, signal) {
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
function sleep(ms, wake) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake.resolve = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}
function later(fn) {
  setTimeout(fn, 0);
}
function backoffDelay(attempt, { initial, max }, random = Math.random) {
  const ceiling = Math.min(max, initial * 2 ** Math.max(0, attempt - 1));
  return ceiling / 2 + random() * (ceiling / 2);
}
var SeenIds = class {
  constructor(size) {
    this.size = size;
    this.set = /* @__PURE__ */ new Set();
    this.order = [];
  }
  add(id) {
    if (this.set.has(id)) return false;
    this.set.add(id);
    this.order.push(id);
    if (this.order.length > this.size) this.set.delete(this.order.shift());
    return true;
  }
};

// src/sessions.js
var REOPEN = "reopen";
var RETRY_NOW = "retry-now";
var SILENT_HEARTBEATS = 2.5;
var POLL_GRACE_MS = 5e3;
var HANGING_MS = 1e3;
function revokedError(reason) {
  return new GatewayError(`access revoked${reason ? `: ${reason}` : ""}`, { fatal: true, code: 4003, status: 403 });
}
var WebSocketSession = class {
  constructor(wire, handlers) {
    this.wire = wire;
    this.h = handlers;
    this.expected = [];
    this.channels = /* @__PURE__ */ new Map();
    this.presence = /* @__PURE__ */ new Map();
    this.asked = /* @__PURE__ */ new Map();
    this.lastHeard = Date.now();
    this.pinged = false;
    this.watchdog = null;
  }
  start() {
    this.startedAt = Date.now();
    const ws = new WebSocket(endpoint(this.wire.baseUrl, "ws", { token: this.wire.token, user: this.wire.user }));
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.heard();
      this.watch();
      this.h.open();
      this.sync();
    };
    ws.onmessage = (ev) => {
      this.heard();
      this.frame(ev.data);
    };
    ws.onerror = () => {
    };
    ws.onclose = (ev) => this.finish(wsFailure(ev.code, ev.reason, opened));
  }
  heard() {
    this.lastHeard = Date.now();
    this.pinged = false;
  }
  // Every half heartbeat: ping after one heartbeat of silence, give up after 2.5.
  watch() {
    const beat = this.wire.heartbeatMs;
    this.watchdog = setInterval(() => this.check(beat), Math.max(100, beat / 2));
  }
  check(beat) {
    const silent = Date.now() - this.lastHeard;
    if (silent >= SILENT_HEARTBEATS * beat) this.abort(new GatewayError("websocket silent: the connection is dead"));
    else if (silent >= beat && !this.pinged) this.ping();
  }
  // Ask for an answer now (a tab shown again, the network changed): silence after it is death.
  ping() {
    if (!this.usable) return;
    this.pinged = true;
    this.send({ type: "ping" }, { kind: "ping" });
  }
  get usable() {
    return this.ws && this.ws.readyState === WebSocket.OPEN;
  }
  send(frame, expect) {
    this.expected.push(expect);
    this.ws.send(JSON.stringify(frame));
  }
  // Subscribe frames for channels the wire carries and this socket not, unsubscribe the others.
  sync() {
    if (!this.usable) return;
    for (const ch of this.wire.channels.values()) {
      const same = this.asked.get(ch.name) === ch && this.presence.get(ch.name) === ch.presence;
      if (this.channels.has(ch.name) && same) continue;
      if (this.channels.has(ch.name)) {
        this.channels.delete(ch.name);
        this.send({ type: "unsubscribe", channel: ch.name }, { kind: "unsubscribe", channel: ch.name });
      }
      this.channels.set(ch.name, "subscribing");
      this.presence.set(ch.name, ch.presence);
      this.asked.set(ch.name, ch);
      const frame = { type: "subscribe", channel: ch.name };
      if (ch.presence) frame.presence = true;
      if (ch.cursor !== null) frame.since = ch.cursor;
      else if (ch.last) frame.last = ch.last;
      this.send(frame, { kind: "subscribe", channel: ch.name, ch });
    }
    for (const name of [...this.channels.keys()]) {
      if (this.wire.channels.has(name)) continue;
      this.channels.delete(name);
      this.asked.delete(name);
      this.send({ type: "unsubscribe", channel: name }, { kind: "unsubscribe", channel: name });
    }
  }
  frame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (_) {
      return;
    }
    const { type, channel } = frame;
    if (type === "message") {
      if (!this.live(channel)) return;
      const { id, event, data } = frame;
      this.h.message(channel, { id, channel, event, data });
    } else if (type === "gap") {
      if (this.live(channel)) this.h.gap(channel);
    } else if (type === "join" || type === "leave") {
      if (this.live(channel)) this.h.presence(channel, { type, user: frame.user, info: frame.info });
    } else if (type === "revoked") {
      if (typeof channel !== "string") this.abort(revokedError(frame.reason));
      else if (this.live(channel)) this.h.refused(channel, revokedError(frame.reason));
    } else if (["subscribed", "unsubscribed", "ack", "error", "pong", "refreshed"].includes(type)) {
      this.answer(frame, this.expected.shift());
    }
  }
  // Subscribed on this socket, for the very WireChannel the wire carries now.
  live(channel) {
    return this.channels.get(channel) === "live" && this.wire.carries(this.asked.get(channel));
  }
  answer(frame, expect) {
    if (!expect) return;
    if (expect.kind === "publish") {
      if (frame.type === "ack") expect.resolve({ id: frame.id });
      else expect.reject(new GatewayError(frame.reason || "publish refused"));
    } else if (expect.kind === "refresh") {
      if (frame.type === "refreshed") expect.resolve(frame.exp);
      else expect.reject(new GatewayError(frame.reason || "refresh refused"));
    } else if (expect.kind === "subscribe" && this.channels.get(expect.channel) === "subscribing") {
      if (!this.wire.carries(expect.ch)) return;
      if (frame.type === "subscribed") {
        this.channels.set(expect.channel, "live");
        this.h.position(expect.channel, frame.cursor);
      } else {
        this.channels.delete(expect.channel);
        this.h.refused(expect.channel, new GatewayError(frame.reason || "subscribe refused", { fatal: true }));
      }
    }
  }
  publish(channel, data, event) {
    return new Promise((resolve, reject) => {
      const frame = { type: "publish", channel, data };
      if (event) frame.event = event;
      this.send(frame, { kind: "publish", resolve, reject });
    });
  }
  // A new token for the open socket: resolves with its `exp` once the gateway took it.
  refresh(token) {
    return new Promise((resolve, reject) => {
      if (!this.usable) return reject(new GatewayError("websocket not open"));
      this.send({ type: "refresh", token }, { kind: "refresh", resolve, reject });
    });
  }
  abort(err) {
    const ws = this.ws;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      const hanging = Date.now() - this.startedAt > HANGING_MS;
      if (ws.readyState === WebSocket.CONNECTING && !hanging) ws.onopen = () => ws.close(1e3);
      else ws.close(1e3);
    }
    this.finish(err);
  }
  finish(err) {
    clearInterval(this.watchdog);
    for (const expect of this.expected.splice(0)) {
      if (expect && (expect.kind === "publish" || expect.kind === "refresh")) {
        expect.reject(new GatewayError("connection lost before the gateway answered"));
      }
    }
    this.h.end(err);
  }
};
var FetchSession = class {
  constructor(wire, handlers) {
    this.wire = wire;
    this.h = handlers;
    this.control = new AbortController();
    this.asked = wire.request();
    this.ended = false;
    this.lastHeard = Date.now();
  }
  // Another channel list than the one asked: open again.
  sync() {
    if (this.wire.request().key !== this.asked.key) this.abort(REOPEN);
  }
  // Whether `channel` is still the very one this request asked for.
  mine(channel) {
    return this.wire.carries(this.asked.chans.get(channel));
  }
  abort(err) {
    if (this.ended) return;
    this.ended = true;
    this.control.abort();
    this.h.end(err);
  }
};
var SseSession = class extends FetchSession {
  start() {
    this.read().then(() => this.closing || new GatewayError("event stream ended"), (err) => err).then((err) => this.abort(err));
  }
  // Silent for 2.5 heartbeats: dead (a tab shown again checks at once).
  ping() {
    if (Date.now() - this.lastHeard >= SILENT_HEARTBEATS * this.wire.heartbeatMs) {
      this.abort(new GatewayError("event stream silent: the connection is dead"));
    }
  }
  async read() {
    const url = endpoint(this.wire.baseUrl, "sse", this.asked.query);
    const res = await fetch(url, {
      headers: { Accept: "text/event-stream", ...authHeaders(this.wire.token) },
      cache: "no-store",
      signal: this.control.signal
    });
    if (!res.ok) throw await httpError(res);
    const parser = new EventStreamParser((ev) => this.event(ev));
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let opened = false;
    for (; ; ) {
      const { value, done } = await this.withIdleLimit(reader.read());
      this.lastHeard = Date.now();
      if (done) return;
      if (!opened) {
        opened = true;
        this.h.open();
      }
      parser.push(decoder.decode(value, { stream: true }));
    }
  }
  withIdleLimit(read) {
    let timer;
    const idle = new Promise((_, reject) => {
      const limit = SILENT_HEARTBEATS * this.wire.heartbeatMs;
      timer = setTimeout(() => reject(new GatewayError("event stream silent: the connection is dead")), limit);
    });
    return Promise.race([read, idle]).finally(() => clearTimeout(timer));
  }
  event(ev) {
    if (ev.event === "expired") {
      this.closing = new GatewayError(`token expired${ev.data ? `: ${ev.data}` : ""}`, { fatal: true, status: 401, expired: true });
      return;
    }
    let body;
    try {
      body = JSON.parse(ev.data);
    } catch (_) {
      body = null;
    }
    if (ev.event === "revoked") {
      const channel = body && typeof body.channel === "string" ? body.channel : null;
      const reason = body && typeof body === "object" ? body.reason : ev.data;
      if (channel === null) this.closing = revokedError(reason);
      else if (this.mine(channel)) this.h.refused(channel, revokedError(reason));
      return;
    }
    if (!body) return;
    if (ev.event === "subscribed") {
      for (const [channel, cursor] of Object.entries(body.cursors || {})) {
        if (this.mine(channel)) this.h.position(channel, cursor);
      }
      this.wire.schedule();
    } else if (!this.mine(body.channel)) {
    } else if (ev.event === "gap") {
      this.h.gap(body.channel);
    } else if (ev.event === "join" || ev.event === "leave") {
      this.h.presence(body.channel, { type: ev.event, user: body.user, info: body.info });
    } else if (ev.event === "message") {
      const { id, channel, event, data } = body;
      this.h.message(channel, { id, channel, event, data });
    }
  }
};
var PollSession = class extends FetchSession {
  start() {
    this.loop().then(() => this.abort(REOPEN), (err) => this.abort(err));
  }
  ping() {
  }
  // a poll is answered by its deadline, or is dead then
  async loop() {
    let timeout = 0;
    for (; ; ) {
      const answer = await this.get(timeout);
      if (timeout === 0) this.h.open();
      this.take(answer);
      this.asked = this.wire.request();
      if (this.asked.names.length === 0) return;
      timeout = this.wire.pollTimeoutS;
    }
  }
  take(answer) {
    for (const channel of answer.gaps || []) if (this.mine(channel)) this.h.gap(channel);
    for (const msg of answer.messages || []) if (this.mine(msg.channel)) this.h.message(msg.channel, msg);
    for (const [channel, cursor] of Object.entries(answer.cursors || {})) {
      if (this.mine(channel)) this.h.position(channel, cursor);
    }
  }
  get(timeout) {
    const url = endpoint(this.wire.baseUrl, "poll", { ...this.asked.query, timeout });
    return getJson(url, this.wire.token, timeout * 1e3 + POLL_GRACE_MS, this.control.signal);
  }
};
var SESSIONS = { websocket: WebSocketSession, sse: SseSession, poll: PollSession };

// src/token.js
var REFRESH_LEAD_MIN_MS = 1e3;
var REFRESH_LEAD_MAX_MS = 3e4;
var REFRESH_LEAD_SHARE = 0.2;
var REFRESH_MIN_DELAY_MS = 500;
function base64UrlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - b64.length % 4) % 4);
  if (typeof atob === "function") {
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }
  return Buffer.from(padded, "base64").toString("utf8");
}
function tokenClaims(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch (_) {
    return null;
  }
}
function refreshDelay(claims, now = Date.now()) {
  if (!claims || typeof claims.exp !== "number") return null;
  const left = typeof claims.iat === "number" ? (claims.exp - claims.iat) * 1e3 : claims.exp * 1e3 - now;
  const lead = Math.min(REFRESH_LEAD_MAX_MS, Math.max(REFRESH_LEAD_MIN_MS, left * REFRESH_LEAD_SHARE));
  return Math.max(REFRESH_MIN_DELAY_MS, left - lead);
}
function tokenScope(token) {
  const claims = tokenClaims(token);
  if (!claims) return `opaque:${token}`;
  return JSON.stringify([claims.sub || "", claims.sub_channels || [], claims.pub_channels || []]);
}
function checkToken(token) {
  const ok = token === void 0 || token === null || typeof token === "string" || typeof token === "function";
  if (!ok) throw new TypeError("token must be a string or a function returning one (or a promise of one)");
}
async function resolveToken(token) {
  if (typeof token !== "function") return token || void 0;
  let got;
  try {
    got = await token();
  } catch (err) {
    throw new GatewayError(`the token function failed: ${err && err.message}`);
  }
  if (got === void 0 || got === null || got === "") return void 0;
  if (typeof got !== "string") {
    throw new GatewayError(`the token function gave ${typeof got}, not a string`, { fatal: true });
  }
  return got;
}

// src/wire.js
var DEFAULTS = Object.freeze({
  connectTimeout: 5e3,
  // ms
  backoff: Object.freeze({ initial: 250, max: 3e3 }),
  // ms
  heartbeat: 15,
  // s: the gateway's GATEWAY_HEARTBEAT
  pollTimeout: 25
  // s: how long a poll waits for a message
});
var STABLE_MS = 5e3;
var PROBE_EVERY_MS = 1e3;
var PROBE_TIMEOUT_MS = 1500;
var PING_ANSWER_MS = 3e3;
var RENEWED_RECENTLY_MS = 1e3;
var AUTH_RETRIES = 2;
var wireChannels = 0;
var WireChannel = class {
  constructor(name, since, last) {
    this.name = name;
    this.serial = ++wireChannels;
    this.cursor = since;
    this.last = last;
    this.known = since !== null;
    this.listeners = /* @__PURE__ */ new Set();
    this.seen = new SeenIds(256);
    this.presence = false;
  }
};
async function reachable(baseUrl, timeoutMs) {
  const control = new AbortController();
  const timer = setTimeout(() => control.abort(), timeoutMs);
  try {
    await fetch(endpoint(baseUrl, "healthz"), { mode: "no-cors", cache: "no-store", signal: control.signal });
    return true;
  } catch (_) {
    return false;
  } finally {
    clearTimeout(timer);
  }
}
var Wire = class {
  constructor(holder, key, opts) {
    this.holder = holder;
    this.key = key;
    this.baseUrl = opts.baseUrl;
    this.user = opts.user;
    this.transports = opts.transports;
    this.connectTimeout = opts.connectTimeout || DEFAULTS.connectTimeout;
    this.backoff = { ...DEFAULTS.backoff, ...opts.backoff || {} };
    this.heartbeatMs = (opts.heartbeat || DEFAULTS.heartbeat) * 1e3;
    this.pollTimeoutS = opts.pollTimeout ?? DEFAULTS.pollTimeout;
    this.tokenFn = !!opts.tokenFn;
    this.authFailures = 0;
    this.refreshTimer = null;
    this.renewedAt = Date.now();
    this.setToken(opts.token);
    this.channels = /* @__PURE__ */ new Map();
    this.current = null;
    this.opened = false;
    this.transport = null;
    this.status = "connecting";
    this.closed = false;
    this.wake = {};
    this.scheduled = false;
    this.probing = false;
    this.down = false;
    later(() => this.run());
  }
  // The query of a several-channel request. `?last=N` applies to every channel named
  // without a cursor, so one request carries one kind of those; the others join next time.
  request() {
    const chans = /* @__PURE__ */ new Map();
    let kind;
    const specs = [];
    let last;
    let presence2;
    for (const ch of this.channels.values()) {
      if (ch.presence) presence2 = 1;
      if (ch.cursor !== null) {
        specs.push(`${ch.name}@${ch.cursor}`);
      } else {
        const mine = ch.last ? `last=${ch.last}` : "new";
        if (kind === void 0) kind = mine;
        if (mine !== kind) continue;
        specs.push(ch.name);
        last = ch.last || void 0;
      }
      chans.set(ch.name, ch);
    }
    const query = { channel: specs, last, user: this.user, presence: presence2 };
    const key = [...chans.values()].map((ch) => `${ch.name}#${ch.serial}`).join("\n");
    return { names: [...chans.keys()], chans, query, key: key + (presence2 ? "\n+presence" : "") };
  }
  // Whether `ch` (a WireChannel some request or frame was for) is still the one carried.
  carries(ch) {
    return ch !== void 0 && this.channels.get(ch.name) === ch;
  }
  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    later(() => {
      this.scheduled = false;
      if (this.current && this.current.sync) this.current.sync();
    });
  }
  close() {
    this.closed = true;
    clearTimeout(this.refreshTimer);
    if (this.current) this.current.abort(new GatewayError("closed"));
    if (this.wake.resolve) this.wake.resolve();
  }
  setStatus(status, transport) {
    this.status = status;
    this.transport = transport;
    this.holder.keyEvent(this, { op: "state", status, transport });
  }
  async run() {
    let attempt = 0;
    let first = true;
    while (!this.closed) {
      this.setStatus("connecting", null);
      if (!first) this.probe();
      first = false;
      if (this.tokenFn && Date.now() - this.renewedAt > RENEWED_RECENTLY_MS) await this.renewToken();
      let lived = -1;
      let now = false;
      for (let i = 0; i < this.transports.length && !this.closed; i++) {
        const name = this.transports[i];
        let outcome = await this.session(name);
        while (outcome.reopen && !this.closed) outcome = await this.session(name);
        if (this.closed) return;
        const error = outcome.error;
        if (outcome.connected) lived = outcome.lived;
        if (error === RETRY_NOW) {
          now = true;
          break;
        }
        if (error && error.expired && this.tokenFn && this.authFailures < AUTH_RETRIES) {
          this.authFailures += 1;
          this.renewedAt = 0;
          now = true;
          break;
        }
        if (error && (error.fatal || error.expired)) {
          this.refuseAll(error);
          i--;
          continue;
        }
        if (outcome.connected) break;
      }
      if (this.closed) return;
      if (now) continue;
      attempt = lived >= STABLE_MS ? 0 : attempt + 1;
      await sleep(backoffDelay(attempt, this.backoff), this.wake);
    }
  }
  // While not connected: ask /healthz about once a second. When the gateway
  // answers after it did not, connect again at once.
  probe() {
    if (this.probing) return;
    this.probing = true;
    const loop = async () => {
      while (!this.closed && !this.opened) {
        const began = Date.now();
        const ok = await reachable(this.baseUrl, PROBE_TIMEOUT_MS);
        if (this.closed || this.opened) break;
        if (!ok) this.down = true;
        else if (this.down) {
          this.down = false;
          this.retryNow();
        }
        const pause = PROBE_EVERY_MS * (0.75 + Math.random() / 2) - (Date.now() - began);
        if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause));
      }
      this.probing = false;
    };
    loop();
  }
  // Drop an attempt that may hang, or the backoff, and connect again now.
  retryNow() {
    if (this.closed) return;
    if (this.current && !this.opened) this.current.abort(RETRY_NOW);
    else if (!this.current && this.wake.resolve) this.wake.resolve();
  }
  // The browser came online, or a tab was shown again.
  nudge(kind) {
    if (this.closed) return;
    const conn = this.current;
    if (!conn || !this.opened) return this.retryNow();
    if (conn instanceof WebSocketSession) {
      const asked = Date.now();
      conn.ping();
      setTimeout(() => {
        if (this.current === conn && conn.lastHeard < asked) conn.abort(new GatewayError("websocket silent after a ping"));
      }, PING_ANSWER_MS);
    } else if (kind === "online") {
      conn.abort(RETRY_NOW);
    } else {
      conn.ping();
    }
  }
  // -- tokens ------------------------------------------------------------------
  setToken(token) {
    this.token = token;
    clearTimeout(this.refreshTimer);
    if (!this.tokenFn || this.closed) return;
    const delay = refreshDelay(tokenClaims(token));
    if (delay !== null) this.refreshTimer = setTimeout(() => this.refresh(), delay);
  }
  // Ask a page for a fresh token; keep the one held when none comes.
  async renewToken() {
    try {
      const token = await this.holder.askToken(this);
      this.renewedAt = Date.now();
      this.setToken(token);
    } catch (err) {
      this.holder.keyEvent(this, { op: "warn", message: `no fresh token: ${err.message}` });
    }
  }
  // Before the token expires: a fresh one, given to the open connection.
  async refresh() {
    if (this.closed) return;
    await this.renewToken();
    const conn = this.current;
    if (!conn || !this.opened) return;
    if (conn instanceof WebSocketSession) {
      try {
        await conn.refresh(this.token);
      } catch (_) {
        if (this.current === conn) conn.abort(RETRY_NOW);
      }
    } else {
      conn.abort(RETRY_NOW);
    }
  }
  // -- sessions ----------------------------------------------------------------
  // A refusal of a whole request: the channels it names, or all of them.
  refuseAll(error) {
    const named = [...this.channels.keys()].filter((name) => error.message.includes(`'${name}'`));
    for (const name of named.length ? named : [...this.channels.keys()]) this.refused(name, error);
  }
  // One connection on one transport; resolves once it has ended.
  session(name) {
    return new Promise((resolve) => {
      let connectedAt = 0;
      let settled = false;
      let timer = null;
      const handlers = {
        open: () => {
          if (settled) return;
          clearTimeout(timer);
          connectedAt = Date.now();
          this.opened = true;
          this.authFailures = 0;
          this.down = false;
          this.setStatus("open", name);
        },
        message: (channel, msg) => !settled && this.message(channel, msg, name),
        gap: (channel) => !settled && this.gap(channel),
        presence: (channel, ev) => !settled && this.presence(channel, ev),
        position: (channel, cursor) => !settled && this.position(channel, cursor),
        refused: (channel, err) => !settled && this.refused(channel, err),
        end: (error) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          this.current = null;
          this.opened = false;
          const connected = connectedAt > 0;
          resolve({ connected, reopen: error === REOPEN, lived: connected ? Date.now() - connectedAt : 0, error });
        }
      };
      if (this.channels.size === 0) {
        this.close();
        resolve({ connected: false });
        return;
      }
      const conn = new SESSIONS[name](this, handlers);
      this.current = conn;
      timer = setTimeout(() => conn.abort(new GatewayError(`${name}: no answer in time`)), this.connectTimeout);
      try {
        conn.start();
      } catch (err) {
        conn.abort(err);
      }
    });
  }
  message(channel, msg, transport) {
    const ch = this.channels.get(channel);
    if (!ch) return;
    if (msg.id) {
      if (!ch.seen.add(msg.id)) return;
      ch.cursor = msg.id;
    }
    this.holder.channelEvent(this, ch, { op: "msg", channel, msg, transport });
  }
  gap(channel) {
    const ch = this.channels.get(channel);
    if (!ch) return;
    ch.cursor = "0";
    this.holder.channelEvent(this, ch, { op: "gap", channel });
  }
  presence(channel, event) {
    const ch = this.channels.get(channel);
    if (ch) this.holder.channelEvent(this, ch, { op: "presence", channel, event });
  }
  position(channel, cursor) {
    const ch = this.channels.get(channel);
    if (!ch || cursor === void 0 || cursor === null) return;
    ch.cursor = String(cursor);
    ch.known = true;
    this.holder.channelEvent(this, ch, { op: "pos", channel, cursor: ch.cursor });
    this.holder.attachWaiting(this, ch);
  }
  refused(channel, error) {
    const ch = this.channels.get(channel);
    if (!ch) return;
    this.holder.channelEvent(this, ch, { op: "refused", channel, error: flat(error) });
    for (const listener of ch.listeners) this.holder.forget(listener);
    this.remove(channel);
  }
  add(ch) {
    this.channels.set(ch.name, ch);
    this.schedule();
  }
  remove(name) {
    this.channels.delete(name);
    if (this.channels.size === 0) {
      this.close();
      this.holder.wireClosed(this);
    } else {
      this.schedule();
    }
  }
  publish(channel, data, event) {
    const conn = this.current;
    if (!(conn instanceof WebSocketSession) || !conn.usable) return null;
    return conn.publish(channel, data, event);
  }
};

// src/holder.js
var TOKEN_WAIT_MS = 1e4;
var Holder = class {
  constructor(send) {
    this.send = send;
    this.wires = /* @__PURE__ */ new Map();
    this.listeners = /* @__PURE__ */ new Map();
    this.tokenWaits = /* @__PURE__ */ new Map();
    this.nextReq = 1;
  }
  handle(client, op) {
    if (op.op === "attach") this.attach(client, op);
    else if (op.op === "detach") this.detach(client, op.sub);
    else if (op.op === "publish") this.publish(client, op);
    else if (op.op === "token") this.tokenAnswer(op);
    else if (op.op === "nudge") this.nudge(op.kind);
    else if (op.op === "bye") this.dropClient(client);
  }
  attach(client, op) {
    const id = `${client}/${op.sub}`;
    if (this.listeners.has(id)) this.detach(client, op.sub);
    let wire = this.wires.get(op.key);
    if (!wire) {
      wire = new Wire(this, op.key, op.opts);
      this.wires.set(op.key, wire);
    }
    const since = op.since === void 0 || op.since === null ? null : String(op.since);
    let ch = wire.channels.get(op.channel);
    const listener = {
      id,
      client,
      sub: op.sub,
      key: op.key,
      channel: op.channel,
      waiting: false,
      tokenFn: !!op.opts.tokenFn
    };
    this.listeners.set(id, listener);
    this.send([client], { op: "state", key: op.key, status: wire.status, transport: wire.transport });
    if (!ch) {
      ch = new WireChannel(op.channel, since, since === null ? op.last : void 0);
      ch.presence = !!op.presence;
      ch.listeners.add(listener);
      wire.add(ch);
      this.send([client], { op: "at", sub: op.sub, cursor: since, fresh: true });
      return;
    }
    ch.listeners.add(listener);
    if (op.presence && !ch.presence) {
      ch.presence = true;
      wire.schedule();
    }
    const sameStart = !ch.known && ch.cursor === since && (since !== null || ch.last === op.last);
    if (sameStart) {
      this.send([client], { op: "at", sub: op.sub, cursor: since, fresh: true });
    } else if (ch.known) {
      this.send([client], { op: "at", sub: op.sub, cursor: ch.cursor, fresh: false });
    } else {
      listener.waiting = true;
    }
  }
  attachWaiting(wire, ch) {
    for (const listener of ch.listeners) {
      if (!listener.waiting) continue;
      listener.waiting = false;
      this.send([listener.client], { op: "at", sub: listener.sub, cursor: ch.cursor, fresh: false });
    }
  }
  forget(listener) {
    this.listeners.delete(listener.id);
  }
  detach(client, sub) {
    const id = `${client}/${sub}`;
    const listener = this.listeners.get(id);
    if (!listener) return;
    this.listeners.delete(id);
    const wire = this.wires.get(listener.key);
    const ch = wire && wire.channels.get(listener.channel);
    if (!ch) return;
    ch.listeners.delete(listener);
    if (ch.listeners.size === 0) wire.remove(ch.name);
  }
  dropClient(client) {
    for (const listener of [...this.listeners.values()]) {
      if (listener.client === client) this.detach(client, listener.sub);
    }
  }
  async publish(client, op) {
    const wire = this.wires.get(op.key);
    const sent = wire && wire.publish(op.channel, op.data, op.event);
    if (!sent) {
      this.send([client], { op: "unpublished", req: op.req, http: true });
      return;
    }
    try {
      const { id } = await sent;
      this.send([client], { op: "published", req: op.req, id });
    } catch (err) {
      this.send([client], { op: "unpublished", req: op.req, error: flat(err) });
    }
  }
  // A fresh token for `wire`, from a page whose subscription has a token function.
  askToken(wire) {
    const askers = [...this.listeners.values()].filter((l) => l.key === wire.key && l.tokenFn);
    if (askers.length === 0) return Promise.resolve(wire.token);
    const req = this.nextReq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.tokenWaits.delete(req);
        reject(new GatewayError("the token function gave no token in time"));
      }, TOKEN_WAIT_MS);
      const done = (fn) => (value) => {
        clearTimeout(timer);
        this.tokenWaits.delete(req);
        fn(value);
      };
      this.tokenWaits.set(req, { resolve: done(resolve), reject: done(reject) });
      this.send([askers[0].client], { op: "token?", key: wire.key, req });
    });
  }
  tokenAnswer(op) {
    const waiter = this.tokenWaits.get(op.req);
    if (!waiter) return;
    if (op.error) waiter.reject(unflat(op.error));
    else waiter.resolve(op.token);
  }
  nudge(kind) {
    for (const wire of this.wires.values()) wire.nudge(kind);
  }
  clientsOf(listeners) {
    return [...new Set([...listeners].map((l) => l.client))];
  }
  channelEvent(wire, ch, op) {
    this.send(this.clientsOf(ch.listeners), { ...op, key: wire.key });
  }
  keyEvent(wire, op) {
    const listeners = [...wire.channels.values()].flatMap((ch) => [...ch.listeners]);
    this.send(this.clientsOf(listeners), { ...op, key: wire.key });
  }
  wireClosed(wire) {
    if (this.wires.get(wire.key) === wire) this.wires.delete(wire.key);
  }
  connections() {
    return [...this.wires.values()].map((w) => ({
      baseUrl: w.baseUrl,
      transport: w.transport,
      status: w.status,
      channels: w.channels.size
    }));
  }
  close() {
    for (const wire of this.wires.values()) wire.close();
    this.wires.clear();
    this.listeners.clear();
  }
};

// src/links.js
var LOCK_PREFIX = "gateway.js";
var WORKER_PROTOCOL = 2;
var WORKER_HELLO_MS = 1e4;
var WORKER_RETRY_MS = 1e3;
var WORKER_RETRIES = 6;
function pageHolderLink(client) {
  const holder = new Holder((ids, op) => {
    if (ids.includes(client.id)) queueMicrotask(() => client.receive(op));
  });
  return {
    holder,
    where: "page",
    post(ops) {
      queueMicrotask(() => ops.forEach((op) => holder.handle(client.id, op)));
    },
    start() {
      client.onReady();
    }
  };
}
function whenGone(name, onGone) {
  navigator.locks.request(name, () => onGone());
}
function holdForever(name) {
  return new Promise((resolve) => {
    navigator.locks.request(name, () => {
      resolve();
      return new Promise(() => {
      });
    });
  });
}
function workerLink(client, url) {
  let port = null;
  let worker = null;
  let ready = false;
  let timer = null;
  let retries = -1;
  const link = {
    where: "worker",
    post(ops) {
      if (port) port.postMessage({ from: client.id, ops });
    },
    start() {
      const wait = retries < 0 ? WORKER_HELLO_MS : Math.min(WORKER_HELLO_MS, WORKER_RETRY_MS * 2 ** retries);
      timer = setTimeout(() => failed("no answer from the shared worker"), wait);
      try {
        worker = new SharedWorker(url, { name: LOCK_PREFIX });
      } catch (err) {
        failed(err.message);
        return;
      }
      worker.onerror = () => failed(`the shared worker ${url} failed to start`);
      port = worker.port;
      const mine = port;
      port.onmessage = (ev) => {
        if (port !== mine) return;
        const op = ev.data;
        if (op.op === "hello") {
          if (op.v !== WORKER_PROTOCOL) {
            retries = WORKER_RETRIES;
            failed(`the shared worker ${url} runs another version of the client`);
            return;
          }
          clearTimeout(timer);
          ready = true;
          retries = 0;
          whenGone(`${LOCK_PREFIX}/worker/${op.worker}`, () => {
            port = null;
            worker = null;
            ready = false;
            retries = 0;
            client.holderLost();
            link.start();
          });
          client.onReady();
        } else {
          client.receive(op);
        }
      };
      port.start();
      port.postMessage({ from: client.id, ops: [{ op: "hello", lock: client.lockName, v: WORKER_PROTOCOL }] });
    }
  };
  function failed(why) {
    if (ready) return;
    clearTimeout(timer);
    port = null;
    if (retries >= 0 && retries < WORKER_RETRIES) {
      retries += 1;
      link.start();
      return;
    }
    client.fallBack(why);
  }
  return link;
}
function leaderLink(client) {
  const channel = new BroadcastChannel(LOCK_PREFIX);
  let leader = null;
  let holder = null;
  const known = /* @__PURE__ */ new Set();
  const link = {
    where: "other tab",
    get holder() {
      return holder;
    },
    post(ops) {
      if (holder) queueMicrotask(() => ops.forEach((op) => holder.handle(client.id, op)));
      else if (leader) channel.postMessage({ to: leader, from: client.id, ops });
    },
    start() {
      channel.onmessage = (ev) => receive(ev.data);
      channel.postMessage({ to: "leader", from: client.id, ops: [{ op: "who" }] });
      navigator.locks.request(`${LOCK_PREFIX}/leader`, () => lead());
    }
  };
  function receive(msg) {
    if (holder && (msg.to === "leader" || msg.to === client.id)) {
      for (const op of msg.ops || []) {
        if (op.op === "who") announce();
        else {
          watch(msg.from);
          holder.handle(msg.from, op);
        }
      }
    } else if (msg.op === "hello") {
      if (msg.leader === leader) return;
      leader = msg.leader;
      client.holderLost();
      client.onReady();
    } else if (msg.ids ? msg.ids.includes(client.id) : msg.to === client.id) {
      client.receive(msg.op);
    }
  }
  function watch(other) {
    if (known.has(other)) return;
    known.add(other);
    whenGone(`${LOCK_PREFIX}/tab/${other}`, () => holder && holder.dropClient(other));
  }
  function announce() {
    channel.postMessage({ op: "hello", leader: client.id });
  }
  function lead() {
    holder = new Holder((ids, op) => {
      const others = ids.filter((id) => id !== client.id);
      if (others.length) channel.postMessage({ ids: others, op });
      if (ids.includes(client.id)) queueMicrotask(() => client.receive(op));
    });
    link.where = "this tab";
    leader = client.id;
    client.holderLost();
    client.onReady();
    announce();
    return new Promise(() => {
    });
  }
  return link;
}

// src/client.js
var ALL_TRANSPORTS = Object.freeze(["websocket", "sse", "poll"]);
var SHARE_MODES = ["auto", "worker", "leader", false];
var SEEN_IDS = 4096;
var CATCH_UP_LIMIT = 1e3;
var CATCH_UP_PAGES = 20;
var POLL_TIMEOUT_MAX_S = 29;
var scriptUrl = null;
function workerUrlFor(opts, baseUrl) {
  if (opts.workerUrl) return new URL(opts.workerUrl, here()).toString();
  if (scriptUrl) return scriptUrl;
  return new URL(`${baseUrl || ""}/static/gateway.js`, here()).toString();
}
function sameOrigin(url) {
  try {
    return new URL(url).origin === new URL(here()).origin;
  } catch (_) {
    return false;
  }
}
function positive(opts, name) {
  const value = opts[name];
  if (value !== void 0 && !(typeof value === "number" && value > 0 && Number.isFinite(value))) {
    throw new TypeError(`${name} must be a positive number`);
  }
}
function checkOptions(opts) {
  if (opts === null || typeof opts !== "object") throw new TypeError("options must be an object");
  const transports2 = opts.transports === void 0 ? ALL_TRANSPORTS : opts.transports;
  if (!Array.isArray(transports2)) throw new TypeError("transports must be an array");
  for (const name of transports2) {
    if (!SESSIONS[name]) throw new TypeError(`unknown transport ${JSON.stringify(name)}`);
  }
  if (transports2.length === 0) throw new TypeError("transports must name at least one");
  if (new Set(transports2).size !== transports2.length) throw new TypeError("transports names one twice");
  for (const name of ["onMessage", "onGap", "onTransport", "onPresence", "onStatus", "onError"]) {
    if (opts[name] !== void 0 && typeof opts[name] !== "function") throw new TypeError(`${name} must be a function`);
  }
  for (const name of ["baseUrl", "user", "workerUrl"]) {
    if (opts[name] !== void 0 && typeof opts[name] !== "string") throw new TypeError(`${name} must be a string`);
  }
  checkToken(opts.token);
  if (opts.last !== void 0 && !(Number.isInteger(opts.last) && opts.last > 0)) {
    throw new TypeError("last must be a positive integer");
  }
  if (opts.since !== void 0 && opts.since !== null && typeof opts.since !== "string") {
    throw new TypeError("since must be a message id (a string)");
  }
  positive(opts, "connectTimeout");
  positive(opts, "heartbeat");
  if (opts.pollTimeout !== void 0) {
    const t = opts.pollTimeout;
    if (!(typeof t === "number" && t >= 1 && t <= POLL_TIMEOUT_MAX_S)) {
      throw new TypeError(`pollTimeout must be a number of seconds from 1 to ${POLL_TIMEOUT_MAX_S}`);
    }
  }
  if (opts.backoff !== void 0) {
    if (opts.backoff === null || typeof opts.backoff !== "object") throw new TypeError("backoff must be {initial, max}");
    positive(opts.backoff, "initial");
    positive(opts.backoff, "max");
  }
  const share = opts.share === void 0 || opts.share === true ? "auto" : opts.share;
  if (!SHARE_MODES.includes(share)) throw new TypeError(`share must be one of ${SHARE_MODES.join(", ")}`);
  return { transports: transports2.slice(), share };
}
var Client = class {
  constructor(mode, workerUrl) {
    this.id = randomId();
    this.mode = mode;
    this.workerUrl = workerUrl;
    this.subs = /* @__PURE__ */ new Map();
    this.outbox = [];
    this.ready = false;
    this.requests = /* @__PURE__ */ new Map();
    this.states = /* @__PURE__ */ new Map();
    this.nextId = 1;
    this.lockName = `${LOCK_PREFIX}/tab/${this.id}`;
    this.link = this.makeLink(mode);
    this.watchNetwork();
  }
  makeLink(mode) {
    const locks = typeof navigator !== "undefined" && navigator.locks;
    let worker = mode === "worker" || mode === "auto";
    if (worker && typeof SharedWorker === "function" && locks && !sameOrigin(this.workerUrl)) {
      if (mode === "worker") {
        console.warn(`gateway.js: the shared worker script ${this.workerUrl} is not of this page's origin; sharing through a leader tab instead (serve the client's global build here and pass workerUrl)`);
      }
      worker = false;
    }
    if (worker && typeof SharedWorker === "function" && locks) {
      const link2 = workerLink(this, this.workerUrl);
      this.holdLock().then(() => link2.start());
      return link2;
    }
    if ((mode === "leader" || mode === "auto" || mode === "worker") && locks && typeof BroadcastChannel === "function") {
      const link2 = leaderLink(this);
      this.holdLock().then(() => link2.start());
      return link2;
    }
    const link = pageHolderLink(this);
    later(() => link.start());
    return link;
  }
  // The browser back online, or this tab shown again: the holder checks its connections now.
  watchNetwork() {
    if (typeof addEventListener !== "function") return;
    const nudge = (kind) => this.link.post([{ op: "nudge", kind }]);
    addEventListener("online", () => nudge("online"));
    if (typeof document !== "undefined" && document.addEventListener) {
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible") nudge("visible");
      });
    }
  }
  // This tab's lock, held for its whole life (others learn it left when it
  // is released). Asked once: a second request of a lock this tab holds
  // would wait forever, and a link that falls back would never start.
  holdLock() {
    if (!this.locked) this.locked = holdForever(this.lockName);
    return this.locked;
  }
  fallBack(why) {
    console.warn(`gateway.js: ${why}; sharing through a leader tab instead`);
    this.link = this.makeLink(this.mode === "worker" || this.mode === "auto" ? "leader" : false);
  }
  post(op) {
    if (!this.ready) return;
    this.outbox.push(op);
    if (this.outbox.length === 1) {
      queueMicrotask(() => {
        const ops = this.outbox.splice(0);
        this.link.post(ops);
      });
    }
  }
  onReady() {
    this.ready = true;
    for (const sub of this.subs.values()) sub.attach();
    if (typeof addEventListener === "function" && !this.byeArmed) {
      this.byeArmed = true;
      addEventListener("pagehide", () => this.link.post([{ op: "bye" }]));
    }
  }
  // The holder went away (or another took over): what it had not answered will not be.
  holderLost() {
    this.ready = false;
    this.outbox = [];
    this.states.clear();
    for (const [req, waiter] of this.requests) {
      this.requests.delete(req);
      waiter.reject(new GatewayError("connection lost before the publish was acknowledged"));
    }
    for (const sub of this.subs.values()) sub.detached();
  }
  add(sub) {
    sub.id = this.nextId++;
    this.subs.set(sub.id, sub);
    if (this.ready) sub.attach();
  }
  remove(sub) {
    this.subs.delete(sub.id);
    this.post({ op: "detach", sub: sub.id });
  }
  receive(op) {
    if (op.op === "at") {
      const sub = this.subs.get(op.sub);
      if (sub) sub.attached(op.cursor, op.fresh);
    } else if (op.op === "published" || op.op === "unpublished") {
      const waiter = this.requests.get(op.req);
      if (!waiter) return;
      this.requests.delete(op.req);
      if (op.op === "published") waiter.resolve({ id: op.id });
      else if (op.http) waiter.resolve(null);
      else waiter.reject(unflat(op.error));
    } else if (op.op === "state") {
      this.states.set(op.key, { status: op.status, transport: op.transport });
      for (const sub of this.subs.values()) if (sub.key === op.key) sub.state(op.status, op.transport);
    } else if (op.op === "token?") {
      this.giveToken(op);
    } else if (op.op === "warn") {
      console.warn(`gateway.js: ${op.message}`);
    } else {
      for (const sub of this.subs.values()) {
        if (sub.key === op.key && sub.channel === op.channel) sub.wire(op);
      }
    }
  }
  // The holder asks a fresh token of a subscription with a token function.
  giveToken(op) {
    const sub = [...this.subs.values()].find((s) => s.key === op.key && typeof s.opts.token === "function");
    const answer = sub ? resolveToken(sub.opts.token) : Promise.reject(new GatewayError("no token function here"));
    answer.then(
      (token) => this.post({ op: "token", req: op.req, token }),
      (err) => this.post({ op: "token", req: op.req, error: flat(err) })
    );
  }
  // Publish over the holder's open WebSocket for this gateway and token, if any; null: use HTTP.
  publishVia(baseUrl, scope, channel, data, event) {
    for (const [key, state] of this.states) {
      const [kb, kt] = JSON.parse(key);
      if (kb !== baseUrl || scope !== void 0 && scope !== (kt || void 0)) continue;
      if (state.status !== "open" || state.transport !== "websocket") continue;
      const req = this.nextId++;
      const answer = new Promise((resolve, reject) => this.requests.set(req, { resolve, reject }));
      this.post({ op: "publish", req, key, channel, data, event });
      return answer;
    }
    return null;
  }
  connections() {
    return [...this.states].filter(([key]) => [...this.subs.values()].some((s) => s.key === key)).map(([key, state]) => ({
      baseUrl: JSON.parse(key)[0],
      transport: state.transport,
      status: state.status,
      channels: [...this.subs.values()].filter((s) => s.key === key).map((s) => s.channel).filter((c, i, all) => all.indexOf(c) === i).length,
      holder: this.link.where
    }));
  }
};
var clients = /* @__PURE__ */ new Map();
function clientFor(share, workerUrl) {
  if (!clients.has(share)) clients.set(share, new Client(share, workerUrl));
  return clients.get(share);
}
function tokenKey(token, fromFunction) {
  if (!token) return "";
  return fromFunction ? `fn:${tokenScope(token)}` : token;
}
var Subscription = class {
  constructor(channel, options) {
    const opts = options || {};
    if (typeof channel !== "string") throw new TypeError(`a channel is a string, not ${typeof channel}`);
    const { transports: transports2, share } = checkOptions(opts);
    this.channel = channel;
    this.opts = opts;
    this.baseUrl = cleanBase(opts.baseUrl);
    this.transport = null;
    this.cursor = opts.since !== void 0 && opts.since !== null ? String(opts.since) : null;
    this.position = this.cursor;
    this.seen = new SeenIds(SEEN_IDS);
    this.mode = "detached";
    this.buffer = [];
    this.closed = false;
    this.lastTransport = null;
    this.client = clientFor(share, workerUrlFor(opts, this.baseUrl));
    this.wireOpts = {
      baseUrl: this.baseUrl,
      user: opts.user,
      transports: transports2,
      connectTimeout: opts.connectTimeout,
      backoff: opts.backoff,
      heartbeat: opts.heartbeat,
      pollTimeout: opts.pollTimeout,
      tokenFn: typeof opts.token === "function"
    };
    if (!CHANNEL_RE.test(String(channel))) {
      later(() => this.fail(new GatewayError(`HTTP 400: bad channel name ${JSON.stringify(channel)}`, { fatal: true, status: 400 })));
      return;
    }
    this.status("connecting");
    const start = (token) => {
      if (this.closed) return;
      this.token = token;
      this.wireOpts.token = token;
      const scope = tokenKey(token, this.wireOpts.tokenFn);
      this.key = JSON.stringify([this.baseUrl, scope, transports2.join(","), opts.user || ""]);
      this.client.add(this);
    };
    if (typeof opts.token === "function") resolveToken(opts.token).then(start, (err) => this.fail(err));
    else start(opts.token || void 0);
  }
  attach() {
    if (this.closed) return;
    this.mode = "attaching";
    this.buffer = [];
    const resumeAt = this.position;
    this.client.post({
      op: "attach",
      key: this.key,
      opts: this.wireOpts,
      sub: this.id,
      channel: this.channel,
      since: resumeAt,
      last: resumeAt === null ? this.opts.last : void 0,
      presence: typeof this.opts.onPresence === "function"
    });
  }
  detached() {
    this.mode = "detached";
    this.buffer = [];
  }
  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.id !== void 0) this.client.remove(this);
    this.transport = null;
    this.status("closed");
  }
  status(state) {
    call(this.opts.onStatus, state);
  }
  state(status, transport) {
    if (this.closed) return;
    this.transport = status === "open" ? transport : null;
    this.status(status);
    if (status === "open" && transport !== this.lastTransport) {
      this.lastTransport = transport;
      call(this.opts.onTransport, transport);
    }
  }
  // The holder carries our channel from `cursor` on (W). Fresh: the wire started where we asked.
  attached(cursor, fresh) {
    if (this.closed || this.mode !== "attaching") return;
    const asked = this.position;
    if (fresh || cursor === asked || asked === null && !this.opts.last || cursor === null) {
      if (this.position === null && cursor !== null) this.position = cursor;
      this.mode = "live";
      return;
    }
    this.mode = "catching";
    this.catchUp(asked, cursor).then((found) => this.caughtUp(found, cursor));
  }
  // History between where we are (or the last N before W) and W, read once over a single-channel poll.
  async catchUp(since, until) {
    if (since === null) return this.lastUpTo(until);
    const messages = [];
    let gap = false;
    let after = since;
    for (let page = 0; page < CATCH_UP_PAGES; page++) {
      let answer;
      try {
        answer = await this.history({ since: after });
      } catch (err) {
        return { messages: [], gap: true, error: err };
      }
      gap = gap || !!answer.gap;
      const upTo = answer.messages.findIndex((m) => m.id === until);
      if (upTo >= 0) return { messages: messages.concat(answer.messages.slice(0, upTo + 1)), gap };
      if (answer.messages.length < CATCH_UP_LIMIT) return { messages, gap };
      messages.push(...answer.messages);
      after = answer.cursor;
    }
    return { messages, gap };
  }
  // The last N messages up to W. "The last N", read now, also counts what was
  // published after the wire reached W (that comes live): while W has fewer
  // than N before it in the answer, ask for as many more as came after it.
  async lastUpTo(until) {
    const want = this.opts.last;
    let asked = want;
    let gap = false;
    for (let page = 0; page < CATCH_UP_PAGES; page++) {
      let answer;
      try {
        answer = await this.history({ last: asked });
      } catch (err) {
        return { messages: [], gap: true, error: err };
      }
      gap = gap || !!answer.gap;
      const got = answer.messages;
      const upTo = got.findIndex((m) => m.id === until);
      const whole = got.length < asked;
      const most = whole || asked >= CATCH_UP_LIMIT;
      if (upTo >= 0 && (upTo + 1 >= want || most)) {
        return { messages: got.slice(Math.max(0, upTo + 1 - want), upTo + 1), gap };
      }
      if (most) break;
      asked = Math.min(CATCH_UP_LIMIT, want + (upTo >= 0 ? got.length - upTo - 1 : got.length));
    }
    return { messages: [], gap };
  }
  async history(query) {
    const path = `poll/${encodeURIComponent(this.channel)}`;
    const url = endpoint(this.baseUrl, path, { ...query, timeout: 0, limit: CATCH_UP_LIMIT });
    const token = await resolveToken(this.opts.token);
    return getJson(url, token, (this.opts.connectTimeout || DEFAULTS.connectTimeout) * 2);
  }
  caughtUp(found, cursor) {
    if (this.closed || this.mode !== "catching") return;
    if (found.gap) this.gapped();
    for (const msg of found.messages) this.deliver(msg);
    if (this.position === null || this.position === void 0) this.position = cursor;
    else if (found.messages.length === 0 && !found.gap) this.position = cursor;
    const buffered = this.buffer.splice(0);
    this.mode = "live";
    for (const op of buffered) this.wire(op);
  }
  wire(op) {
    if (this.closed) return;
    if (op.op === "presence") {
      if (this.mode !== "detached") call(this.opts.onPresence, op.event);
      return;
    }
    if (this.mode === "catching") {
      if (op.op !== "refused") this.buffer.push(op);
      else this.fail(unflat(op.error));
      return;
    }
    if (op.op === "refused") return this.fail(unflat(op.error));
    if (this.mode !== "live") return;
    if (op.op === "msg") this.deliver(op.msg, op.transport);
    else if (op.op === "gap") this.gapped();
    else if (op.op === "pos") this.position = op.cursor;
  }
  deliver(msg, transport) {
    if (msg.id) {
      if (!this.seen.add(msg.id)) return;
      this.cursor = msg.id;
      this.position = msg.id;
    }
    call(this.opts.onMessage, msg, { transport: transport || this.transport || "poll" });
  }
  gapped() {
    this.position = "0";
    call(this.opts.onGap);
  }
  fail(error) {
    if (this.closed) return;
    this.closed = true;
    if (this.id !== void 0) this.client.remove(this);
    this.transport = null;
    this.status("closed");
    if (typeof this.opts.onError === "function") call(this.opts.onError, error);
    else report(error);
  }
};
function subscribe(channel, options) {
  return new Subscription(channel, options);
}
async function publish(channel, data, options) {
  const opts = options || {};
  checkToken(opts.token);
  const baseUrl = cleanBase(opts.baseUrl);
  const text = typeof data === "string" ? data : JSON.stringify(data);
  const token = await resolveToken(opts.token);
  const scope = opts.token === void 0 ? void 0 : tokenKey(token, typeof opts.token === "function");
  for (const client of clients.values()) {
    const sent = client.publishVia(baseUrl, scope, channel, text, opts.event);
    const answer = sent && await sent;
    if (answer) return answer;
  }
  const url = endpoint(baseUrl, `publish/${encodeURIComponent(channel)}`, { event: opts.event });
  const res = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "text/plain;charset=UTF-8", ...authHeaders(token) },
    body: text
  });
  if (res.status !== 201) throw await httpError(res);
  const body = await res.json();
  return { id: body.id };
}
async function presence(channel, options) {
  const opts = options || {};
  checkToken(opts.token);
  const url = endpoint(cleanBase(opts.baseUrl), `presence/${encodeURIComponent(channel)}`);
  const token = await resolveToken(opts.token);
  return getJson(url, token, opts.timeout || DEFAULTS.connectTimeout * 2);
}
function connections() {
  return [...clients.values()].flatMap((client) => client.connections());
}
function endSharedWorker() {
  for (const client of clients.values()) {
    if (client.link.where === "worker") client.link.post([{ op: "end-worker" }]);
  }
}

// src/index.js
var transports = ALL_TRANSPORTS.slice();
var Gateway = Object.freeze({
  subscribe,
  publish,
  presence,
  connections,
  GatewayError,
  transports: ALL_TRANSPORTS.slice(),
  _endSharedWorker: endSharedWorker
});
var index_default = Gateway;
