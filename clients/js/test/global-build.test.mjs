// The classic-script build is generated from the ES module and must never go stale.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";
import { buildGlobal, ESM_PATH, GLOBAL_PATH } from "../build-global.mjs";

test("the committed global build matches the ES module (run `node clients/js/build-global.mjs`)", () => {
  const expected = buildGlobal(readFileSync(ESM_PATH, "utf8"));
  const committed = readFileSync(GLOBAL_PATH, "utf8");
  assert.ok(committed === expected, "intellia-token-client.global.js is stale: run `node clients/js/build-global.mjs`");
});

test("the build refuses export forms it cannot translate", () => {
  assert.throws(() => buildGlobal("export { a };\n"), /unsupported export/);
  assert.throws(() => buildGlobal('import x from "y";\n'), /imports are not supported/);
});

test("the global build, run as a classic script, sets globalThis.IntelliaTokenClient and works", async () => {
  const sandbox = { Response, Headers, AbortController, Error, TypeError, Date, Math, JSON, Promise, setTimeout, clearTimeout };
  sandbox.globalThis = sandbox;
  vm.createContext(sandbox);
  vm.runInContext(readFileSync(GLOBAL_PATH, "utf8"), sandbox, { filename: "intellia-token-client.global.js" });
  const { IntelliaTokenClient, IntelliaTokenError } = sandbox;
  assert.equal(typeof IntelliaTokenClient, "function");
  assert.equal(IntelliaTokenClient.IntelliaTokenError, IntelliaTokenError);
  const calls = [];
  const client = new IntelliaTokenClient({
    endpoint: "https://broker.example.com/v1/token",
    fetch: async (url, init) => {
      calls.push(init);
      return new Response(JSON.stringify({ token: "t", expiresAt: "x", expiresIn: 60, userId: "u", organizationId: "o", role: "chat" }), { status: 200 });
    },
  });
  const t = await client.getToken();
  assert.equal(t.token, "t");
  assert.equal(calls.length, 1);
  client.stop();
  await assert.rejects(client.getToken(), (e) => e instanceof IntelliaTokenError && e.code === "client_stopped");
});
