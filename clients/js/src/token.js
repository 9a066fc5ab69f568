// Tokens: a string, or a function (sync or async) that gives one.
//
// A function is called before each connect, again a little before the
// current token expires (its `exp`), and after the gateway said it expired.
// The client reads the token's payload only for its timing (`exp`, `iat`) and
// for which connection it may share (`sub` and the channel claims); it never
// checks a signature: the gateway does.

import { GatewayError } from "./errors.js";

const REFRESH_LEAD_MIN_MS = 1000;
const REFRESH_LEAD_MAX_MS = 30000;
const REFRESH_LEAD_SHARE = 0.2; // of the token's lifetime
const REFRESH_MIN_DELAY_MS = 500;

function base64UrlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  if (typeof atob === "function") {
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }
  return Buffer.from(padded, "base64").toString("utf8");
}

// The payload of a JWT, or null when `token` is not one (an opaque token is fine).
export function tokenClaims(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch (_) {
    return null;
  }
}

// How long after `now` (ms, this clock) to fetch the next token; null: it does not expire.
// With `iat`, the lifetime is measured on the issuer's clock (exp - iat) and
// counted from `now`, so a browser whose clock is off still refreshes in time.
export function refreshDelay(claims, now = Date.now()) {
  if (!claims || typeof claims.exp !== "number") return null;
  const left = typeof claims.iat === "number" ? (claims.exp - claims.iat) * 1000 : claims.exp * 1000 - now;
  const lead = Math.min(REFRESH_LEAD_MAX_MS, Math.max(REFRESH_LEAD_MIN_MS, left * REFRESH_LEAD_SHARE));
  return Math.max(REFRESH_MIN_DELAY_MS, left - lead); // never a tight loop
}

// Which tokens may share a connection: those of one user with the same rights.
export function tokenScope(token) {
  const claims = tokenClaims(token);
  if (!claims) return `opaque:${token}`;
  return JSON.stringify([claims.sub || "", claims.sub_channels || [], claims.pub_channels || []]);
}

export function checkToken(token) {
  const ok = token === undefined || token === null || typeof token === "string" || typeof token === "function";
  if (!ok) throw new TypeError("token must be a string or a function returning one (or a promise of one)");
}

// What the token (or token function) gives now: a string, or undefined for none.
export async function resolveToken(token) {
  if (typeof token !== "function") return token || undefined;
  let got;
  try {
    got = await token();
  } catch (err) {
    throw new GatewayError(`the token function failed: ${err && err.message}`);
  }
  if (got === undefined || got === null || got === "") return undefined;
  if (typeof got !== "string") {
    throw new GatewayError(`the token function gave ${typeof got}, not a string`, { fatal: true });
  }
  return got;
}
