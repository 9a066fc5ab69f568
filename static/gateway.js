/*
 * gateway.js: the browser client of the realtime gateway. No build step.
 *
 *   <script src="/static/gateway.js"></script>          -> window.Gateway
 *   import { subscribe, publish } from "/static/gateway.js";   (same functions)
 *
 *   const sub = Gateway.subscribe("chat:lobby", {
 *     onMessage(msg, meta) {},   // msg = {id, channel, event, data}; meta = {transport}
 *     onGap() {},                // history no longer holds all that was missed
 *     onTransport(name) {},      // "websocket" | "sse" | "poll", on every switch
 *     onPresence(ev) {},         // {type: "join" | "leave", user, info}: asks for presence events
 *     transports: ["websocket", "sse", "poll"],   // order and set
 *     since, last, token, baseUrl,
 *     user,                      // who you are on an open gateway (no GATEWAY_SECRET); else the token's sub
 *     // Extensions: onStatus("connecting" | "open" | "closed"), onError(err) when the
 *     // gateway refuses for good (bad channel, token), connectTimeout (ms),
 *     // backoff: {initial, max} (ms), share: "auto" | "worker" | "leader" | false.
 *   });
 *   sub.transport; sub.cursor; sub.close();
 *   await Gateway.publish("chat:lobby", "hello", {event, token, baseUrl});  // -> {id}
 *   Gateway.connections();      // what this page's subscriptions ride on
 *   await Gateway.presence("chat:lobby", {token, baseUrl});
 *     // -> {channel, users, connections, members: [{user, info, connections}]} (members null past the limit)
 *
 * Presence. A subscription with `onPresence` asks its channel's join and
 * leave events on the shared connection (WS subscribe frame `presence: true`,
 * SSE `?presence=1`); every page listening to the channel through that
 * connection gets them, whichever tab holds it. Events carry no id: after a
 * reconnect (`onStatus("open")`) ask `Gateway.presence` again. Long-poll
 * carries no events: a page on poll sees members through the snapshot. A
 * long-poll client is a member itself (by its token, or `user`).
 *
 * One connection per browser. Every subscribe() to the same gateway (baseUrl,
 * token and transports) joins one connection over the several-channel routes
 * (GET /sse?channel=…, GET /poll?channel=…, WS /ws with subscribe frames): a
 * browser has six HTTP/1.1 connections per origin for all its tabs, and one
 * SSE stream or pending poll per channel used them up. The connection is a
 * `Wire` inside a `Holder`; the holder lives where `share` says:
 *
 *   "worker"  a SharedWorker running this very file: every tab of the origin
 *             talks to it through a MessagePort;
 *   "leader"  one tab, elected with Web Locks (the lock's holder leads, the
 *             others queue for it), relays to the others over a BroadcastChannel;
 *   false     this page, alone.
 *   "auto"    (the default) the first of those the browser has.
 *
 * Each page keeps, per subscription, its own cursor and the ids it has
 * shown. When the holder goes away (the leading tab closed, the worker
 * died), the next one takes over and every subscription attaches to it
 * again from its own cursor: nothing lost, nothing shown twice. A
 * subscription that joins a channel some other one already carries starts
 * at the wire's position W; whatever it asked for before W (since=, last=)
 * it reads once with a single-channel poll (timeout=0), then goes live.
 *
 * How it connects. Transports are tried in order; each gets `connectTimeout`
 * to say it is subscribed (WebSocket: open; SSE: the first bytes; poll: a
 * first answer to `timeout=0`). A refused one (handshake refused, 404 from a
 * route turned off, a proxy in the way) falls through to the next. After any
 * drop, the wire waits a backoff (doubling, capped, with jitter), then starts
 * again from the first transport and resumes every channel from its own
 * cursor (`NAME@<id>`); composite cursors are never needed. Adding or
 * dropping a channel sends a subscribe/unsubscribe frame on an open
 * WebSocket, and re-opens the SSE stream or the next poll with the new list.
 *
 * Why SSE is read with fetch and not EventSource: EventSource cannot send an
 * Authorization header, and it reconnects on its own, hiding the HTTP status
 * (a 404 "transport turned off" looks like a network blip), which is exactly
 * what falling back needs to see.
 *
 * Why one file works both as a classic script and as an ES module: see the
 * last line. Loaded as a SharedWorker, it runs the holder (see the end).
 */
