// Compiled by test/types.test.mjs (tsc --noEmit): a page that loads the classic-script build.
/// <reference types="@intellia/token-client/global" />

const fromWindow = new window.IntelliaTokenClient({ endpoint: "https://broker.example.com/v1/token" });
const bare = new IntelliaTokenClient({ endpoint: "https://broker.example.com/v1/token" });
void fromWindow.getToken({ signal: AbortSignal.timeout(1000) }).catch((e: unknown) => e instanceof IntelliaTokenError);
void bare.peek();

export {};
