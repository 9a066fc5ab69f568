// Where the holder lives: links from a page's client to it.
//
// A link: post(ops) sends a batch of ops to the holder; the client is told
// `onReady()` when a (new) holder can take its subscriptions and
// `receive(op)` for every op meant for it.
//
//   page     this page holds its own connections;
//   worker   a SharedWorker running the client's global build: every tab of the
//            origin talks to it through a MessagePort;
//   leader   one tab, elected with Web Locks (the lock's holder leads, the
//            others queue for it), relays to the others over a BroadcastChannel.

import { Holder } from "./holder.js";

export const LOCK_PREFIX = "gateway.js";
// What the tabs and the worker say to each other changes with the client: a
// worker script of another version is not used (the tab leads or follows instead).
export const WORKER_PROTOCOL = 2;
const WORKER_HELLO_MS = 10000; // a shared worker starting on a busy machine takes seconds
const WORKER_RETRY_MS = 1000; // after the worker went away: the first try to reach its successor
const WORKER_RETRIES = 6; // (each waits twice as long as the one before, up to WORKER_HELLO_MS)

export function pageHolderLink(client) {
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
export function whenGone(name, onGone) {
  navigator.locks.request(name, () => onGone());
}

export function holdForever(name) {
  return new Promise((resolve) => {
    navigator.locks.request(name, () => {
      resolve();
      return new Promise(() => {});
    });
  });
}

export function workerLink(client, url) {
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
      worker.onerror = () => failed(`the shared worker ${url} failed to start`);
      port = worker.port;
      const mine = port;
      port.onmessage = (ev) => {
        if (port !== mine) return; // given up on (fallen back) or replaced
        const op = ev.data;
        if (op.op === "hello") {
          if (op.v !== WORKER_PROTOCOL) {
            retries = WORKER_RETRIES; // no use asking it again
            failed(`the shared worker ${url} runs another version of the client`);
            return;
          }
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
      port.postMessage({ from: client.id, ops: [{ op: "hello", lock: client.lockName, v: WORKER_PROTOCOL }] });
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

export function leaderLink(client) {
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
