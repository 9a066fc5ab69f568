// Builds the client from src/ with esbuild:
//   dist/gateway.mjs         ES module          (import)
//   dist/gateway.cjs         CommonJS           (require)
//   dist/gateway.global.js   one plain script   (window.Gateway; also the SharedWorker's script)
//   dist/gateway.d.ts/.d.cts the declarations   (copied from src/gateway.d.ts)
//   ../../static/gateway.js  the global build the gateway serves, with one more line
//                            that lets `import … from "/static/gateway.js"` work too
// `node build.mjs --check` builds in memory and fails when a committed file differs.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes("--check");
const TARGET = "es2020"; // what bundlers at their default targets accept (esbuild's own default is esnext)

const generated = "Generated from clients/js/src by clients/js/build.mjs: do not edit, run `npm run build` there.";

const BANNER = `/*
 * gateway.js: the browser client of the realtime gateway.
 * ${generated}
 *
 *   <script src="/static/gateway.js"></script>                 -> window.Gateway
 *   import { subscribe, publish } from "/static/gateway.js";    (same functions)
 *
 *   const sub = Gateway.subscribe("chat:lobby", {onMessage(msg) {}, ...});
 *   sub.transport; sub.cursor; sub.close();
 *   await Gateway.publish("chat:lobby", "hello", {event, token, baseUrl});  // -> {id}
 *
 * Options and events: clients/js/src/gateway.d.ts; the README's section on the
 * JavaScript client. Loaded as a SharedWorker, this file holds the connections
 * of every tab of the origin.
 */`;

// The last line makes static/gateway.js an ES module as well. In a module
// \`await\` is a keyword, so \`await /"/\` awaits a regular expression literal (a
// no-op), and the exports that follow are code; \`//"\` ends the line as a comment.
// In a classic script \`await\` is a plain identifier, so the same characters
// read \`typeof await / "...string..."\`: \`typeof\` of an undeclared name is
// "undefined" (no ReferenceError), divided by a string, a harmless NaN, and
// the exports are inside that string. Bundlers refuse this line (top-level
// await): the package's own builds do not have it.
const MODULE_TRICK = `/*
 * The last line makes this file an ES module as well: in a module, \`await /"/\`
 * awaits a regular expression literal and the exports are code; in a classic
 * script, \`typeof await / "..."\` is a harmless NaN and the exports are inside
 * a string. Bundlers refuse it (top-level await): they take the npm package's
 * builds (clients/js), which do not have it. Checked in Chromium by tests/test_browser.py.
 */
typeof await /"/; export const { subscribe, publish, presence, connections, GatewayError } = globalThis.Gateway; export default globalThis.Gateway; //"`;

const common = { bundle: true, target: TARGET, platform: "browser", charset: "utf8", write: false, logLevel: "warning" };
const builds = [
  { entryPoints: [join(here, "src/index.js")], format: "esm", outfile: join(here, "dist/gateway.mjs"), banner: { js: `// ${generated}` } },
  { entryPoints: [join(here, "src/index.js")], format: "cjs", outfile: join(here, "dist/gateway.cjs"), banner: { js: `// ${generated}` } },
  { entryPoints: [join(here, "src/global.js")], format: "iife", outfile: join(here, "dist/gateway.global.js"), banner: { js: `// ${generated}` } },
  { entryPoints: [join(here, "src/global.js")], format: "iife", outfile: join(here, "../../static/gateway.js"), banner: { js: BANNER }, footer: { js: MODULE_TRICK } },
];

const outputs = new Map();
for (const options of builds) {
  const result = await esbuild.build({ ...common, ...options });
  for (const file of result.outputFiles) outputs.set(file.path, file.text);
}
const types = readFileSync(join(here, "src/gateway.d.ts"), "utf8");
outputs.set(join(here, "dist/gateway.d.ts"), types);
outputs.set(join(here, "dist/gateway.d.cts"), types);

let stale = [];
for (const [path, text] of outputs) {
  if (check) {
    let committed = null;
    try {
      committed = readFileSync(path, "utf8");
    } catch (_) {
      // missing: stale
    }
    if (committed !== text) stale.push(relative(process.cwd(), path));
  } else {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, text);
  }
}
if (stale.length) {
  console.error(`not the build of clients/js/src (run \`npm run build\` in clients/js): ${stale.join(", ")}`);
  process.exit(1);
}
console.log(check ? `${outputs.size} built files match src/` : `built ${outputs.size} files`);
