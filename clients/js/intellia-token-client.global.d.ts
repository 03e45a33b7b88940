// Type declarations for the classic-script build, intellia-token-client.global.js: the globals it
// sets. A script-mode file (no top-level import or export), apart from the module's declarations,
// so that only a program that asks for them sees them:
//   /// <reference types="@intellia/token-client/global" />
// or, in tsconfig.json, "types": ["@intellia/token-client/global"].

/** Set by intellia-token-client.global.js (so also `window.IntelliaTokenClient`). */
declare var IntelliaTokenClient: typeof import("./intellia-token-client.js").IntelliaTokenClient;
/** Set by intellia-token-client.global.js (also IntelliaTokenClient.IntelliaTokenError). */
declare var IntelliaTokenError: typeof import("./intellia-token-client.js").IntelliaTokenError;

