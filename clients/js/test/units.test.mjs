// What needs no browser: URLs, backoff, errors, the event-stream grammar, tokens.
import assert from "node:assert/strict";
import { test } from "node:test";

import { GatewayError, httpFailure, wsFailure } from "../src/errors.js";
import { EventStreamParser } from "../src/eventstream.js";
import { refreshDelay, resolveToken, tokenClaims, tokenScope } from "../src/token.js";
import { backoffDelay, cleanBase, endpoint } from "../src/util.js";
import { DEFAULTS, Wire, WireChannel } from "../src/wire.js";
import { jwt } from "./helpers.mjs";

test("endpoint builds several-channel URLs with repeated channel parameters", () => {
  const url = endpoint("https://rt.example.com/realtime", "poll", { channel: ["a@1-0", "b"], last: undefined, timeout: 0 });
  assert.equal(url, "https://rt.example.com/realtime/poll?channel=a%401-0&channel=b&timeout=0");
});

test("endpoint turns http(s) into ws(s) for WebSocket paths, and resolves a relative base", () => {
  assert.equal(endpoint("https://rt.example.com", "ws", { token: "t" }), "wss://rt.example.com/ws?token=t");
  assert.equal(endpoint("http://127.0.0.1:9/", "ws", {}).startsWith("ws://127.0.0.1:9/"), true);
  assert.equal(endpoint("", "sse", { channel: ["x"] }), "http://localhost/sse?channel=x");
  assert.equal(cleanBase("https://a.example//"), "https://a.example");
});

test("backoff doubles from initial, stays under its cap, and draws in the upper half", () => {
  const opts = { initial: 250, max: 3000 };
  assert.equal(backoffDelay(1, opts, () => 0), 125);
  assert.equal(backoffDelay(1, opts, () => 1), 250);
  assert.equal(backoffDelay(3, opts, () => 1), 1000);
  for (let attempt = 1; attempt < 50; attempt++) {
    const wait = backoffDelay(attempt, opts);
    assert.ok(wait <= 3000 && wait >= 125, `attempt ${attempt}: ${wait}`);
  }
  assert.equal(backoffDelay(40, opts, () => 0), 1500); // the cap's lower half: jitter even at the cap
  assert.ok(DEFAULTS.backoff.max <= 3000, "the default cap must not outgrow a short outage");
});

test("HTTP and WebSocket refusals: fatal or not, expired or not", () => {
  const expired = httpFailure(401, "token expired");
  assert.equal(expired.expired, true);
  assert.equal(expired.fatal, true);
  assert.equal(expired.message, "HTTP 401: token expired");
  assert.equal(httpFailure(401, "invalid token: x").expired, false);
  assert.equal(httpFailure(503).fatal, false);
  assert.equal(httpFailure(403, "revoked").fatal, true);
  assert.equal(wsFailure(4001, "token expired", true).expired, true);
  assert.equal(wsFailure(4001, "token expired", true).fatal, false); // a fresh token may do
  assert.equal(wsFailure(4003, "revoked", true).fatal, true);
  assert.equal(wsFailure(1008, "forbidden", false).fatal, false); // a refused handshake: try the next transport
  assert.equal(wsFailure(1012, "", true).fatal, false);
  assert.ok(expired instanceof GatewayError);
});

test("the event-stream parser splits on any line end, joins data lines, skips comments", () => {
  const got = [];
  const parser = new EventStreamParser((ev) => got.push(ev));
  parser.push(": heartbeat\n\nid: 1-0\nevent: gap\ndata: {\"a\":\r");
  parser.push("\ndata: 1}\r\n\r\nretry: 1000\n\n");
  parser.push("data: last\n");
  assert.deepEqual(got, [{ event: "gap", id: "1-0", data: "{\"a\":\n1}" }]);
  parser.push("\n");
  assert.deepEqual(got[1], { event: "message", id: "", data: "last" });
});

