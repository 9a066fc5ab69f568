// Errors, and how they cross MessagePorts and BroadcastChannels (as plain objects).

export class GatewayError extends Error {
  constructor(message, { fatal = false, status, code, expired = false } = {}) {
    super(message);
    this.name = "GatewayError";
    this.fatal = fatal; // trying again, or elsewhere, will not help
    this.status = status; // the HTTP status, when one said it
    this.code = code; // the WebSocket close code, when one said it
    this.expired = expired; // the token expired: a fresh one may do
  }
}

export function flat(err) {
  return {
    message: String(err && err.message),
    fatal: !!(err && err.fatal),
    status: err && err.status,
    code: err && err.code,
    expired: !!(err && err.expired),
  };
}

export function unflat(obj) {
  return new GatewayError(obj.message, obj);
}

// Refusals that will not change by trying again or elsewhere.
const FATAL_HTTP = new Set([400, 401, 403, 413]);
const FATAL_WS = new Set([1008, 4003]);
export const WS_EXPIRED = 4001; // the token expired: refresh and reconnect
export const WS_REVOKED = 4003; // the user's access was taken away

const EXPIRED_REASON = /token expired/i;

// The error an HTTP answer (not 2xx) stands for; `reason` is its body's `error`.
export function httpFailure(status, reason) {
  const text = reason ? `HTTP ${status}: ${reason}` : `HTTP ${status}`;
  const expired = status === 401 && EXPIRED_REASON.test(reason || "");
  return new GatewayError(text, { fatal: FATAL_HTTP.has(status), status, expired });
}

// The error a WebSocket close stands for. A handshake refused (a route turned
// off, a proxy) closes before opening: never fatal, the next transport may do.
export function wsFailure(code, reason, opened) {
  const why = reason ? `: ${reason}` : "";
  const expired = code === WS_EXPIRED || (code === 1008 && EXPIRED_REASON.test(reason || ""));
  const fatal = opened && FATAL_WS.has(code);
  return new GatewayError(`websocket closed ${code}${why}`, { fatal, code, expired });
}
