// The browser client of the realtime gateway: the ES module and CommonJS entry.
//
//   import { subscribe, publish, presence } from "realtime-gateway-client";
//
// The same client as static/gateway.js (the global build, `window.Gateway`).
// In a bundle the client cannot find its own script for the SharedWorker that
// shares one connection among tabs: it uses `workerUrl` when given, else the
// copy the gateway serves (`<baseUrl>/static/gateway.js`) when that is of the
// page's origin, else it shares through a leader tab instead.

import { ALL_TRANSPORTS, connections, endSharedWorker, presence, publish, subscribe } from "./client.js";
import { GatewayError } from "./errors.js";

export const transports = ALL_TRANSPORTS.slice();
export { GatewayError, connections, presence, publish, subscribe };

const Gateway = Object.freeze({
  subscribe, publish, presence, connections, GatewayError, transports: ALL_TRANSPORTS.slice(),
  _endSharedWorker: endSharedWorker,
});
export default Gateway;
