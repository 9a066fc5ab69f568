// Small things the Node tests share.

export function b64url(text) {
  return Buffer.from(text, "utf8").toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

// An unsigned JWT-shaped token with these claims (the client never checks signatures).
export function jwt(claims) {
  return `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}.c2ln`;
}

export function until(check, { timeoutMs = 5000, everyMs = 10 } = {}) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeoutMs;
    const tick = () => {
      let ok = false;
      try {
        ok = check();
      } catch (_) {
        ok = false;
      }
      if (ok) return resolve();
      if (Date.now() > deadline) return reject(new Error("condition not met in time"));
      setTimeout(tick, everyMs);
    };
    tick();
  });
}
