// A tiny app: what a page would import. It only touches what runs without a browser.
import Gateway, { GatewayError, connections, presence, publish, subscribe, transports } from "realtime-gateway-client";

let refused = "";
try {
  subscribe("chat:lobby", { transports: ["pigeon"] });
} catch (err) {
  refused = err.message;
}
globalThis.bundlerResult = {
  types: [subscribe, publish, presence, connections, GatewayError, Gateway.subscribe].map((f) => typeof f).join(","),
  transports: transports.join(","),
  refused,
};
