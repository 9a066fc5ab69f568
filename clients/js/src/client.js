// A page's client: its subscriptions, their cursors, and the link to the holder.
//
// Each page keeps, per subscription, its own cursor and the ids it has shown.
// When the holder goes away (the leading tab closed, the worker died), the
// next one takes over and every subscription attaches to it again from its
// own cursor: nothing lost, nothing shown twice. A subscription that joins a
// channel some other one already carries starts at the wire's position W;
// whatever it asked for before W (since=, last=) it reads once with a
// single-channel poll (timeout=0), then goes live.

import { GatewayError, flat, unflat } from "./errors.js";
import { LOCK_PREFIX, holdForever, leaderLink, pageHolderLink, workerLink } from "./links.js";
import { SESSIONS } from "./sessions.js";
import { checkToken, resolveToken, tokenScope } from "./token.js";
import {
  CHANNEL_RE, SeenIds, authHeaders, call, cleanBase, endpoint, getJson, here, httpError, later, randomId, report,
} from "./util.js";
import { DEFAULTS } from "./wire.js";

export const ALL_TRANSPORTS = Object.freeze(["websocket", "sse", "poll"]);
const SHARE_MODES = ["auto", "worker", "leader", false];
const SEEN_IDS = 4096;
const CATCH_UP_LIMIT = 1000;
const CATCH_UP_PAGES = 20;
const POLL_TIMEOUT_MAX_S = 29; // the gateway clamps below 30 s

// -- where the shared worker's script is --------------------------------------

let scriptUrl = null; // the global build's own URL, when it knows it

export function setScriptUrl(url) {
  scriptUrl = url || null;
}

