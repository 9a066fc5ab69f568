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
 *     transports: ["websocket", "sse", "poll"],   // order and set
 *     since, last, token, baseUrl,
 *     // Extensions: onStatus("connecting" | "open" | "closed"), onError(err) when the
 *     // gateway refuses for good (bad channel, token), connectTimeout (ms),
 *     // backoff: {initial, max} (ms).
 *   });
 *   sub.transport; sub.cursor; sub.close();
 *   await Gateway.publish("chat:lobby", "hello", {event, token, baseUrl});  // -> {id}
 *
 * How it connects. Transports are tried in order; each gets `connectTimeout`
 * to say it is subscribed (WebSocket: open; SSE: the first bytes, the
 * gateway's `retry:` line; poll: a first answer to `timeout=0`). A refused
 * one (WebSocket handshake refused, 404 from a route turned off, a proxy in
 * the way) falls through to the next. After any drop, the client waits a
 * backoff (doubling, capped, with jitter so a restarted server is not hit
 * by every client at once), then starts again from the first transport and
 * resumes from its cursor (`since=`) on whichever now works. Messages are
 * also dropped by id (the last few thousand ids are remembered), so a
 * switch never shows one twice. A gap (the gateway's history lost some
 * messages after our cursor) is reported through onGap, never hidden.
 *
 * Why SSE is read with fetch and not EventSource: EventSource delivers a
 * named event only to a listener registered for that name, and messages may
 * carry any event name, so some would be lost; it cannot send an
 * Authorization header; and it reconnects on its own, hiding the HTTP status
 * (a 404 "transport turned off" looks like a network blip), which is exactly
 * what falling back needs to see. A fetch stream and a small WHATWG
 * event-stream parser give all of that; fetch streaming is in every browser
 * that has EventSource today.
 *
 * Why one file works both as a classic script and as an ES module: see the
 * last line.
 */
(function (root) {
  "use strict";

  const ALL_TRANSPORTS = ["websocket", "sse", "poll"];
  const CONNECT_TIMEOUT_MS = 5000;
  const BACKOFF_INITIAL_MS = 250;
  const BACKOFF_MAX_MS = 8000;
  const STABLE_MS = 5000; // a connection that lived this long resets the backoff
  const POLL_TIMEOUT_S = 25;
  const POLL_GRACE_MS = 15000; // a poll not answered by timeout + this is dead
  const SSE_IDLE_MS = 45000; // three missed heartbeats at the default 15 s
  const SEEN_IDS = 4096;

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

  function endpoint(baseUrl, kind, channel, query) {
    const base = root.location ? root.location.href : "http://localhost/";
    const url = new URL(`${baseUrl || ""}/${kind}/${encodeURIComponent(channel)}`, base);
    for (const [key, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    if (kind === "ws") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
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

  function sleep(ms, wake) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake.resolve = () => { clearTimeout(timer); resolve(); };
    });
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
      if (data.length === 0) return; // e.g. the opening "retry:" block
      this.onEvent({ event: event || "message", id, data: data.join("\n") });
    }
  }

  // -- transports: start(), abort(err); report through the handlers -------
  //
  // handlers: open(), message(msg), gap(), resumeAt(cursor), end(err).
  // `end` is called exactly once, whether the transport failed to connect,
  // dropped, or was aborted.

  // Open WebSockets by channel, so publish() can use one.
  const sockets = new Map();

  class WebSocketTransport {
    constructor(sub, handlers) {
      this.sub = sub;
      this.h = handlers;
      this.pending = [];
      this.key = `${sub.baseUrl}\n${sub.channel}`;
    }

    start() {
      const query = { ...this.sub.resumeQuery(), token: this.sub.token };
      const ws = new WebSocket(endpoint(this.sub.baseUrl, "ws", this.sub.channel, query));
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        if (!sockets.has(this.key)) sockets.set(this.key, new Set());
        sockets.get(this.key).add(this);
        this.h.open();
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

    frame(text) {
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (_) {
        return;
      }
      if (frame.type === "message") {
        const { id, channel, event, data } = frame;
        this.h.message({ id, channel, event, data });
      } else if (frame.type === "gap") {
        this.h.gap();
      } else if (frame.type === "ack" || frame.type === "error") {
        // The gateway answers publish frames one by one, in order.
        const waiter = this.pending.shift();
        if (!waiter) return;
        if (frame.type === "ack") waiter.resolve({ id: frame.id });
        else waiter.reject(new GatewayError(frame.reason || "publish refused"));
      }
    }

    publish(data, event) {
      return new Promise((resolve, reject) => {
        this.pending.push({ resolve, reject });
        this.ws.send(JSON.stringify(event ? { type: "publish", data, event } : { type: "publish", data }));
      });
    }

    get usable() {
      return this.ws && this.ws.readyState === WebSocket.OPEN;
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
      const mine = sockets.get(this.key);
      if (mine) {
        mine.delete(this);
        if (mine.size === 0) sockets.delete(this.key);
      }
      // Whether an unanswered publish went through is unknown: say so, never resend.
      for (const waiter of this.pending.splice(0)) {
        waiter.reject(new GatewayError("connection lost before the publish was acknowledged"));
      }
      this.h.end(err);
    }
  }

  // SSE and poll: fetch requests, all cancelled by one AbortController.
  class FetchTransport {
    constructor(sub, handlers) {
      this.sub = sub;
      this.h = handlers;
      this.control = new AbortController();
    }

    abort(err) {
      this.control.abort();
      this.h.end(err);
    }
  }

  class SseTransport extends FetchTransport {
    start() {
      this.read()
        .then(() => new GatewayError("event stream ended"), (err) => err)
        .then((err) => this.abort(err)); // also cancels the fetch after a silent stream
    }

    async read() {
      const url = endpoint(this.sub.baseUrl, "sse", this.sub.channel, this.sub.resumeQuery());
      const res = await fetch(url, {
        headers: { Accept: "text/event-stream", ...authHeaders(this.sub.token) },
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
      // The gateway's gap event carries no id; a user's message named "gap" has one.
      if (ev.event === "gap" && !ev.id) return this.h.gap();
      this.h.message({ id: ev.id, channel: this.sub.channel, event: ev.event, data: ev.data });
    }
  }

  class PollTransport extends FetchTransport {
    start() {
      this.loop().catch((err) => this.abort(err));
    }

    async loop() {
      // The first poll answers at once (timeout=0): that is "connected".
      let answer = await this.get({ ...this.sub.resumeQuery(), timeout: 0 });
      this.h.open();
      for (;;) {
        if (answer.gap) this.h.gap();
        for (const msg of answer.messages) this.h.message(msg);
        this.h.resumeAt(answer.cursor);
        answer = await this.get({ since: answer.cursor, timeout: POLL_TIMEOUT_S });
      }
    }

    async get(query) {
      const url = endpoint(this.sub.baseUrl, "poll", this.sub.channel, query);
      const timer = setTimeout(() => this.control.abort(), (query.timeout || 0) * 1000 + POLL_GRACE_MS);
      try {
        const res = await fetch(url, {
          headers: authHeaders(this.sub.token),
          cache: "no-store",
          signal: this.control.signal,
        });
        if (!res.ok) throw await httpError(res);
        return await res.json();
      } finally {
        clearTimeout(timer);
      }
    }

  }

  const TRANSPORTS = { websocket: WebSocketTransport, sse: SseTransport, poll: PollTransport };

  // -- one subscription: connect, fall back, resume, dedupe ----------------

  class Subscription {
    constructor(channel, options) {
      const opts = options || {};
      const transports = opts.transports || ALL_TRANSPORTS;
      for (const name of transports) {
        if (!TRANSPORTS[name]) throw new TypeError(`unknown transport ${JSON.stringify(name)}`);
      }
      if (transports.length === 0) throw new TypeError("transports must name at least one");
      this.channel = channel;
      this.opts = opts;
      this.transports = transports.slice();
      this.baseUrl = (opts.baseUrl || "").replace(/\/+$/, "");
      this.token = opts.token;
      this.connectTimeout = opts.connectTimeout || CONNECT_TIMEOUT_MS;
      this.backoff = { initial: BACKOFF_INITIAL_MS, max: BACKOFF_MAX_MS, ...(opts.backoff || {}) };
      this.transport = null;
      this.cursor = opts.since !== undefined && opts.since !== null ? String(opts.since) : null;
      this.resume = this.cursor; // where to resume: the cursor, or "0" after a gap
      this.seen = new Set();
      this.seenOrder = [];
      this.closed = false;
      this.current = null;
      this.wake = {};
      this.lastTransport = null;
      this.run();
    }

    resumeQuery() {
      if (this.resume !== null) return { since: this.resume };
      if (this.opts.last) return { last: this.opts.last };
      return {};
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      if (this.current) this.current.abort(new GatewayError("closed"));
      if (this.wake.resolve) this.wake.resolve();
      this.transport = null;
      this.status("closed");
    }

    status(state) {
      call(this.opts.onStatus, state);
    }

    // "Only new messages" from the moment of subscribing: learn where the
    // channel stands first (a poll with timeout=0), so that a drop before the
    // first message still resumes without loss. If poll is off, go on without.
    async learnCursor() {
      if (this.resume !== null || this.opts.last) return;
      const url = endpoint(this.baseUrl, "poll", this.channel, { timeout: 0 });
      const control = new AbortController();
      const timer = setTimeout(() => control.abort(), this.connectTimeout);
      try {
        const res = await fetch(url, { headers: authHeaders(this.token), cache: "no-store", signal: control.signal });
        if (res.ok) {
          const answer = await res.json();
          if (this.resume === null && answer.cursor) this.resume = answer.cursor;
        }
      } catch (_) {
        // unreachable or refused: the transports will say so
      } finally {
        clearTimeout(timer);
      }
    }

    async run() {
      let attempt = 0;
      await this.learnCursor();
      while (!this.closed) {
        this.status("connecting");
        let lived = -1;
        for (const name of this.transports) {
          if (this.closed) return;
          const outcome = await this.session(name);
          if (outcome.error && outcome.error.fatal && !this.closed) {
            this.fail(outcome.error);
            return;
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
            this.opened(name);
          },
          message: (msg) => !settled && this.deliver(msg, name),
          gap: () => !settled && this.gap(),
          resumeAt: (cursor) => {
            if (!settled && cursor) this.resume = cursor;
          },
          end: (error) => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            this.current = null;
            this.transport = null;
            const connected = connectedAt > 0;
            resolve({ connected, lived: connected ? Date.now() - connectedAt : 0, error });
          },
        };
        const conn = new TRANSPORTS[name](this, handlers);
        this.current = conn;
        timer = setTimeout(() => conn.abort(new GatewayError(`${name}: no answer in time`)), this.connectTimeout);
        try {
          conn.start();
        } catch (err) {
          conn.abort(err);
        }
      });
    }

    opened(name) {
      this.transport = name;
      this.status("open");
      if (name !== this.lastTransport) {
        this.lastTransport = name;
        call(this.opts.onTransport, name);
      }
    }

    deliver(msg, transport) {
      if (msg.id) {
        if (this.seen.has(msg.id)) return;
        this.seen.add(msg.id);
        this.seenOrder.push(msg.id);
        if (this.seenOrder.length > SEEN_IDS) this.seen.delete(this.seenOrder.shift());
        this.cursor = msg.id;
        this.resume = msg.id;
      }
      call(this.opts.onMessage, msg, { transport });
    }

    gap() {
      // What follows a gap is all the history that remains: from the start.
      this.resume = "0";
      call(this.opts.onGap);
    }

    fail(error) {
      this.closed = true;
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
    const baseUrl = (opts.baseUrl || "").replace(/\/+$/, "");
    const text = typeof data === "string" ? data : JSON.stringify(data);
    for (const conn of sockets.get(`${baseUrl}\n${channel}`) || []) {
      // A socket carries the rights of its own token: use it unless told another.
      if (conn.usable && (opts.token === undefined || opts.token === conn.sub.token)) {
        return conn.publish(text, opts.event);
      }
    }
    const url = endpoint(baseUrl, "publish", channel, { event: opts.event });
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "text/plain;charset=UTF-8", ...authHeaders(opts.token) },
      body: text,
    });
    if (res.status !== 201) throw await httpError(res);
    const body = await res.json();
    return { id: body.id };
  }

  root.Gateway = Object.freeze({ subscribe, publish, GatewayError, transports: ALL_TRANSPORTS.slice() });
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
typeof await /"/; export const { subscribe, publish, GatewayError } = globalThis.Gateway; export default globalThis.Gateway; //"
