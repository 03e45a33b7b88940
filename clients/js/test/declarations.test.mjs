// intellia-token-client.d.ts must describe what the module really exports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as mod from "../intellia-token-client.js";

const dts = readFileSync(new URL("../intellia-token-client.d.ts", import.meta.url), "utf8");

function declaredMethods(className) {
  const start = dts.indexOf(`export class ${className}`);
  assert.ok(start >= 0, `${className} is declared`);
  const body = dts.slice(start, dts.indexOf("\n}\n", start));
  return new Set([...body.matchAll(/^ {2}([a-zA-Z]\w*)\(/gm)].map((m) => m[1]).filter((n) => n !== "constructor"));
}

test("every public method of IntelliaTokenClient is declared, and nothing else", () => {
  const actual = Object.getOwnPropertyNames(mod.IntelliaTokenClient.prototype).filter(
    (n) => n !== "constructor" && !n.startsWith("_"),
  );
  assert.deepEqual([...declaredMethods("IntelliaTokenClient")].sort(), actual.sort());
});

test("the declared exports exist", () => {
  assert.equal(typeof mod.IntelliaTokenClient, "function");
  assert.equal(typeof mod.IntelliaTokenError, "function");
  assert.equal(mod.default, mod.IntelliaTokenClient);
  assert.match(dts, /export default IntelliaTokenClient;/);
});

test("every option the client reads is declared", () => {
  const src = readFileSync(new URL("../intellia-token-client.js", import.meta.url), "utf8");
  const read = new Set([...src.matchAll(/options\.([a-zA-Z]+)/g)].map((m) => m[1]));
  const start = dts.indexOf("export interface IntelliaTokenClientOptions");
  const body = dts.slice(start, dts.indexOf("\n}\n", start));
  const declared = new Set([...body.matchAll(/^ {2}([a-zA-Z]+)\??:/gm)].map((m) => m[1]));
  for (const name of read) assert.ok(declared.has(name), `option ${name} is declared`);
});

test("every IntelliaTokenError field is declared", () => {
  const e = new mod.IntelliaTokenError("m", { status: 1, code: "c", retryAfterSecs: 1, requestId: "r", title: "t", detail: "d" });
  const start = dts.indexOf("export class IntelliaTokenError");
  const body = dts.slice(start, dts.indexOf("\n}\n", start));
  for (const key of Object.keys(e)) assert.match(body, new RegExp(`^ {2}(readonly )?${key}\\??:`, "m"), `${key} is declared`);
});
