// Compiled by test/types.test.mjs (tsc --noEmit): how an ES module user sees the package.
import { IntelliaTokenClient, IntelliaTokenError, type IntelliaToken } from "@intellia/token-client";
import DefaultClient from "@intellia/token-client";

const client: IntelliaTokenClient = new DefaultClient({ endpoint: "https://broker.example.com/v1/token" });
const controller = new AbortController();
const pending: Promise<IntelliaToken> = client.getToken({ signal: controller.signal, forceRefresh: false });
void pending.catch((e: unknown) => (e instanceof IntelliaTokenError ? e.code : String(e)));
void client.getToken({ signal: AbortSignal.timeout(5000) });

// @ts-expect-error a signal must be an AbortSignal
void client.getToken({ signal: 5 });

// Importing the module adds no globals: these must not compile.
// @ts-expect-error no global IntelliaTokenClient for module users
void globalThis.IntelliaTokenClient;
// @ts-expect-error no global IntelliaTokenError for module users
void window.IntelliaTokenError;