test("token claims are read from a JWT and nothing else", () => {
  const token = jwt({ sub: "ada", exp: 2000, iat: 1000, sub_channels: ["chat:*"] });
  assert.deepEqual(tokenClaims(token), { sub: "ada", exp: 2000, iat: 1000, sub_channels: ["chat:*"] });
  assert.equal(tokenClaims("opaque"), null);
  assert.equal(tokenClaims("a.b.c"), null);
  assert.equal(tokenClaims(undefined), null);
});

test("refresh comes before exp: a fifth of the lifetime early, 1-30 s, measured from iat when given", () => {
  const now = 1_000_000_000_000;
  // 10 minutes from iat: 30 s early (the cap), whatever this machine's clock says.
  assert.equal(refreshDelay({ iat: 0, exp: 600 }, now), 570_000);
  // 6 s without iat: measured on this clock, 1.2 s early.
  assert.equal(refreshDelay({ exp: now / 1000 + 6 }, now), 4800);
  // 2 s: at least 1 s early.
  assert.equal(refreshDelay({ iat: 5, exp: 7 }, now), 1000);
  // Already past: soon, but never a tight loop.
  assert.equal(refreshDelay({ exp: now / 1000 - 60 }, now), 500);
  assert.equal(refreshDelay({ sub: "no exp" }, now), null);
  assert.equal(refreshDelay(null, now), null);
});

test("a token may be a string, a function or an async function; anything else is refused", async () => {
  assert.equal(await resolveToken("t1"), "t1");
  assert.equal(await resolveToken(undefined), undefined);
  assert.equal(await resolveToken(() => "t2"), "t2");
  assert.equal(await resolveToken(async () => "t3"), "t3");
  assert.equal(await resolveToken(async () => null), undefined);
  await assert.rejects(resolveToken(() => 42), (err) => err instanceof GatewayError && err.fatal);
  await assert.rejects(resolveToken(async () => { throw new Error("login expired"); }),
    (err) => err instanceof GatewayError && /login expired/.test(err.message) && !err.fatal);
});

test("tokens of one user and the same rights share a connection; others do not", () => {
  const a1 = jwt({ sub: "ada", exp: 1, sub_channels: ["chat:*"] });
  const a2 = jwt({ sub: "ada", exp: 2, sub_channels: ["chat:*"] });
  const b = jwt({ sub: "bob", exp: 1, sub_channels: ["chat:*"] });
  const a3 = jwt({ sub: "ada", exp: 1, sub_channels: ["admin:*"] });
  assert.equal(tokenScope(a1), tokenScope(a2));
  assert.notEqual(tokenScope(a1), tokenScope(b));
  assert.notEqual(tokenScope(a1), tokenScope(a3));
});

test("a wire's request names each channel with its cursor, or asks one kind of `last`", () => {
  const fake = { channels: new Map(), user: "ada" };
  const add = (name, since, last) => fake.channels.set(name, new WireChannel(name, since, last));
  add("a", "5-0");
  add("b", null, undefined);
  add("c", null, 10); // another kind than b's "new": it joins on the next request
  add("d", "0");
  fake.channels.get("d").presence = true;
  const req = Wire.prototype.request.call(fake);
  assert.deepEqual(req.query.channel, ["a@5-0", "b", "d@0"]);
  assert.deepEqual(req.names, ["a", "b", "d"]);
  assert.equal(req.query.last, undefined);
  assert.equal(req.query.presence, 1);
  assert.equal(req.query.user, "ada");
  // Cursors move with every message: the key changes only with the channel list.
  fake.channels.get("a").cursor = "9-0";
  assert.equal(Wire.prototype.request.call(fake).key, req.key);
});

