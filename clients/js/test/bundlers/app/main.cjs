// The same app in CommonJS: require() takes the package's CommonJS build.
const { GatewayError, subscribe, transports } = require("realtime-gateway-client");

let refused = "";
try {
  subscribe("chat:lobby", { transports: ["pigeon"] });
} catch (err) {
  refused = err.message;
}
globalThis.bundlerResult = {
  types: [subscribe, GatewayError].map((f) => typeof f).join(","),
  transports: transports.join(","),
  refused,
};
