// The npm package as users get it: its manifest, its contents (npm pack) and its types, compiled
// by TypeScript the way an ES module user and a classic-script page each see them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL("..", import.meta.url));
const pkg = JSON.parse(readFileSync(join(here, "package.json"), "utf8"));
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const PACKED = [
  "LICENSE",
  "README.md",
  "intellia-token-client.d.ts",
  "intellia-token-client.global.d.ts",
  "intellia-token-client.global.js",
  "intellia-token-client.js",
  "package.json",
];

test("the manifest: publishable, Apache-2.0 like the repository, ESM + global build exports with their own types", () => {
  assert.equal(pkg.private, undefined, "publishable");
  assert.equal(pkg.license, "Apache-2.0");
  assert.equal(pkg.type, "module");
  assert.deepEqual(pkg.exports["."], { types: "./intellia-token-client.d.ts", default: "./intellia-token-client.js" });
  assert.deepEqual(pkg.exports["./global"], {
    types: "./intellia-token-client.global.d.ts",
    default: "./intellia-token-client.global.js",
  });
  assert.equal(pkg.types, "./intellia-token-client.d.ts");
  // Bundlers may drop the module when unused; the global build exists for its side effect.
  assert.deepEqual(pkg.sideEffects, ["./intellia-token-client.global.js"]);
  const cargo = readFileSync(join(here, "../../Cargo.toml"), "utf8");
  assert.equal(pkg.version, /^version = "(.+)"$/m.exec(cargo)[1], "released together with the broker: one version");
});

test("LICENSE is the repository's LICENSE", () => {
  assert.equal(readFileSync(join(here, "LICENSE"), "utf8"), readFileSync(join(here, "../../LICENSE"), "utf8"));
});

test("npm pack --dry-run: exactly the module, the global build, both declarations, README, LICENSE", () => {
  const out = execFileSync(npm, ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: here, encoding: "utf8" });
  const files = JSON.parse(out)[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, PACKED);
});

test("types: module users get no globals, the global build's users get them (tsc on the packed package)", () => {
  const tsc = join(here, "node_modules/typescript/bin/tsc");
  assert.ok(existsSync(tsc), "TypeScript missing: run `npm ci` in clients/js (scripts/test.sh js does)");
  const work = mkdtempSync(join(tmpdir(), "itb-js-types-"));
  try {
    execFileSync(npm, ["pack", "--ignore-scripts", "--pack-destination", work], { cwd: here, stdio: "ignore" });
    const tarball = readdirSync(work).find((f) => f.endsWith(".tgz"));
    const consumer = join(work, "consumer");
    const installed = join(consumer, "node_modules/@intellia/token-client");
    mkdirSync(installed, { recursive: true });
    execFileSync("tar", ["xzf", join(work, tarball), "-C", installed, "--strip-components=1"]);
    cpSync(join(here, "test/types"), consumer, { recursive: true });
    writeFileSync(join(consumer, "package.json"), JSON.stringify({ type: "module", private: true }));
    for (const project of ["tsconfig.json", "tsconfig.global.json"]) {
      try {
        execFileSync(process.execPath, [tsc, "-p", project], { cwd: consumer, encoding: "utf8" });
      } catch (e) {
        assert.fail(`tsc -p ${project}:\n${e.stdout}${e.stderr}`);
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
