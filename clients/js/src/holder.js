// The holder: wires, and the pages (clients) listening to their channels.
//
// Ops from a client: attach {key, opts, sub, channel, since, last, presence,
// tokenFn}, detach {sub}, publish {req, key, channel, data, event}, token {req,
// token | error}, nudge {kind}, bye. Ops to clients: at {sub, cursor, fresh},
// msg / gap / pos / refused / presence {key, channel, ...}, state {key, status,
// transport}, published {req, id} / unpublished {req, error, http}, token?
// {key, req}, warn {key, message}.

import { GatewayError, flat, unflat } from "./errors.js";
import { Wire, WireChannel } from "./wire.js";

const TOKEN_WAIT_MS = 10000; // a token function that takes longer is given up on

export class Holder {
  constructor(send) {
    this.send = send; // send(clientIds, op): to those clients (one post per port or one broadcast)
    this.wires = new Map();
    this.listeners = new Map(); // `${client}/${sub}` -> listener
    this.tokenWaits = new Map(); // req -> {resolve, reject}
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
    const since = op.since === undefined || op.since === null ? null : String(op.since);
    let ch = wire.channels.get(op.channel);
    const listener = {
      id, client, sub: op.sub, key: op.key, channel: op.channel, waiting: false, tokenFn: !!op.opts.tokenFn,
    };
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
      baseUrl: w.baseUrl, transport: w.transport, status: w.status, channels: w.channels.size,
    }));
  }

  close() {
    for (const wire of this.wires.values()) wire.close();
    this.wires.clear();
    this.listeners.clear();
  }
}
