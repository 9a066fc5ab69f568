// The client in Node, over long-poll (Node 20 has fetch, no WebSocket, no
// SharedWorker): options checked at once, cursors carried from answer to
// request, duplicates and gaps, and a token function asked before each
// connect and again after the gateway said the token expired. The gateway
// here is a stub that answers /poll from a script and records each request.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import { subscribe, transports } from "../src/index.js";
import { jwt, until } from "./helpers.mjs";

let server;
let base;
const scripts = new Map(); // channel -> one function per expected poll: (url) => [status, body]
const requests = []; // {url, auth}

before(async () => {
  server = createServer((req, res) => {
    const url = new URL(req.url, "http://stub");
    requests.push({ path: url.pathname, channel: (url.searchParams.get("channel") || "").split("@")[0], channels: url.searchParams.getAll("channel"), auth: req.headers.authorization });
    const channel = (url.searchParams.get("channel") || "").split("@")[0];
    const next = url.pathname === "/poll" ? (scripts.get(channel) || []).shift() : null;
    const [status, body] = next ? next(url) : [200, { channel: null, messages: [], cursors: {}, gaps: [] }];
    // An unscripted poll waits like a quiet channel would (short: the test ends it).
    const delay = next ? 0 : 200;
    setTimeout(() => {
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(JSON.stringify(body));
    }, delay);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(() => server.close());

test("options are checked at once, with a TypeError naming the option", () => {
  assert.deepEqual(transports, ["websocket", "sse", "poll"]);
  const bad = [
    [{ transports: ["pigeon"] }, /unknown transport "pigeon"/],
    [{ transports: [] }, /at least one/],
    [{ transports: ["sse", "sse"] }, /twice/],
    [{ token: 42 }, /token must be a string or a function/],
    [{ last: 0 }, /last must be a positive integer/],
    [{ since: 5 }, /since must be a message id/],
    [{ pollTimeout: 40 }, /pollTimeout must be a number of seconds from 1 to 29/],
    [{ heartbeat: -1 }, /heartbeat must be a positive number/],
    [{ backoff: { max: 0 } }, /max must be a positive number/],
    [{ share: "tabs" }, /share must be one of/],
    [{ onMessage: "log" }, /onMessage must be a function/],
    [{ workerUrl: 5 }, /workerUrl must be a string/],
  ];
  assert.throws(() => subscribe(undefined, {}), /a channel is a string, not undefined/);
  for (const [opts, why] of bad) assert.throws(() => subscribe("c", opts), (err) => err instanceof TypeError && why.test(err.message), JSON.stringify(opts));
});

test("a bad channel name is an onError (HTTP 400), not a throw", async () => {
  let error;
  subscribe("no spaces", { transports: ["poll"], share: false, baseUrl: base, onError: (e) => { error = e; } });
  await until(() => error);
  assert.equal(error.status, 400);
  assert.equal(error.fatal, true);
});

// Each test has its own channel: a poll left over from the one before never takes its answers.
function answer(channel, messages, cursor, gaps = []) {
  return () => [200, { messages, cursors: { [channel]: cursor }, gaps, cursor: "composite" }];
}

function msg(channel, id) {
  return { id, channel, event: "message", data: `m${id}` };
}

test("each poll carries the cursor of the last message; duplicates are dropped; a gap is told", async () => {
  const c = "cursors";
  scripts.set(c, [
    answer(c, [], "5-0"), // connected (timeout=0): the channel stands at 5-0
    answer(c, [msg(c, "6-0"), msg(c, "7-0")], "7-0"),
    answer(c, [msg(c, "7-0"), msg(c, "8-0")], "8-0"), // 7-0 again (a retry's answer): shown once
    answer(c, [msg(c, "1-0")], "1-0", [c]), // history lost: the gap, then what history holds
    answer(c, [msg(c, "2-0")], "2-0"),
  ]);
  const got = [];
  let gaps = 0;
  const sub = subscribe(c, {
    transports: ["poll"], share: false, baseUrl: base, pollTimeout: 1,
    onMessage: (m, meta) => got.push(`${m.id}/${meta.transport}`), onGap: () => gaps++,
  });
  await until(() => got.length === 5 && requests.filter((r) => r.channel === c).length >= 6);
  sub.close();
  assert.deepEqual(got, ["6-0/poll", "7-0/poll", "8-0/poll", "1-0/poll", "2-0/poll"]);
  assert.equal(gaps, 1);
  assert.equal(sub.cursor, "2-0");
  const polls = requests.filter((r) => r.channel === c).map((r) => r.channels[0].slice(c.length));
  assert.deepEqual(polls.slice(0, 6), ["", "@5-0", "@7-0", "@8-0", "@1-0", "@2-0"]);
});

test("a token function is asked before connecting, and again when the gateway says it expired", async () => {
  const c = "refresh";
  let minted = 0;
  const token = async () => jwt({ sub: "ada", n: ++minted, exp: Math.floor(Date.now() / 1000) + 3600 });
  scripts.set(c, [
    answer(c, [], "5-0"),
    answer(c, [msg(c, "6-0")], "6-0"),
    () => [401, { error: "token expired" }], // a waiting poll answered at exp
    answer(c, [], "6-0"), // connected again, with a fresh token, from the cursor
    answer(c, [msg(c, "7-0")], "7-0"),
  ]);
  const got = [];
  const errors = [];
  const sub = subscribe(c, {
    transports: ["poll"], share: false, baseUrl: base, pollTimeout: 1, token,
    onMessage: (m) => got.push(m.id), onError: (e) => errors.push(e),
  });
  await until(() => got.length === 2);
  sub.close();
  assert.deepEqual(errors, []);
  assert.deepEqual(got, ["6-0", "7-0"]);
  const polls = requests.filter((r) => r.channel === c);
  const claims = polls.map((r) => JSON.parse(Buffer.from(r.auth.split(" ")[1].split(".")[1], "base64url")).n);
  // The first two polls on token 1; after the 401, a fresh token, and the cursor kept.
  assert.deepEqual(claims.slice(0, 3), [1, 1, 1]);
  assert.ok(claims[3] > 1, `a fresh token after the 401: ${claims}`);
  assert.equal(polls[3].channels[0], `${c}@6-0`);
});

test("a string token that expired is an error for good: no loop of refused connections", async () => {
  const c = "expired";
  scripts.set(c, [() => [401, { error: "token expired" }]]);
  let error;
  subscribe(c, { transports: ["poll"], share: false, baseUrl: base, token: "fixed", onError: (e) => { error = e; } });
  await until(() => error);
  assert.equal(error.expired, true);
  assert.equal(requests.filter((r) => r.channel === c).length, 1);
});