(function (root) {
  "use strict";

  const ALL_TRANSPORTS = ["websocket", "sse", "poll"];
  const SHARE_MODES = ["auto", "worker", "leader", false];
  const CHANNEL_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
  const CONNECT_TIMEOUT_MS = 5000;
  const BACKOFF_INITIAL_MS = 250;
  const BACKOFF_MAX_MS = 8000;
  const STABLE_MS = 5000; // a connection that lived this long resets the backoff
  const POLL_TIMEOUT_S = 25;
  const POLL_GRACE_MS = 15000; // a poll not answered by timeout + this is dead
  const SSE_IDLE_MS = 45000; // three missed heartbeats at the default 15 s
  const SEEN_IDS = 4096;
  const CATCH_UP_LIMIT = 1000;
  const CATCH_UP_PAGES = 20;
  const WORKER_HELLO_MS = 10000; // a shared worker starting on a busy machine takes seconds
  const WORKER_RETRY_MS = 1000; // after the worker went away: the first try to reach its successor
  const WORKER_RETRIES = 6; // (each waits twice as long as the one before, up to WORKER_HELLO_MS)
  const LOCK_PREFIX = "gateway.js";

  // Refusals that will not change by trying again or elsewhere.
  const FATAL_HTTP = new Set([400, 401, 403, 413]);
  const FATAL_WS = new Set([1008]);

  class GatewayError extends Error {
    constructor(message, { fatal = false, status, code } = {}) {
      super(message);
      this.name = "GatewayError";
      this.fatal = fatal;
      this.status = status;
      this.code = code;
    }
  }

  // Errors cross MessagePorts and BroadcastChannels as plain objects.
  function flat(err) {
    return { message: String(err && err.message), fatal: !!(err && err.fatal), status: err && err.status, code: err && err.code };
  }

  function unflat(obj) {
    return new GatewayError(obj.message, obj);
  }

  // -- helpers --------------------------------------------------------------

  function report(err) {
    // A throwing callback must not break the client; the page still sees it.
    if (typeof root.reportError === "function") root.reportError(err);
    else setTimeout(() => { throw err; });
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

  // `path` is "sse", "sse/<channel>", ...; `query` values may be arrays (repeated).
  function endpoint(baseUrl, path, query) {
    const base = root.location ? root.location.href : "http://localhost/";
    const url = new URL(`${baseUrl || ""}/${path}`, base);
    for (const [key, value] of Object.entries(query || {})) {
      for (const one of Array.isArray(value) ? value : [value]) {
        if (one !== undefined && one !== null) url.searchParams.append(key, String(one));
      }
    }
    if (path.startsWith("ws")) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }

  function authHeaders(token) {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  async function httpError(res) {
    let reason = `HTTP ${res.status}`;
    try {
      const body = await res.json();
      if (body && body.error) reason = `${reason}: ${body.error}`;
    } catch (_) {
      // not JSON: the status says enough
    }
    return new GatewayError(reason, { fatal: FATAL_HTTP.has(res.status), status: res.status });
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
      wake.resolve = () => { clearTimeout(timer); resolve(); };
    });
  }

  function later(fn) {
    setTimeout(fn, 0);
  }

  // Ids already shown, the last few thousand.
  class SeenIds {
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

  // -- the event-stream grammar (WHATWG), as much as the gateway uses ------

  class EventStreamParser {
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
        if (c === "\r" && i + 1 === buf.length) break; // maybe half of a CR LF
        this.line(buf.slice(start, i));
        if (c === "\r" && buf[i + 1] === "\n") i++;
        start = i + 1;
      }
      this.buffer = buf.slice(start);
    }

    line(line) {
      if (line === "") return this.dispatch();
      if (line[0] === ":") return; // a comment: the heartbeat
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id" && !value.includes("\0")) this.id = value;
      // "retry" is ignored: reconnecting is ours to pace.
    }

    dispatch() {
      const { event, id, data } = this;
      this.reset();
      if (data.length === 0) return; // e.g. the closing "retry:" block
      this.onEvent({ event: event || "message", id, data: data.join("\n") });
    }
  }

  // -- sessions: one connection on one transport, carrying a wire's channels --
  //
  // handlers: open(), message(channel, msg), gap(channel), position(channel,
  // cursor), refused(channel, err), end(err). `end` is called exactly once.

  const REOPEN = "reopen"; // a session ended on purpose, to open again with another channel list

  class WebSocketSession {
    constructor(wire, handlers) {
      this.wire = wire;
      this.h = handlers;
      this.expected = []; // one entry per frame sent: its answer comes in order
      this.channels = new Map(); // name -> "subscribing" | "live" (unsubscribed: absent)
      this.presence = new Map(); // name -> whether its subscribe frame asked presence events
      this.asked = new Map(); // name -> the WireChannel its subscribe frame was for
    }

    start() {
      const ws = new WebSocket(endpoint(this.wire.baseUrl, "ws", { token: this.wire.token, user: this.wire.user }));
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this.h.open();
        this.sync();
      };
      ws.onmessage = (ev) => this.frame(ev.data);
      ws.onerror = () => {}; // a close event always follows, with the code
      ws.onclose = (ev) => {
        const why = ev.reason ? `: ${ev.reason}` : "";
        // A handshake refused (a route turned off, a proxy) closes before opening: not fatal.
        const fatal = opened && FATAL_WS.has(ev.code);
        this.finish(new GatewayError(`websocket closed ${ev.code}${why}`, { fatal, code: ev.code }));
      };
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
          // Presence asked for a channel already carried, or the channel taken
          // again: subscribe it again, from its own cursor.
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
        if (!this.live(channel)) return; // an old subscription's tail
        const { id, event, data } = frame;
        this.h.message(channel, { id, channel, event, data });
      } else if (type === "gap") {
        if (this.live(channel)) this.h.gap(channel);
      } else if (type === "join" || type === "leave") {
        if (this.live(channel)) this.h.presence(channel, { type, user: frame.user, info: frame.info });
      } else if (["subscribed", "unsubscribed", "ack", "error"].includes(type)) {
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
      } else if (expect.kind === "subscribe" && this.channels.get(expect.channel) === "subscribing") {
        // Taken again since this frame: sync() subscribes the new one from its own cursor.
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

    abort(err) {
      const ws = this.ws;
      if (ws) {
        ws.onclose = null;
        ws.onmessage = null;
        // Closing a socket still connecting makes Chromium log an error: close it once open.
        if (ws.readyState === WebSocket.CONNECTING) ws.onopen = () => ws.close(1000);
        else ws.close(1000);
      }
      this.finish(err);
    }

    finish(err) {
      // Whether an unanswered publish went through is unknown: say so, never resend.
      for (const expect of this.expected.splice(0)) {
        if (expect && expect.kind === "publish") {
          expect.reject(new GatewayError("connection lost before the publish was acknowledged"));
        }
      }
      this.h.end(err);
    }
  }

  // SSE and poll: fetch requests for a fixed channel list, cancelled by one AbortController.
  class FetchSession {
    constructor(wire, handlers) {
      this.wire = wire;
      this.h = handlers;
      this.control = new AbortController();
      this.asked = wire.request(); // {names, query}
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
      this.control.abort();
      this.h.end(err);
    }
  }

  class SseSession extends FetchSession {
    start() {
      this.read()
        .then(() => new GatewayError("event stream ended"), (err) => err)
        .then((err) => this.abort(err)); // also cancels the fetch after a silent stream
    }

    async read() {
      const url = endpoint(this.wire.baseUrl, "sse", this.asked.query);
      const res = await fetch(url, {
        headers: { Accept: "text/event-stream", ...authHeaders(this.wire.token) },
        cache: "no-store",
        signal: this.control.signal,
      });
      if (!res.ok) throw await httpError(res);
      const parser = new EventStreamParser((ev) => this.event(ev));
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let opened = false;
      for (;;) {
        const { value, done } = await this.withIdleLimit(reader.read());
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
        timer = setTimeout(() => reject(new GatewayError("event stream silent")), SSE_IDLE_MS);
      });
      return Promise.race([read, idle]).finally(() => clearTimeout(timer));
    }

    event(ev) {
      let body;
      try {
        body = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (ev.event === "subscribed") {
        for (const [channel, cursor] of Object.entries(body.cursors || {})) {
          if (this.mine(channel)) this.h.position(channel, cursor);
        }
        this.wire.schedule(); // channels left out of this request (another `last`) may join now
      } else if (!this.mine(body.channel)) {
        // taken again since this request: the next one starts it from its own cursor
      } else if (ev.event === "gap") {
        this.h.gap(body.channel);
      } else if (ev.event === "join" || ev.event === "leave") {
        this.h.presence(body.channel, { type: ev.event, user: body.user, info: body.info });
      } else if (ev.event === "message") {
        const { id, channel, event, data } = body;
        this.h.message(channel, { id, channel, event, data });
      }
    }
  }

  class PollSession extends FetchSession {
    start() {
      this.loop().then(() => this.abort(REOPEN), (err) => this.abort(err));
    }

    async loop() {
      // The first poll answers at once (timeout=0): that is "connected".
      let timeout = 0;
      for (;;) {
        const answer = await this.get(timeout);
        if (timeout === 0) this.h.open();
        this.take(answer);
        this.asked = this.wire.request();
        if (this.asked.names.length === 0) return;
        timeout = POLL_TIMEOUT_S;
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
      return getJson(url, this.wire.token, timeout * 1000 + POLL_GRACE_MS, this.control.signal);
    }
  }

  const SESSIONS = { websocket: WebSocketSession, sse: SseSession, poll: PollSession };

  // -- the wire: one connection for every channel of one (baseUrl, token, transports) --

  // A channel dropped from a wire and taken again (a subscription closed and
  // opened anew in one tick, a tab attaching again as the same client) is
  // another WireChannel: the connection must start it again from its own
  // cursor, and nothing the old one's subscription brings may reach it.
  let wireChannels = 0;

  class WireChannel {
    constructor(name, since, last) {
      this.name = name;
      this.serial = ++wireChannels;
      this.cursor = since; // where to resume: the last id delivered, "0" after a gap; null: not known yet
      this.last = last; // asked with no cursor: the last N
      this.known = since !== null; // a position the gateway said (or the first listener gave)
      this.listeners = new Set();
      this.seen = new SeenIds(256);
      this.presence = false; // some listener asked for join/leave events
    }
  }

  class Wire {
    constructor(holder, key, opts) {
      this.holder = holder;
      this.key = key;
      this.baseUrl = opts.baseUrl;
      this.token = opts.token;
      this.user = opts.user;
      this.transports = opts.transports;
      this.connectTimeout = opts.connectTimeout || CONNECT_TIMEOUT_MS;
      this.backoff = { initial: BACKOFF_INITIAL_MS, max: BACKOFF_MAX_MS, ...(opts.backoff || {}) };
      this.channels = new Map();
      this.current = null;
      this.transport = null;
      this.status = "connecting";
      this.closed = false;
      this.wake = {};
      this.scheduled = false;
      later(() => this.run());
    }

    // The query of a several-channel request. `?last=N` applies to every channel named
    // without a cursor, so one request carries one kind of those; the others join next time.
    request() {
      const chans = new Map(); // name -> the WireChannel this request is for
      let kind;
      const specs = [];
      let last;
      let presence;
      for (const ch of this.channels.values()) {
        if (ch.presence) presence = 1;
        if (ch.cursor !== null) {
          specs.push(`${ch.name}@${ch.cursor}`);
        } else {
          const mine = ch.last ? `last=${ch.last}` : "new";
          if (kind === undefined) kind = mine;
          if (mine !== kind) continue;
          specs.push(ch.name);
          last = ch.last || undefined;
        }
        chans.set(ch.name, ch);
      }
      // Cursors move with every message: only another list of channels is another request.
      const query = { channel: specs, last, user: this.user, presence };
      const key = [...chans.values()].map((ch) => `${ch.name}#${ch.serial}`).join("\n");
      return { names: [...chans.keys()], chans, query, key: key + (presence ? "\n+presence" : "") };
    }

    // Whether `ch` (a WireChannel some request or frame was for) is still the one carried.
    carries(ch) {
      return ch !== undefined && this.channels.get(ch.name) === ch;
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
      while (!this.closed) {
        this.setStatus("connecting", null);
        let lived = -1;
        for (let i = 0; i < this.transports.length; i++) {
          const name = this.transports[i];
          let outcome = await this.session(name);
          while (outcome.reopen && !this.closed) outcome = await this.session(name);
          if (this.closed) return;
          if (outcome.error && outcome.error.fatal) {
            this.refuseAll(outcome.error); // drops at least one channel: the others try again
            if (this.closed) return;
            i--;
            continue;
          }
          if (outcome.connected) {
            lived = outcome.lived;
            break;
          }
        }
        if (this.closed) return;
        attempt = lived >= STABLE_MS ? 0 : attempt + 1;
        const ceiling = Math.min(this.backoff.max, this.backoff.initial * 2 ** Math.max(0, attempt - 1));
        await sleep(ceiling / 2 + Math.random() * (ceiling / 2), this.wake);
      }
    }

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
            const connected = connectedAt > 0;
            resolve({ connected, reopen: error === REOPEN, lived: connected ? Date.now() - connectedAt : 0, error });
          },
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
      ch.cursor = "0"; // what follows a gap is all the history that remains
      this.holder.channelEvent(this, ch, { op: "gap", channel });
    }

    presence(channel, event) {
      const ch = this.channels.get(channel);
      if (ch) this.holder.channelEvent(this, ch, { op: "presence", channel, event });
    }

    position(channel, cursor) {
      const ch = this.channels.get(channel);
      if (!ch || cursor === undefined || cursor === null) return;
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
  }

  // -- the holder: wires, and the pages (clients) listening to their channels --
  //
  // Ops from a client: attach {key, opts, sub, channel, since, last}, detach {sub},
  // publish {req, key, channel, data, event}, bye. Ops to clients: at {sub, cursor,
  // fresh}, msg / gap / pos / refused {key, channel, ...}, state {key, status,
  // transport}, published {req, id} / unpublished {req, error, http}.

  class Holder {
    constructor(send) {
      this.send = send; // send(clientIds, op): to those clients (one post per port or one broadcast)
      this.wires = new Map();
      this.listeners = new Map(); // `${client}/${sub}` -> listener
    }

    handle(client, op) {
      if (op.op === "attach") this.attach(client, op);
      else if (op.op === "detach") this.detach(client, op.sub);
      else if (op.op === "publish") this.publish(client, op);
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
      const since = op.since === undefined || op.since === null ? null : String(op.since);
      let ch = wire.channels.get(op.channel);
      const listener = { id, client, sub: op.sub, key: op.key, channel: op.channel, waiting: false };
      this.listeners.set(id, listener);
      this.send([client], { op: "state", key: op.key, status: wire.status, transport: wire.transport });
      if (!ch) {
        ch = new WireChannel(op.channel, since, since === null ? op.last : undefined);
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
        listener.waiting = true; // until the gateway says where the channel stands
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
        baseUrl: w.baseUrl, transport: w.transport, status: w.status, channels: w.channels.size,
      }));
    }

    close() {
      for (const wire of this.wires.values()) wire.close();
      this.wires.clear();
      this.listeners.clear();
    }
  }

  // -- where the holder lives: links from a page's client to it -------------
  //
  // A link: post(ops) sends a batch of ops to the holder; the client is told
  // `onReady()` when a (new) holder can take its subscriptions and
  // `receive(op)` for every op meant for it.

  function pageHolderLink(client) {
    const holder = new Holder((ids, op) => {
      if (ids.includes(client.id)) queueMicrotask(() => client.receive(op));
    });
    return {
      holder,
      where: "page",
      post(ops) { queueMicrotask(() => ops.forEach((op) => holder.handle(client.id, op))); },
      start() { client.onReady(); },
    };
  }

  // Tell `onGone` when the context holding lock `name` goes away (Web Locks release it then).
  function whenGone(name, onGone) {
    navigator.locks.request(name, () => onGone());
  }

  function holdForever(name) {
    return new Promise((resolve) => {
      navigator.locks.request(name, () => {
        resolve();
        return new Promise(() => {});
      });
    });
  }

  function workerLink(client, url) {
    let port = null;
    let worker = null;
    let ready = false;
    let timer = null;
    let retries = -1; // since the worker went away: -1, none went away yet
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
        worker.onerror = () => failed("the shared worker failed to start");
        port = worker.port;
        const mine = port;
        port.onmessage = (ev) => {
          if (port !== mine) return; // given up on (fallen back) or replaced
          const op = ev.data;
          if (op.op === "hello") {
            clearTimeout(timer);
            ready = true;
            retries = 0;
            whenGone(`${LOCK_PREFIX}/worker/${op.worker}`, () => {
              // The worker went away (it crashed, or was told to end): start another.
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
        port.postMessage({ from: client.id, ops: [{ op: "hello", lock: client.lockName }] });
      },
    };
    function failed(why) {
      if (ready) return;
      clearTimeout(timer);
      port = null;
      if (retries >= 0 && retries < WORKER_RETRIES) {
        // The worker went away, and a new SharedWorker() can still reach it
        // while Chromium tears it down (it then never answers): ask again,
        // rather than lead apart from the tabs that reached its successor
        // (two connections for one browser, seen in tests/test_browser_multi.py).
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
    let leader = null; // the leader's client id; ours when we lead
    let holder = null;
    const known = new Set(); // clients we watch, while leading
    const link = {
      where: "other tab",
      get holder() { return holder; },
      post(ops) {
        if (holder) queueMicrotask(() => ops.forEach((op) => holder.handle(client.id, op)));
        else if (leader) channel.postMessage({ to: leader, from: client.id, ops });
      },
      start() {
        channel.onmessage = (ev) => receive(ev.data);
        channel.postMessage({ to: "leader", from: client.id, ops: [{ op: "who" }] });
        navigator.locks.request(`${LOCK_PREFIX}/leader`, () => lead());
      },
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
      return new Promise(() => {}); // lead until this tab goes away
    }

    return link;
  }

  // -- a page's client: its subscriptions, their cursors, and the link -----

  class Client {
    constructor(mode) {
      this.id = randomId();
      this.mode = mode;
      this.subs = new Map();
      this.outbox = [];
      this.ready = false;
      this.requests = new Map(); // publish req -> {resolve, reject}
      this.states = new Map(); // key -> {status, transport}
      this.nextId = 1;
      this.lockName = `${LOCK_PREFIX}/tab/${this.id}`;
      this.link = this.makeLink(mode);
    }

    makeLink(mode) {
      const locks = typeof navigator !== "undefined" && navigator.locks;
      const worker = mode === "worker" || mode === "auto";
      if (worker && typeof SharedWorker === "function" && locks) {
        const link = workerLink(this, workerUrl());
        this.holdLock().then(() => link.start());
        return link;
      }
      if ((mode === "leader" || mode === "auto" || mode === "worker") && locks && typeof BroadcastChannel === "function") {
        const link = leaderLink(this);
        this.holdLock().then(() => link.start());
        return link;
      }
      const link = pageHolderLink(this);
      later(() => link.start());
      return link;
    }

    // This tab's lock, held for its whole life (others learn it left when it
    // is released). Asked once: a second request of a lock this tab holds
    // would wait forever, and a link that falls back would never start.
    holdLock() {
      if (!this.locked) this.locked = holdForever(this.lockName);
      return this.locked;
    }

    fallBack(why) {
      // The shared worker is not there: lead or follow among the tabs instead.
      console.warn(`gateway.js: ${why}; sharing through a leader tab instead`);
      this.link = this.makeLink(this.mode === "worker" || this.mode === "auto" ? "leader" : false);
    }

    post(op) {
      if (!this.ready) return; // onReady attaches everything anew
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
      } else {
        for (const sub of this.subs.values()) {
          if (sub.key === op.key && sub.channel === op.channel) sub.wire(op);
        }
      }
    }

    // Publish over the holder's open WebSocket for this gateway and token, if any; null: use HTTP.
    publishVia(baseUrl, token, channel, data, event) {
      for (const [key, state] of this.states) {
        const [kb, kt] = JSON.parse(key);
        if (kb !== baseUrl || (token !== undefined && token !== (kt || undefined))) continue;
        if (state.status !== "open" || state.transport !== "websocket") continue;
        const req = this.nextId++;
        const answer = new Promise((resolve, reject) => this.requests.set(req, { resolve, reject }));
        this.post({ op: "publish", req, key, channel, data, event });
        return answer;
      }
      return null;
    }

    connections() {
      return [...this.states].filter(([key]) => [...this.subs.values()].some((s) => s.key === key))
        .map(([key, state]) => ({
          baseUrl: JSON.parse(key)[0], transport: state.transport, status: state.status,
          channels: [...this.subs.values()].filter((s) => s.key === key).map((s) => s.channel)
            .filter((c, i, all) => all.indexOf(c) === i).length,
          holder: this.link.where,
        }));
    }
  }

  const clients = new Map(); // share mode -> Client

  function clientFor(share) {
    const mode = share === undefined || share === true ? "auto" : share;
    if (!SHARE_MODES.includes(mode)) throw new TypeError(`share must be one of ${SHARE_MODES.join(", ")}`);
    if (!clients.has(mode)) clients.set(mode, new Client(mode));
    return clients.get(mode);
  }

  // This file's own URL, for the SharedWorker: the same in every tab that loads it the same way.
  const SCRIPT_URL = root.document && root.document.currentScript ? root.document.currentScript.src : null;

  function workerUrl() {
    if (SCRIPT_URL) return SCRIPT_URL;
    const loaded = typeof performance !== "undefined" && performance.getEntriesByType
      ? performance.getEntriesByType("resource").find((e) => /\/gateway\.js(\?|$)/.test(e.name)) : null;
    return loaded ? loaded.name : new URL("/static/gateway.js", root.location.href).toString();
  }

  // -- one subscription: its cursor, its dedupe, its catch-up --------------

  class Subscription {
    constructor(channel, options) {
      const opts = options || {};
      const transports = opts.transports || ALL_TRANSPORTS;
      for (const name of transports) {
        if (!SESSIONS[name]) throw new TypeError(`unknown transport ${JSON.stringify(name)}`);
      }
      if (transports.length === 0) throw new TypeError("transports must name at least one");
      this.channel = channel;
      this.opts = opts;
      this.baseUrl = cleanBase(opts.baseUrl);
      this.token = opts.token;
      this.wireOpts = {
        baseUrl: this.baseUrl, token: this.token, user: opts.user, transports: transports.slice(),
        connectTimeout: opts.connectTimeout, backoff: opts.backoff,
      };
      this.key = JSON.stringify([this.baseUrl, this.token || "", transports.join(","), opts.user || ""]);
      this.transport = null;
      this.cursor = opts.since !== undefined && opts.since !== null ? String(opts.since) : null;
      this.position = this.cursor; // where to resume: the cursor, the wire's position, "0" after a gap
      this.seen = new SeenIds(SEEN_IDS);
      this.mode = "detached"; // "attaching" | "catching" | "live"
      this.buffer = [];
      this.closed = false;
      this.lastTransport = null;
      this.client = clientFor(opts.share);
      if (!CHANNEL_RE.test(String(channel))) {
        later(() => this.fail(new GatewayError(`HTTP 400: bad channel name ${JSON.stringify(channel)}`, { fatal: true, status: 400 })));
        return;
      }
      this.status("connecting");
      this.client.add(this);
    }

    attach() {
      if (this.closed) return;
      this.mode = "attaching";
      this.buffer = [];
      const resumeAt = this.position;
      this.client.post({
        op: "attach", key: this.key, opts: this.wireOpts, sub: this.id, channel: this.channel,
        since: resumeAt, last: resumeAt === null ? this.opts.last : undefined,
        presence: typeof this.opts.onPresence === "function",
      });
    }

    detached() {
      this.mode = "detached";
      this.buffer = [];
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      this.client.remove(this);
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
      if (fresh || cursor === asked || (asked === null && !this.opts.last) || cursor === null) {
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
        // W not among them: it lies further on.
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
        const whole = got.length < asked; // all the history there is (or all a poll may hold)
        const most = whole || asked >= CATCH_UP_LIMIT; // no more to ask for
        if (upTo >= 0 && (upTo + 1 >= want || most)) {
          return { messages: got.slice(Math.max(0, upTo + 1 - want), upTo + 1), gap };
        }
        if (most) break; // W is not in history
        asked = Math.min(CATCH_UP_LIMIT, want + (upTo >= 0 ? got.length - upTo - 1 : got.length));
      }
      return { messages: [], gap };
    }

    history(query) {
      const path = `poll/${encodeURIComponent(this.channel)}`;
      const url = endpoint(this.baseUrl, path, { ...query, timeout: 0, limit: CATCH_UP_LIMIT });
      return getJson(url, this.token, (this.opts.connectTimeout || CONNECT_TIMEOUT_MS) * 2);
    }

    caughtUp(found, cursor) {
      if (this.closed || this.mode !== "catching") return;
      if (found.gap) this.gapped();
      for (const msg of found.messages) this.deliver(msg);
      if (this.position === null || this.position === undefined) this.position = cursor;
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
      if (this.mode !== "live") return; // before `at`: the catch-up covers it
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
      if (this.id !== undefined) this.client.remove(this);
      this.transport = null;
      this.status("closed");
      if (typeof this.opts.onError === "function") call(this.opts.onError, error);
      else report(error);
    }
  }

  // -- the API --------------------------------------------------------------

  function subscribe(channel, options) {
    return new Subscription(channel, options);
  }

  async function publish(channel, data, options) {
    const opts = options || {};
    const baseUrl = cleanBase(opts.baseUrl);
    const text = typeof data === "string" ? data : JSON.stringify(data);
    for (const client of clients.values()) {
      // A socket carries the rights of its own token: use it unless told another.
      const sent = client.publishVia(baseUrl, opts.token, channel, text, opts.event);
      const answer = sent && (await sent);
      if (answer) return answer;
    }
    const url = endpoint(baseUrl, `publish/${encodeURIComponent(channel)}`, { event: opts.event });
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "text/plain;charset=UTF-8", ...authHeaders(opts.token) },
      body: text,
    });
    if (res.status !== 201) throw await httpError(res);
    const body = await res.json();
    return { id: body.id };
  }

  // Who is on a channel: GET /presence/{channel}.
  function presence(channel, options) {
    const opts = options || {};
    const url = endpoint(cleanBase(opts.baseUrl), `presence/${encodeURIComponent(channel)}`);
    return getJson(url, opts.token, opts.timeout || CONNECT_TIMEOUT_MS * 2);
  }

  // What this page's subscriptions ride on: one entry per connection.
  function connections() {
    return [...clients.values()].flatMap((client) => client.connections());
  }

  // -- loaded as a SharedWorker: hold the connections for every tab --------

  function serveAsWorker() {
    const workerId = randomId();
    const ports = new Map(); // client id -> port
    const holder = new Holder((ids, op) => {
      for (const id of ids) {
        const port = ports.get(id);
        if (port) port.postMessage(op);
      }
    });
    // A tab learns the worker went away when it is granted this lock: answer
    // hello only once the worker holds it. A tab that asked before the worker
    // held it was granted it at once, and took a live worker for gone (it then
    // attached again; seen in 1 of ~150 runs of the holder-goes-away test).
    const held = holdForever(`${LOCK_PREFIX}/worker/${workerId}`);
    root.onconnect = (ev) => {
      const port = ev.ports[0];
      port.onmessage = (msg) => {
        const { from, ops } = msg.data;
        for (const op of ops) {
          if (op.op === "hello") {
            ports.set(from, port);
            whenGone(op.lock, () => {
              holder.dropClient(from);
              ports.delete(from);
            });
            held.then(() => port.postMessage({ op: "hello", worker: workerId }));
          } else if (op.op === "end-worker") {
            // For tests: the worker goes away as if it had crashed. Its sockets are
            // closed first, as a crash closes them: after close() alone, Chromium was
            // seen keeping an ended worker's SSE stream open for over 20 s.
            ports.clear();
            for (const wire of holder.wires.values()) wire.close();
            root.close();
          } else {
            holder.handle(from, op);
          }
        }
      };
      port.start();
    };
  }

  const isSharedWorker = typeof root.SharedWorkerGlobalScope === "function" && root instanceof root.SharedWorkerGlobalScope;
  if (isSharedWorker) serveAsWorker();

  // For tests: end the shared worker this page uses, as if it had crashed.
  function endSharedWorker() {
    for (const client of clients.values()) {
      if (client.link.where === "worker") client.link.post([{ op: "end-worker" }]);
    }
  }

  root.Gateway = Object.freeze({
    subscribe, publish, presence, connections, GatewayError, transports: ALL_TRANSPORTS.slice(),
    _endSharedWorker: endSharedWorker,
  });
})(globalThis);

/*
 * The last line makes this file an ES module as well. In a module `await` is
 * a keyword, so `await /"/` awaits a regular expression literal (a no-op),
 * and the exports that follow are code; `//"` ends the line as a comment.
 * In a classic script `await` is a plain identifier, so the same characters
 * read `typeof await / "...string..."`: `typeof` of an undeclared name is
 * "undefined" (no ReferenceError), divided by a string, a harmless NaN, and
 * the exports are inside that string. Checked in Chromium by tests/test_browser.py.
 */
typeof await /"/; export const { subscribe, publish, presence, connections, GatewayError } = globalThis.Gateway; export default globalThis.Gateway; //"