test("`online` or a tab shown again: an attempt that may hang is dropped, a backoff cut short", async () => {
  const { RETRY_NOW } = await import("../src/sessions.js");
  const aborted = [];
  const hanging = { abort: (why) => aborted.push(why) };
  const wire = Object.assign(Object.create(Wire.prototype), { closed: false, opened: false, current: hanging, wake: {} });
  wire.nudge("online");
  assert.deepEqual(aborted, [RETRY_NOW]);
  let woken = false;
  Object.assign(wire, { current: null, wake: { resolve: () => { woken = true; } } });
  wire.nudge("visible");
  assert.equal(woken, true);
  // Open on SSE or poll: `online` reconnects (another network, maybe); shown again, SSE checks its silence.
  const pinged = [];
  const open = { abort: (why) => aborted.push(why), ping: () => pinged.push("ping") };
  Object.assign(wire, { current: open, opened: true });
  wire.nudge("visible");
  assert.deepEqual(pinged, ["ping"]);
  wire.nudge("online");
  assert.deepEqual(aborted, [RETRY_NOW, RETRY_NOW]);
});

// A wire carrying channels a and b, for a session's parsing alone.
function fakeWire() {
  const chans = new Map([["a", { name: "a" }], ["b", { name: "b" }]]);
  return {
    channels: chans, heartbeatMs: 15000, baseUrl: "", schedule() {},
    request: () => ({ names: ["a", "b"], chans, query: {}, key: "a\nb" }),
    carries: (ch) => ch !== undefined && chans.get(ch.name) === ch,
  };
}

function recorder() {
  const seen = [];
  const handlers = {};
  for (const name of ["open", "message", "gap", "presence", "position", "refused", "end"]) {
    handlers[name] = (...args) => seen.push([name, ...args]);
  }
  return { seen, handlers };
}

test("SSE: `expired` ends the stream for a fresh token; `revoked` ends one channel, or all", async () => {
  const { SseSession } = await import("../src/sessions.js");
  const { seen, handlers } = recorder();
  const sse = new SseSession(fakeWire(), handlers);
  sse.event({ event: "revoked", id: "", data: JSON.stringify({ channel: "b", reason: "banned" }) });
  assert.equal(seen[0][0], "refused");
  assert.equal(seen[0][1], "b");
  assert.equal(seen[0][2].fatal, true);
  assert.match(seen[0][2].message, /access revoked: banned/);
  sse.event({ event: "expired", id: "", data: "token expired" });
  assert.equal(sse.closing.expired, true);
  sse.event({ event: "revoked", id: "", data: "revoked" });
  assert.equal(sse.closing.fatal, true);
  assert.equal(sse.closing.code, 4003);
});

test("WebSocket: a `revoked` frame ends its channel; ping, refresh and their answers keep their order", async () => {
  const { WebSocketSession } = await import("../src/sessions.js");
  globalThis.WebSocket = { OPEN: 1, CONNECTING: 0 };
  try {
    const { seen, handlers } = recorder();
    const wire = fakeWire();
    const ws = new WebSocketSession(wire, handlers);
    const sent = [];
    ws.ws = { readyState: 1, send: (text) => sent.push(JSON.parse(text)), close() {} };
    ws.channels.set("a", "live");
    ws.asked.set("a", wire.channels.get("a"));
    ws.ping();
    const refreshed = ws.refresh("new.jwt.token");
    assert.deepEqual(sent, [{ type: "ping" }, { type: "refresh", token: "new.jwt.token" }]);
    ws.frame(JSON.stringify({ type: "error", reason: "expected a frame of type ..." })); // the ping's answer
    ws.frame(JSON.stringify({ type: "refreshed", exp: 1234 }));
    assert.equal(await refreshed, 1234);
    ws.frame(JSON.stringify({ type: "revoked", channel: "a", reason: "banned" }));
    assert.equal(seen[0][0], "refused");
    assert.equal(seen[0][1], "a");
    const refused = ws.refresh("other.jwt.token");
    ws.frame(JSON.stringify({ type: "error", reason: "a refreshed token must name the same sub" }));
    await assert.rejects(refused, /same sub/);
  } finally {
    delete globalThis.WebSocket;
  }
});
