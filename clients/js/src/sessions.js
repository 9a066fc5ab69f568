// Sessions: one connection on one transport, carrying a wire's channels.
//
// handlers: open(), message(channel, msg), gap(channel), presence(channel, ev),
// position(channel, cursor), refused(channel, err), end(err). `end` is called
// exactly once.
//
// A session that goes silent is dead, whatever TCP says: a network that drops
// packets without a word (a blocked port, a suspended laptop, a NAT that
// forgot the flow) leaves a connection open on both ends for minutes. So each
// transport has a deadline for hearing from the gateway:
//   SSE        a comment every GATEWAY_HEARTBEAT s: silent for 2.5 heartbeats is dead;
//   WebSocket  the gateway pings at the protocol level, which a page cannot see,
//              so after a heartbeat of silence the client sends a frame of its own
//              (`{"type":"ping"}`: the gateway answers every frame, in order);
//              silent for 2.5 heartbeats is dead;
//   poll       a poll must be answered by its timeout plus a grace.
// The client's `heartbeat` option must match the gateway's GATEWAY_HEARTBEAT
// (default 15 s on both).

import { GatewayError, wsFailure } from "./errors.js";
import { EventStreamParser } from "./eventstream.js";
import { authHeaders, endpoint, getJson, httpError } from "./util.js";

export const REOPEN = "reopen"; // ended on purpose, to open again with another channel list
export const RETRY_NOW = "retry-now"; // ended on purpose, to connect again at once (a fresh token, the network back)

const SILENT_HEARTBEATS = 2.5;
const POLL_GRACE_MS = 5000; // a poll not answered by its timeout + this is dead
const HANGING_MS = 1000; // a WebSocket handshake this old is not on its way

function revokedError(reason) {
  return new GatewayError(`access revoked${reason ? `: ${reason}` : ""}`, { fatal: true, code: 4003, status: 403 });
}

export class WebSocketSession {
  constructor(wire, handlers) {
    this.wire = wire;
    this.h = handlers;
    this.expected = []; // one entry per frame sent: its answer comes in order
    this.channels = new Map(); // name -> "subscribing" | "live" (unsubscribed: absent)
    this.presence = new Map(); // name -> whether its subscribe frame asked presence events
    this.asked = new Map(); // name -> the WireChannel its subscribe frame was for
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
    ws.onerror = () => {}; // a close event always follows, with the code
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
    } else if (type === "revoked") {
      // One channel taken away (the socket goes on), or, without a channel, all of them.
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
      // Closing a socket still connecting makes Chromium log an error: close it once
      // open. Unless it hangs (a network gone silent): Chromium opens one WebSocket
      // per host at a time, so a handshake left hanging would hold back every later one.
      const hanging = Date.now() - this.startedAt > HANGING_MS;
      if (ws.readyState === WebSocket.CONNECTING && !hanging) ws.onopen = () => ws.close(1000);
      else ws.close(1000);
    }
    this.finish(err);
  }

  finish(err) {
    clearInterval(this.watchdog);
    // Whether an unanswered publish went through is unknown: say so, never resend.
    for (const expect of this.expected.splice(0)) {
      if (expect && (expect.kind === "publish" || expect.kind === "refresh")) {
        expect.reject(new GatewayError("connection lost before the gateway answered"));
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
}

export class SseSession extends FetchSession {
  start() {
    this.read()
      .then(() => this.closing || new GatewayError("event stream ended"), (err) => err)
      .then((err) => this.abort(err)); // also cancels the fetch after a silent stream
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
      signal: this.control.signal,
    });
    if (!res.ok) throw await httpError(res);
    const parser = new EventStreamParser((ev) => this.event(ev));
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let opened = false;
    for (;;) {
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
      // The token expired: the stream ends next. Reconnect with a fresh one.
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
      // Without a channel: the whole stream; with one, that channel only.
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

export class PollSession extends FetchSession {
  start() {
    this.loop().then(() => this.abort(REOPEN), (err) => this.abort(err));
  }

  ping() {} // a poll is answered by its deadline, or is dead then

  async loop() {
    // The first poll answers at once (timeout=0): that is "connected".
    let timeout = 0;
    for (;;) {
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
    return getJson(url, this.wire.token, timeout * 1000 + POLL_GRACE_MS, this.control.signal);
  }
}

export const SESSIONS = { websocket: WebSocketSession, sse: SseSession, poll: PollSession };
