// The global build (static/gateway.js): `window.Gateway` for a plain
// <script>, and, loaded as a SharedWorker, the holder of every tab's
// connections (this very file is the worker's script).

import { ALL_TRANSPORTS, connections, endSharedWorker, presence, publish, setScriptUrl, subscribe } from "./client.js";
import { GatewayError } from "./errors.js";
import { here } from "./util.js";
import { isSharedWorker, serveAsWorker } from "./worker.js";

// This file's own URL, for the SharedWorker: the same in every tab that loads it the same way.
function ownUrl() {
  const doc = globalThis.document;
  if (doc && doc.currentScript && doc.currentScript.src) return doc.currentScript.src;
  // Imported as a module (no currentScript): the resource the page loaded.
  const loaded = typeof performance !== "undefined" && performance.getEntriesByType
    ? performance.getEntriesByType("resource").find((e) => /\/gateway\.js(\?|$)/.test(e.name)) : null;
  return loaded ? loaded.name : new URL("/static/gateway.js", here()).toString();
}

if (isSharedWorker()) serveAsWorker();
else setScriptUrl(ownUrl());

globalThis.Gateway = Object.freeze({
  subscribe, publish, presence, connections, GatewayError, transports: ALL_TRANSPORTS.slice(),
  _endSharedWorker: endSharedWorker,
});
