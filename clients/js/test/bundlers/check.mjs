// Vite, webpack and esbuild, each at its default target, bundle app/ (which
// imports the client as an app would); each bundle is then run in Node and
// must have reached the client: its functions, its transports, and a
// TypeError from its option check. Prints one line per bundler with its version.
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import vm from "node:vm";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "out");
const require = createRequire(import.meta.url);
const version = (name) => require(`${name}/package.json`).version;
const EXPECTED_REFUSAL = 'unknown transport "pigeon"';

async function runModule(file) {
  delete globalThis.bundlerResult;
  // Vite's app entry starts with its modulepreload polyfill, which asks the
  // document whether <link rel=modulepreload> is supported: say it is.
  globalThis.document = { createElement: () => ({ relList: { supports: () => true } }) };
  await import(`${pathToFileURL(file).href}?${Date.now()}`);
  return globalThis.bundlerResult;
}

function runScript(file) {
  delete globalThis.bundlerResult;
  vm.runInThisContext(readFileSync(file, "utf8"), { filename: file });
  return globalThis.bundlerResult;
}

async function viteDefault() {
  const { build } = await import("vite");
  const dir = join(out, "vite");
  await build({ root: join(here, "app"), logLevel: "warn", build: { outDir: dir, emptyOutDir: true } });
  const assets = join(dir, "assets");
  const chunk = readdirSync(assets).find((f) => f.endsWith(".js"));
  try {
    return await runModule(join(assets, chunk));
  } finally {
    delete globalThis.document;
  }
}

function webpackRun(entry, name) {
  return new Promise(async (resolve, reject) => {
    const { default: webpack } = await import("webpack");
    const dir = join(out, name);
    webpack({ mode: "production", entry, output: { path: dir, filename: "main.js" } }, (err, stats) => {
      if (err) return reject(err);
      if (stats.hasErrors()) return reject(new Error(stats.toString("errors-only")));
      resolve(runScript(join(dir, "main.js")));
    });
  });
}

async function esbuildRun(target, name) {
  const esbuild = await import("esbuild");
  const file = join(out, name, "main.js");
  const options = { entryPoints: [join(here, "app/main.js")], bundle: true, outfile: file, logLevel: "warning" };
  if (target) options.target = target;
  await esbuild.build(options);
  return runScript(file);
}

const checks = [
  [`vite ${version("vite")} (default target)`, viteDefault, 6],
  [`webpack ${version("webpack")} (default target, ES module import)`, () => webpackRun(join(here, "app/main.js"), "webpack-esm"), 6],
  [`webpack ${version("webpack")} (default target, CommonJS require)`, () => webpackRun(join(here, "app/main.cjs"), "webpack-cjs"), 2],
  [`esbuild ${version("esbuild")} (default target)`, () => esbuildRun(undefined, "esbuild"), 6],
  [`esbuild ${version("esbuild")} (target es2020)`, () => esbuildRun("es2020", "esbuild-es2020"), 6],
];

// The control: the same bundler refuses static/gateway.js, whose last line
// (the module trick for a page without a bundler) is a top-level await.
async function staticFileRefused() {
  const esbuild = await import("esbuild");
  try {
    await esbuild.build({
      stdin: { contents: 'import { subscribe } from "./static/gateway.js"; globalThis.s = subscribe;', resolveDir: join(here, "../../../..") },
      bundle: true, write: false, target: "es2020", logLevel: "silent",
    });
  } catch (err) {
    if (/[Tt]op-level await/.test(err.message)) return { types: Array(6).fill("function").join(","), transports: "websocket,sse,poll", refused: EXPECTED_REFUSAL };
    throw err;
  }
  throw new Error("esbuild took static/gateway.js at es2020: this check could not tell the package's builds from it");
}
checks.push([`control: esbuild ${version("esbuild")} (es2020) refuses static/gateway.js (top-level await)`, staticFileRefused, 6]);

rmSync(out, { recursive: true, force: true });
let failed = 0;
for (const [label, run, functions] of checks) {
  try {
    const result = await run();
    const want = Array(functions).fill("function").join(",");
    if (!result || result.types !== want || result.transports !== "websocket,sse,poll" || !result.refused.includes(EXPECTED_REFUSAL)) {
      throw new Error(`the bundle did not reach the client: ${JSON.stringify(result)}`);
    }
    console.log(`ok ${label}`);
  } catch (err) {
    failed += 1;
    console.log(`not ok ${label}: ${err && err.stack ? err.stack.split("\n").slice(0, 6).join("\n") : err}`);
  }
}
rmSync(out, { recursive: true, force: true });
console.log(`${checks.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
