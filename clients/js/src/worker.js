// Loaded as a SharedWorker (the global build, or any script that calls
// serveAsWorker): hold the connections for every tab of the origin.

import { Holder } from "./holder.js";
import { LOCK_PREFIX, WORKER_PROTOCOL, holdForever, whenGone } from "./links.js";
import { randomId } from "./util.js";

export function isSharedWorker() {
  return typeof globalThis.SharedWorkerGlobalScope === "function" && globalThis instanceof globalThis.SharedWorkerGlobalScope;
}

export function serveAsWorker() {
  const scope = globalThis;
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
  if (typeof scope.addEventListener === "function") {
    scope.addEventListener("online", () => holder.nudge("online"));
  }
  scope.onconnect = (ev) => {
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
          held.then(() => port.postMessage({ op: "hello", worker: workerId, v: WORKER_PROTOCOL }));
        } else if (op.op === "end-worker") {
          // For tests: the worker goes away as if it had crashed. Its sockets are
          // closed first, as a crash closes them: after close() alone, Chromium was
          // seen keeping an ended worker's SSE stream open for over 20 s.
          ports.clear();
          for (const wire of holder.wires.values()) wire.close();
          scope.close();
        } else {
          holder.handle(from, op);
        }
      }
    };
    port.start();
  };
}