// The worker script for `opts`: the option, else the global build's own URL,
// else the copy the gateway serves (`<baseUrl>/static/gateway.js`).
export function workerUrlFor(opts, baseUrl) {
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

// -- options ------------------------------------------------------------------

function positive(opts, name) {
  const value = opts[name];
  if (value !== undefined && !(typeof value === "number" && value > 0 && Number.isFinite(value))) {
    throw new TypeError(`${name} must be a positive number`);
  }
}

// Programmer errors, thrown at once: a bad option never gets as far as a request.
export function checkOptions(opts) {
  if (opts === null || typeof opts !== "object") throw new TypeError("options must be an object");
  const transports = opts.transports === undefined ? ALL_TRANSPORTS : opts.transports;
  if (!Array.isArray(transports)) throw new TypeError("transports must be an array");
  for (const name of transports) {
    if (!SESSIONS[name]) throw new TypeError(`unknown transport ${JSON.stringify(name)}`);
  }
  if (transports.length === 0) throw new TypeError("transports must name at least one");
  if (new Set(transports).size !== transports.length) throw new TypeError("transports names one twice");
  for (const name of ["onMessage", "onGap", "onTransport", "onPresence", "onStatus", "onError"]) {
    if (opts[name] !== undefined && typeof opts[name] !== "function") throw new TypeError(`${name} must be a function`);
  }
  for (const name of ["baseUrl", "user", "workerUrl"]) {
    if (opts[name] !== undefined && typeof opts[name] !== "string") throw new TypeError(`${name} must be a string`);
  }
  checkToken(opts.token);
  if (opts.last !== undefined && !(Number.isInteger(opts.last) && opts.last > 0)) {
    throw new TypeError("last must be a positive integer");
  }
  if (opts.since !== undefined && opts.since !== null && typeof opts.since !== "string") {
    throw new TypeError("since must be a message id (a string)");
  }
  positive(opts, "connectTimeout");
  positive(opts, "heartbeat");
  if (opts.pollTimeout !== undefined) {
    const t = opts.pollTimeout;
    if (!(typeof t === "number" && t >= 1 && t <= POLL_TIMEOUT_MAX_S)) {
      throw new TypeError(`pollTimeout must be a number of seconds from 1 to ${POLL_TIMEOUT_MAX_S}`);
    }
  }
  if (opts.backoff !== undefined) {
    if (opts.backoff === null || typeof opts.backoff !== "object") throw new TypeError("backoff must be {initial, max}");
    positive(opts.backoff, "initial");
    positive(opts.backoff, "max");
  }
  const share = opts.share === undefined || opts.share === true ? "auto" : opts.share;
  if (!SHARE_MODES.includes(share)) throw new TypeError(`share must be one of ${SHARE_MODES.join(", ")}`);
  return { transports: transports.slice(), share };
}

// -- a page's client ----------------------------------------------------------

export class Client {
  constructor(mode, workerUrl) {
    this.id = randomId();
    this.mode = mode;
    this.workerUrl = workerUrl;
    this.subs = new Map();
    this.outbox = [];
    this.ready = false;
    this.requests = new Map(); // publish req -> {resolve, reject}
    this.states = new Map(); // key -> {status, transport}
    this.nextId = 1;
    this.lockName = `${LOCK_PREFIX}/tab/${this.id}`;
    this.link = this.makeLink(mode);
    this.watchNetwork();
  }

  makeLink(mode) {
    const locks = typeof navigator !== "undefined" && navigator.locks;
    let worker = mode === "worker" || mode === "auto";
    if (worker && typeof SharedWorker === "function" && locks && !sameOrigin(this.workerUrl)) {
      // A SharedWorker's script must be of the page's origin: the gateway's
      // copy on another origin cannot be one. `workerUrl` names one of ours.
      if (mode === "worker") {
        console.warn(`gateway.js: the shared worker script ${this.workerUrl} is not of this page's origin; `
          + "sharing through a leader tab instead (serve the client's global build here and pass workerUrl)");
      }
      worker = false;
    }
    if (worker && typeof SharedWorker === "function" && locks) {
      const link = workerLink(this, this.workerUrl);
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
      (err) => this.post({ op: "token", req: op.req, error: flat(err) }),
    );
  }

  // Publish over the holder's open WebSocket for this gateway and token, if any; null: use HTTP.
  publishVia(baseUrl, scope, channel, data, event) {
    for (const [key, state] of this.states) {
      const [kb, kt] = JSON.parse(key);
      if (kb !== baseUrl || (scope !== undefined && scope !== (kt || undefined))) continue;
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

function clientFor(share, workerUrl) {
  if (!clients.has(share)) clients.set(share, new Client(share, workerUrl));
  return clients.get(share);
}

// Which wire a token goes on: the token itself, or, from a token function, its
// user and rights (a fresh token of the same user and rights rides the same connection).
function tokenKey(token, fromFunction) {
  if (!token) return "";
  return fromFunction ? `fn:${tokenScope(token)}` : token;
}

// -- one subscription: its cursor, its dedupe, its catch-up -------------------

export class Subscription {
  constructor(channel, options) {
    const opts = options || {};
    if (typeof channel !== "string") throw new TypeError(`a channel is a string, not ${typeof channel}`);
    const { transports, share } = checkOptions(opts);
    this.channel = channel;
    this.opts = opts;
    this.baseUrl = cleanBase(opts.baseUrl);
    this.transport = null;
    this.cursor = opts.since !== undefined && opts.since !== null ? String(opts.since) : null;
    this.position = this.cursor; // where to resume: the cursor, the wire's position, "0" after a gap
    this.seen = new SeenIds(SEEN_IDS);
    this.mode = "detached"; // "attaching" | "catching" | "live"
    this.buffer = [];
    this.closed = false;
    this.lastTransport = null;
    this.client = clientFor(share, workerUrlFor(opts, this.baseUrl));
    this.wireOpts = {
      baseUrl: this.baseUrl, user: opts.user, transports, connectTimeout: opts.connectTimeout,
      backoff: opts.backoff, heartbeat: opts.heartbeat, pollTimeout: opts.pollTimeout,
      tokenFn: typeof opts.token === "function",
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
      this.key = JSON.stringify([this.baseUrl, scope, transports.join(","), opts.user || ""]);
      this.client.add(this);
    };
    // A token function is asked first: its token says which connection to join.
    if (typeof opts.token === "function") resolveToken(opts.token).then(start, (err) => this.fail(err));
    else start(opts.token || undefined);
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
    if (this.id !== undefined) this.client.remove(this);
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

// -- the API ------------------------------------------------------------------

export function subscribe(channel, options) {
  return new Subscription(channel, options);
}

export async function publish(channel, data, options) {
  const opts = options || {};
  checkToken(opts.token);
  const baseUrl = cleanBase(opts.baseUrl);
  const text = typeof data === "string" ? data : JSON.stringify(data);
  const token = await resolveToken(opts.token);
  const scope = opts.token === undefined ? undefined : tokenKey(token, typeof opts.token === "function");
  for (const client of clients.values()) {
    // A socket carries the rights of its own token: use it unless told another.
    const sent = client.publishVia(baseUrl, scope, channel, text, opts.event);
    const answer = sent && (await sent);
    if (answer) return answer;
  }
  const url = endpoint(baseUrl, `publish/${encodeURIComponent(channel)}`, { event: opts.event });
  const res = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "text/plain;charset=UTF-8", ...authHeaders(token) },
    body: text,
  });
  if (res.status !== 201) throw await httpError(res);
  const body = await res.json();
  return { id: body.id };
}

// Who is on a channel: GET /presence/{channel}.
export async function presence(channel, options) {
  const opts = options || {};
  checkToken(opts.token);
  const url = endpoint(cleanBase(opts.baseUrl), `presence/${encodeURIComponent(channel)}`);
  const token = await resolveToken(opts.token);
  return getJson(url, token, opts.timeout || DEFAULTS.connectTimeout * 2);
}

// What this page's subscriptions ride on: one entry per connection.
export function connections() {
  return [...clients.values()].flatMap((client) => client.connections());
}

// For tests: end the shared worker this page uses, as if it had crashed.
export function endSharedWorker() {
  for (const client of clients.values()) {
    if (client.link.where === "worker") client.link.post([{ op: "end-worker" }]);
  }
}
