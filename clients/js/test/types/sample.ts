// Checked by `tsc -p test/types`: the declarations fit a page that uses every option and event.
import Gateway, { GatewayError, connections, presence, publish, subscribe } from "realtime-gateway-client";
import type { Message, PresenceEvent, Status, SubscribeOptions, Subscription, Transport } from "realtime-gateway-client";

const seen: string[] = [];
const options: SubscribeOptions = {
  onMessage(msg: Message, meta) {
    seen.push(`${msg.id} ${msg.channel} ${msg.event} ${msg.data} via ${meta.transport}`);
  },
  onGap() {},
  onTransport(name: Transport) { seen.push(name); },
  onPresence(ev: PresenceEvent) { seen.push(`${ev.type} ${ev.user} ${JSON.stringify(ev.info)}`); },
  onStatus(status: Status) { seen.push(status); },
  onError(err: GatewayError) { seen.push(`${err.message} ${err.fatal} ${err.status} ${err.code} ${err.expired}`); },
  transports: ["websocket", "sse", "poll"],
  since: "0",
  last: 10,
  token: async () => (await fetch("/my-token")).text(),
  baseUrl: "https://rt.example.com",
  user: "ada",
  connectTimeout: 5000,
  backoff: { initial: 250, max: 3000 },
  heartbeat: 15,
  pollTimeout: 25,
  share: "auto",
  workerUrl: "/assets/gateway.global.js",
};
const sub: Subscription = subscribe("chat:lobby", options);
const where: Transport | null = sub.transport;
const cursor: string | null = sub.cursor;
sub.close();
subscribe("chat:lobby", { token: "a.jwt.token", share: false });
subscribe("chat:lobby", { token: () => "sync.jwt.token" });

async function main(): Promise<void> {
  const { id } = await publish("chat:lobby", { text: "hi" }, { event: "chat", token: () => Promise.resolve("t") });
  const who = await presence("chat:lobby", { baseUrl: "", timeout: 1000 });
  const names = (who.members || []).map((m) => `${m.user} ${m.connections}`);
  const open = connections().filter((c) => c.status === "open" && c.transport !== null);
  const same = Gateway.subscribe === subscribe && window.Gateway.publish === publish;
  seen.push(id, ...names, String(open.length), String(same), String(where), String(cursor));
}
main();
