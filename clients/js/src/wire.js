// The wire: one connection for every channel of one (baseUrl, token, transports).
//
// Transports are tried in order; each gets `connectTimeout` to say it is
// subscribed (WebSocket: open; SSE: the first bytes; poll: a first answer to
// `timeout=0`). A refused one (handshake refused, 404 from a route turned off,
// a proxy in the way) falls through to the next. After any drop, the wire
// waits a backoff (doubling, capped low, with jitter), then starts again from
// the first transport and resumes every channel from its own cursor
// (`NAME@<id>`).
//
// Live again soon after the network returns. A network that drops packets
// without a word leaves connection attempts hanging until `connectTimeout`;
// so while it is not connected, the wire asks `/healthz` about once a second
// (no-cors: any answer will do). When the gateway answers again after it did
// not, the attempt that hangs is dropped and a new one starts at once. The
// browser's `online` event and a tab shown again do the same, and check an
// open connection at once (a WebSocket is pinged, SSE and poll reconnect on
// `online`).
//
// Tokens. With a token function, a page is asked for a fresh token before
// each connect, a little before the current one expires, and after the
// gateway said it expired. An open WebSocket takes the new token in place
// (`{"type":"refresh","token"}`, answered `refreshed`); SSE and poll connect
// again with it, from their cursors: nothing lost, nothing shown twice.

import { GatewayError, flat } from "./errors.js";
import { REOPEN, RETRY_NOW, SESSIONS, WebSocketSession } from "./sessions.js";
import { refreshDelay, tokenClaims } from "./token.js";
import { SeenIds, backoffDelay, endpoint, later, sleep } from "./util.js";

export const DEFAULTS = Object.freeze({
  connectTimeout: 5000, // ms
  backoff: Object.freeze({ initial: 250, max: 3000 }), // ms
  heartbeat: 15, // s: the gateway's GATEWAY_HEARTBEAT
  pollTimeout: 25, // s: how long a poll waits for a message
});
const STABLE_MS = 5000; // a connection that lived this long resets the backoff
const PROBE_EVERY_MS = 1000;
const PROBE_TIMEOUT_MS = 1500;
const PING_ANSWER_MS = 3000; // after `online` or a tab shown again
const RENEWED_RECENTLY_MS = 1000; // a token this fresh is not asked again before a connect
const AUTH_RETRIES = 2; // expired again and again with fresh tokens: give up

// A channel dropped from a wire and taken again (a subscription closed and
// opened anew in one tick, a tab attaching again as the same client) is
// another WireChannel: the connection must start it again from its own
// cursor, and nothing the old one's subscription brings may reach it.
let wireChannels = 0;

export class WireChannel {
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

// Whether the gateway answers at all, within `timeoutMs`.
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

export class Wire {
  constructor(holder, key, opts) {
    this.holder = holder;
    this.key = key;
    this.baseUrl = opts.baseUrl;
    this.user = opts.user;
    this.transports = opts.transports;
    this.connectTimeout = opts.connectTimeout || DEFAULTS.connectTimeout;
    this.backoff = { ...DEFAULTS.backoff, ...(opts.backoff || {}) };
    this.heartbeatMs = (opts.heartbeat || DEFAULTS.heartbeat) * 1000;
    this.pollTimeoutS = opts.pollTimeout ?? DEFAULTS.pollTimeout;
    this.tokenFn = !!opts.tokenFn;
    this.authFailures = 0;
    this.refreshTimer = null;
    this.renewedAt = Date.now();
    this.setToken(opts.token);
    this.channels = new Map();
    this.current = null;
    this.opened = false; // the current session said it is subscribed
    this.transport = null;
    this.status = "connecting";
    this.closed = false;
    this.wake = {};
    this.scheduled = false;
    this.probing = false;
    this.down = false; // the last probe found no gateway
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
      let now = false; // connect again at once
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
          this.renewedAt = 0; // whatever we hold, ask again
          now = true;
          break;
        }
        if (error && (error.fatal || error.expired)) {
          this.refuseAll(error); // drops at least one channel: the others try again
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
      conn.abort(RETRY_NOW); // another network, maybe: this connection may be dead, a new one is cheap
    } else {
      conn.ping(); // SSE: silent too long while the tab was hidden is dead
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
    if (!conn || !this.opened) return; // the next connect takes it
    if (conn instanceof WebSocketSession) {
      try {
        await conn.refresh(this.token);
      } catch (_) {
        if (this.current === conn) conn.abort(RETRY_NOW); // refused: connect again with it
      }
    } else {
      conn.abort(RETRY_NOW); // SSE and poll: connect again with it, from the cursors
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
