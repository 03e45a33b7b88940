#!/usr/bin/env node
// Test-only OpenID provider for intellia-token-broker's integration tests.
//
// A real `oidc-provider` (panva) instance on 127.0.0.1 plus a test-only control API under
// /__control (token minting, key rotation, outage simulation, request counters).
// See README.md next to this file. NEVER expose this outside of tests.
//
// stdout carries exactly one line: the JSON "ready" line. Everything else goes to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

// oidc-provider prints notices with console.info (stdout); keep stdout for the ready line only.
// This must happen before oidc-provider is imported.
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

const { default: Provider, errors } = await import('oidc-provider');

// ---------------------------------------------------------------------------------------------
// command line / environment

function parseArgs(argv) {
  const opts = { port: 0, stdinExit: 'auto' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      i += 1;
      if (i >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[i];
    };
    switch (flag) {
      case '--port': {
        const v = value();
        const port = Number(v);
        if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad --port ${v}`);
        opts.port = port;
        break;
      }
      case '--no-stdin-exit':
        opts.stdinExit = 'off';
        break;
      case '--stdin-exit':
        opts.stdinExit = 'on';
        break;
      case '-h':
      case '--help':
        process.stderr.write('usage: node server.mjs [--port N] [--no-stdin-exit|--stdin-exit]\n');
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${arg}`);
    }
  }
  return opts;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`oidc-fixture: ${err.message}\n`);
  process.exit(2);
}

const HOST = '127.0.0.1';
const BROKER_SECRET = process.env.OIDC_BROKER_SECRET || 'broker-secret';
const WIDGET_SECRET = process.env.OIDC_WIDGET_SECRET || 'widget-secret';
const JWT_CLIENT_ID = 'broker-jwt'; // resource server authenticating with private_key_jwt (RFC 7523)
const VERBOSE = !!process.env.OIDC_FIXTURE_LOG;
const log = (...args) => process.stderr.write(`oidc-fixture: ${args.join(' ')}\n`);

// ---------------------------------------------------------------------------------------------
// storage shared by every Provider instance (survives key rotation)

const store = new Map(); // "Model:id" -> { payload, expiresAt (ms) }
const grantIndex = new Map(); // grantId -> Set("Model:id")
const GRANTABLE = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode',
]);
const SLACK_MS = 60_000; // keep expired entries a little longer; the models check exp themselves

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

class SharedMemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = typeof expiresIn === 'number'
      ? Date.now() + expiresIn * 1000 + SLACK_MS
      : Infinity;
    store.set(key, { payload, expiresAt });
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
    if (this.model === 'Session' && payload.uid) {
      store.set(`sessionUid:${payload.uid}`, { payload: id, expiresAt });
    }
    if (payload.userCode) {
      store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
    }
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    const id = live(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = live(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const members = grantIndex.get(grantId);
    if (!members) return;
    for (const key of members) {
      if (key.startsWith(`${this.model}:`)) {
        store.delete(key);
        members.delete(key);
      }
    }
    if (members.size === 0) grantIndex.delete(grantId);
  }
}

setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) {
    if (entry.expiresAt <= now) store.delete(key);
  }
  for (const [grantId, members] of grantIndex) {
    for (const key of members) if (!store.has(key)) members.delete(key);
    if (members.size === 0) grantIndex.delete(grantId);
  }
}, 30_000).unref();

// ---------------------------------------------------------------------------------------------
// accounts: created/updated by POST /__control/token

const accounts = new Map(); // sub -> claims object (without sub)
const tokenClaims = new WeakMap(); // AccessToken instance -> claims to embed (set while minting)

const SCOPE_CLAIMS = {
  email: ['email', 'email_verified'],
  profile: [
    'name', 'family_name', 'given_name', 'middle_name', 'nickname', 'preferred_username',
    'profile', 'picture', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at',
  ],
  address: ['address'],
  phone: ['phone_number', 'phone_number_verified'],
};
const STANDARD_CLAIMS = new Set(Object.values(SCOPE_CLAIMS).flat());
// Names a minted token may not carry as extra claims: the provider sets them itself.
const RESERVED = new Set([
  'iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id', 'scope', 'active', 'token_type',
  'cnf', 'authorization_details',
]);
// Token-only claims (never part of the account / userinfo).
const TOKEN_ONLY = new Set(['nbf', 'acr', 'amr', 'auth_time', 'sid', 'azp']);
// Custom (non-standard) claims returned by userinfo under the "openid" scope. Pre-seeded with the
// usual suspects; a mint that introduces a new name rebuilds the provider so userinfo returns it.
const customClaims = new Set([
  'groups', 'roles',
  'urn:zitadel:iam:user:resourceowner:id',
  'urn:zitadel:iam:user:resourceowner:name',
  'urn:zitadel:iam:user:resourceowner:primary_domain',
  'urn:zitadel:iam:org:project:roles',
]);

// ---------------------------------------------------------------------------------------------
// keys

// Node 20 can deadlock for good when the garbage collector frees a key-generation job while a
// JWK export of the key that job made holds the key's lock (seen in a test run: the main thread
// in ~KeyGenJob, called from a GC inside ExportJWKRsaKey). So every pair is generated here, and
// the finished job collected at once, before anything exports the key.
v8.setFlagsFromString('--expose-gc');
const collectGarbage = vm.runInNewContext('gc');
if (typeof collectGarbage !== 'function') throw new Error('--expose-gc did not take effect');

function generateKeyPair(type, options) {
  const pair = crypto.generateKeyPairSync(type, options);
  collectGarbage();
  return pair;
}

const SIGNING_ALGS = ['RS256', 'ES256', 'EdDSA'];
let generation = 0;
let keySets = []; // newest first: [{ generation, keys: [privateJwk...] }]

function newKeySet() {
  generation += 1;
  const tag = `g${generation}-${crypto.randomBytes(4).toString('hex')}`;
  const rsa = generateKeyPair('rsa', { modulusLength: 2048 }).privateKey;
  const ec = generateKeyPair('ec', { namedCurve: 'P-256' }).privateKey;
  const ed = generateKeyPair('ed25519').privateKey;
  return {
    generation,
    keys: [
      { ...rsa.export({ format: 'jwk' }), kid: `rs256-${tag}`, alg: 'RS256', use: 'sig' },
      { ...ec.export({ format: 'jwk' }), kid: `es256-${tag}`, alg: 'ES256', use: 'sig' },
      { ...ed.export({ format: 'jwk' }), kid: `eddsa-${tag}`, alg: 'EdDSA', use: 'sig' },
    ],
  };
}

const kidsOf = (sets) => sets.flatMap((s) => s.keys.map((k) => k.kid));
const signingKids = () => Object.fromEntries(keySets[0].keys.map((k) => [k.alg, k.kid]));

// ---------------------------------------------------------------------------------------------
// private_key_jwt client keys (the "broker-jwt" client), shaped like Zitadel's downloaded key JSON

// Zitadel ids are 18-digit decimal snowflakes.
const zitadelId = () => String(100_000_000_000_000_000n
  + (BigInt(`0x${crypto.randomBytes(8).toString('hex')}`) % 900_000_000_000_000_000n));

function newClientKey({ keyId = zitadelId(), appId = zitadelId() } = {}) {
  const { privateKey, publicKey } = generateKeyPair('rsa', { modulusLength: 2048 });
  return {
    keyId,
    appId,
    privateKey,
    publicJwk: { ...publicKey.export({ format: 'jwk' }), kid: keyId, alg: 'RS256', use: 'sig' },
  };
}

// Registered keys (newest first; the client's `jwks`), and one unregistered "wrong" key with the
// same keyId/appId as the current one (a signature the provider cannot verify).
let clientKeys = [newClientKey()];
let wrongClientKey = newClientKey({ keyId: clientKeys[0].keyId, appId: clientKeys[0].appId });

function clientKeyShapes(k) {
  const pkcs1 = k.privateKey.export({ type: 'pkcs1', format: 'pem' });
  return {
    client_id: JWT_CLIENT_ID,
    key_id: k.keyId,
    app_id: k.appId,
    zitadel_json: { type: 'application', keyId: k.keyId, key: pkcs1, appId: k.appId, clientId: JWT_CLIENT_ID },
    pkcs8_pem: k.privateKey.export({ type: 'pkcs8', format: 'pem' }),
    pkcs1_pem: pkcs1,
    public_jwk: k.publicJwk,
  };
}

// Which `aud` values a client assertion may carry: "any" = oidc-provider's rule (the issuer, the
// token endpoint URL or the URL of the endpoint called), "issuer" = the issuer only (Zitadel's rule).
let assertionAudience = 'any';
const MAX_ASSERTION_LIFETIME = 3600; // exp may be at most this many seconds ahead (Zitadel: 1 h)

// Every client assertion received (decoded header + claims, never the signed JWT), newest last.
let assertions = [];
const MAX_ASSERTIONS = 1000;

function recordAssertion(ctx, route) {
  const raw = ctx.oidc?.params?.client_assertion;
  if (typeof raw !== 'string') return;
  const entry = {
    at: Date.now(),
    endpoint: route,
    path: ctx.path,
    client_assertion_type: ctx.oidc.params.client_assertion_type ?? null,
    header: null,
    claims: null,
    status: ctx.status,
    error: ctx.status >= 400 ? (ctx.body?.error ?? null) : null,
    error_detail: ctx.state.fixtureErrorDetail ?? null,
  };
  const parts = raw.split('.');
  try {
    entry.header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    entry.claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    entry.decode_error = 'client_assertion is not a decodable JWS';
  }
  assertions.push(entry);
  if (assertions.length > MAX_ASSERTIONS) assertions.shift();
}

// ---------------------------------------------------------------------------------------------
// provider

const cookieKeys = [crypto.randomBytes(32).toString('base64url')];
let issuer;
let current; // { provider, callback }

function buildProvider() {
  const openidClaims = ['sub', ...customClaims];
  const provider = new Provider(issuer, {
    adapter: SharedMemoryAdapter,
    jwks: { keys: keySets.flatMap((s) => s.keys).map((k) => ({ ...k })) },
    clients: [
      {
        client_id: 'broker',
        client_secret: BROKER_SECRET,
        client_name: 'intellia-token-broker (resource server)',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        // oidc-provider 9 authenticates introspection and revocation with the token endpoint's
        // method: this is the introspection auth method too.
        client_id: JWT_CLIENT_ID,
        client_name: 'intellia-token-broker (resource server, private_key_jwt)',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'RS256',
        jwks: { keys: clientKeys.map((k) => ({ ...k.publicJwk })) },
      },
      {
        client_id: 'widget-site',
        client_secret: WIDGET_SECRET,
        client_name: 'Widget site (confidential client)',
        grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
        response_types: ['code'],
        redirect_uris: [`${issuer}/__control/callback`],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    cookies: { keys: cookieKeys },
    claims: {
      acr: null, sid: null, auth_time: null, iss: null,
      openid: openidClaims,
      ...SCOPE_CLAIMS,
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'address', 'phone', 'chat'],
    features: {
      devInteractions: { enabled: false },
      introspection: {
        enabled: true,
        // any authenticated confidential client (the "broker" resource server) may introspect
        allowedPolicy: async (_ctx, client) => client.clientAuthMethod !== 'none',
      },
      revocation: {
        enabled: true,
        // the token's own client, or a resource server ("broker", "broker-jwt"), may revoke it
        allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId
          || client.clientId === 'broker' || client.clientId === JWT_CLIENT_ID,
      },
      userinfo: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => false,
        // Real grants (client_credentials with resource=...) get JWT access tokens with aud = the
        // resource indicator, signed RS256 by the current key.
        getResourceServerInfo: async (_ctx, resourceIndicator) => ({
          scope: 'chat openid email profile',
          audience: resourceIndicator,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    clientBasedCORS: () => true,
    // Zitadel-like strictness on top of oidc-provider's own checks (alg RS256 as registered, iss =
    // sub = client_id, aud, signature by a registered key, exp with 15 s tolerance, jti unique).
    async assertJwtClientAuthClaimsAndHeader(_ctx, claims, header) {
      const fail = (detail) => {
        throw new errors.InvalidClientAuth(detail);
      };
      if (typeof header.kid !== 'string' || !header.kid) fail('kid must be set in the client_assertion header');
      if (claims.sub !== claims.iss) fail('sub must equal iss (the client_id)');
      if (typeof claims.iat !== 'number') fail('iat must be provided in the client_assertion JWT');
      const now = Math.floor(Date.now() / 1000);
      if (claims.exp > now + MAX_ASSERTION_LIFETIME) fail(`exp may be at most ${MAX_ASSERTION_LIFETIME} s ahead`);
      if (assertionAudience === 'issuer' && (Array.isArray(claims.aud) ? !claims.aud.includes(issuer) : claims.aud !== issuer)) {
        fail('aud must be the issuer');
      }
    },
    async findAccount(_ctx, sub) {
      const claims = accounts.get(sub);
      if (!claims) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { ...structuredClone(claims), sub };
        },
      };
    },
    async extraTokenClaims(_ctx, token) {
      const claims = tokenClaims.get(token) ?? (token.accountId ? accounts.get(token.accountId) : undefined);
      if (!claims || Object.keys(claims).length === 0) return undefined;
      return structuredClone(claims);
    },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL || 3600,
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL || 600,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 14 * 24 * 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
      DeviceCode: 600,
      BackchannelAuthenticationRequest: 600,
    },
  });
  provider.on('server_error', (_ctx, err) => log('server_error:', err?.stack || err));
  // Record client assertions with their outcome (error detail from the route's error event).
  for (const ev of ['introspection.error', 'grant.error', 'revocation.error', 'pushed_authorization_request.error', 'backchannel_authentication.error']) {
    provider.on(ev, (ctx, err) => {
      ctx.state.fixtureErrorDetail = err?.error_detail ?? err?.message ?? null;
    });
  }
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method === 'POST' && ctx.oidc?.params?.client_assertion !== undefined) {
      recordAssertion(ctx, paths[ctx.path] ?? ctx.oidc.route ?? 'other');
    }
  });
  if (VERBOSE) {
    for (const ev of ['introspection.error', 'userinfo.error', 'revocation.error', 'grant.error', 'jwks.error', 'discovery.error']) {
      provider.on(ev, (_ctx, err) => log(`${ev}:`, err?.message || err));
    }
  }
  return { provider, callback: provider.callback() };
}

function swapProvider() {
  current = buildProvider();
}

// ---------------------------------------------------------------------------------------------
// minting (POST /__control/token)

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v)
  && Object.getPrototypeOf(v) === Object.prototype;

async function mint(body) {
  if (!isPlainObject(body)) throw new HttpError(400, 'body must be a JSON object');
  const {
    sub, email, name, format = 'jwt', ttl = 3600, alg = 'RS256',
    scope = 'openid email profile', client_id: clientId = 'widget-site',
    extra_claims: extraClaims = {},
  } = body;
  const audience = 'audience' in body ? body.audience : 'chat-widget';

  if (typeof sub !== 'string' || !sub) throw new HttpError(400, '"sub" must be a non-empty string');
  if (format !== 'jwt' && format !== 'opaque') throw new HttpError(400, '"format" must be "jwt" or "opaque"');
  if (!Number.isInteger(ttl)) throw new HttpError(400, '"ttl" must be an integer (seconds; <= 0 mints an already expired token)');
  if (!SIGNING_ALGS.includes(alg)) throw new HttpError(400, `"alg" must be one of ${SIGNING_ALGS.join(', ')}`);
  if (typeof scope !== 'string' || !/^[\x21\x23-\x5B\x5D-\x7E]+( [\x21\x23-\x5B\x5D-\x7E]+)*$/.test(scope)) throw new HttpError(400, '"scope" must be space-separated scope tokens');
  if (audience !== null && (typeof audience !== 'string' || !audience)) throw new HttpError(400, '"audience" must be a non-empty string or null');
  if (format === 'jwt' && audience === null) throw new HttpError(400, 'JWT access tokens need an audience');
  if (email !== undefined && email !== null && typeof email !== 'string') throw new HttpError(400, '"email" must be a string');
  if (name !== undefined && name !== null && typeof name !== 'string') throw new HttpError(400, '"name" must be a string');
  if (!isPlainObject(extraClaims)) throw new HttpError(400, '"extra_claims" must be an object');
  for (const claim of Object.keys(extraClaims)) {
    if (RESERVED.has(claim)) throw new HttpError(400, `"extra_claims" may not set "${claim}" (set by the provider)`);
  }

  const claims = structuredClone(extraClaims);
  if (typeof email === 'string') claims.email = email;
  if (typeof name === 'string') claims.name = name;

  const profile = Object.fromEntries(Object.entries(claims).filter(([k]) => !TOKEN_ONLY.has(k)));
  accounts.set(sub, profile);
  const fresh = Object.keys(profile).filter((k) => !STANDARD_CLAIMS.has(k) && !customClaims.has(k));
  if (fresh.length) {
    fresh.forEach((k) => customClaims.add(k));
    swapProvider(); // so that userinfo also returns the new claim names
  }

  const { provider } = current;
  const client = await provider.Client.find(clientId);
  if (!client) throw new HttpError(400, `unknown client_id ${clientId}`);

  const now = Math.floor(Date.now() / 1000);
  const exp = now + ttl;

  // A grant of its own per token (revoking one token revokes its grant's tokens only).
  const grant = new provider.Grant({
    accountId: sub,
    clientId,
    expiresIn: Math.max(ttl, 0) + 3600,
  });
  grant.addOIDCScope(scope);
  if (audience !== null) grant.addResourceScope(audience, scope);
  const grantId = await grant.save();

  const resourceServer = audience === null ? undefined : new provider.ResourceServer(audience, {
    audience,
    scope,
    accessTokenFormat: format,
    accessTokenTTL: ttl > 0 ? ttl : undefined,
    jwt: { sign: { alg } },
  });

  const token = new provider.AccessToken({
    accountId: sub,
    client,
    grantId,
    scope,
    gty: 'control',
    ...(resourceServer ? { resourceServer } : undefined),
  });
  token.iat = exp <= now ? exp - 60 : now;
  token.exp = exp;
  tokenClaims.set(token, claims);

  const value = await token.save();

  const out = {
    access_token: value,
    token_type: 'Bearer',
    expires_in: ttl,
    scope,
    format,
    sub,
    client_id: clientId,
    jti: token.jti,
    exp,
  };
  if (audience !== null) out.aud = audience;
  if (format === 'jwt') {
    out.alg = alg;
    out.kid = JSON.parse(Buffer.from(value.split('.')[0], 'base64url').toString()).kid;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// state for /__control

let paths; // pathname -> counter name
const counters = () => ({
  discovery: 0, jwks: 0, token: 0, introspection: 0, revocation: 0, userinfo: 0, other: 0,
});
let stats = { counts: counters(), by_path: {}, times: {}, since: Date.now() };
const outage = { down: false, mode: '503' };
let latencyMs = 0;
const hung = new Set();

function count(pathname) {
  const name = paths[pathname] ?? 'other';
  stats.counts[name] += 1;
  stats.by_path[pathname] = (stats.by_path[pathname] ?? 0) + 1;
  const times = (stats.times[name] ??= []);
  times.push(Date.now());
  if (times.length > 100) times.shift();
}

function info() {
  const { provider } = current;
  return {
    issuer,
    port: Number(new URL(issuer).port),
    discovery_url: `${issuer}/.well-known/openid-configuration`,
    jwks_uri: provider.urlFor('jwks'),
    token_endpoint: provider.urlFor('token'),
    introspection_endpoint: provider.urlFor('introspection'),
    revocation_endpoint: provider.urlFor('revocation'),
    userinfo_endpoint: provider.urlFor('userinfo'),
    control: `${issuer}/__control`,
    pid: process.pid,
  };
}

function acceptedAudiences() {
  if (assertionAudience === 'issuer') return [issuer];
  const { provider } = current;
  return [issuer, provider.urlFor('token'), provider.urlFor('introspection'), provider.urlFor('revocation')];
}

function clientKeyInfo() {
  return {
    ...clientKeyShapes(clientKeys[0]),
    registered_key_ids: clientKeys.map((k) => k.keyId),
    token_endpoint_auth_method: 'private_key_jwt',
    alg: 'RS256',
    assertion_audience: assertionAudience,
    accepted_audiences: acceptedAudiences(),
    max_assertion_lifetime_secs: MAX_ASSERTION_LIFETIME,
    wrong: clientKeyShapes(wrongClientKey),
  };
}

function keysInfo() {
  return {
    signing_kids: signingKids(),
    kids: kidsOf(keySets),
    generations: keySets.map((s) => s.generation),
  };
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) throw new HttpError(413, 'body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, 'body is not valid JSON');
  }
}

function send(res, status, body) {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function releaseHung() {
  for (const req of hung) req.socket.destroy();
  hung.clear();
}

async function control(req, res, url) {
  const route = url.pathname.replace(/\/+$/, '') || '/__control';
  const method = req.method;
  const is = (m, p) => method === m && route === p;

  if (is('GET', '/__control')) return send(res, 200, { ...info(), ...keysInfo(), down: outage.down });

  if (is('POST', '/__control/token')) return send(res, 200, await mint(await readJson(req)));

  if (is('POST', '/__control/rotate')) {
    const dropOld = ['1', 'true', 'yes'].includes(url.searchParams.get('drop_old') ?? '');
    const previous = kidsOf(keySets);
    const set = newKeySet();
    keySets = dropOld ? [set] : [set, ...keySets];
    swapProvider();
    const published = new Set(kidsOf(keySets));
    return send(res, 200, {
      ...keysInfo(),
      previous_kids: previous,
      dropped_kids: previous.filter((k) => !published.has(k)),
    });
  }

  if (is('POST', '/__control/drop_old')) {
    const previous = kidsOf(keySets.slice(1));
    keySets = keySets.slice(0, 1);
    swapProvider();
    return send(res, 200, { ...keysInfo(), dropped_kids: previous });
  }

  if (is('GET', '/__control/keys')) return send(res, 200, keysInfo());

  if (is('POST', '/__control/down')) {
    const body = await readJson(req);
    const mode = body.mode ?? url.searchParams.get('mode') ?? '503';
    if (!['503', 'close', 'hang'].includes(String(mode))) throw new HttpError(400, '"mode" must be "503", "close" or "hang"');
    outage.down = true;
    outage.mode = String(mode);
    return send(res, 200, { down: true, mode: outage.mode });
  }

  if (is('POST', '/__control/up')) {
    outage.down = false;
    releaseHung();
    return send(res, 200, { down: false });
  }

  if (is('POST', '/__control/latency')) {
    const body = await readJson(req);
    const ms = body.ms ?? Number(url.searchParams.get('ms') ?? 0);
    if (!Number.isInteger(ms) || ms < 0 || ms > 600_000) throw new HttpError(400, '"ms" must be an integer 0..600000');
    latencyMs = ms;
    return send(res, 200, { latency_ms: latencyMs });
  }

  if (is('GET', '/__control/stats')) {
    return send(res, 200, { ...stats, now: Date.now(), down: outage.down });
  }

  if (is('POST', '/__control/stats/reset') || is('DELETE', '/__control/stats')) {
    stats = { counts: counters(), by_path: {}, times: {}, since: Date.now() };
    assertions = [];
    return send(res, 200, stats);
  }

  if (is('GET', '/__control/client_key')) return send(res, 200, clientKeyInfo());

  if (is('GET', '/__control/client_key/wrong')) return send(res, 200, clientKeyShapes(wrongClientKey));

  if (is('POST', '/__control/client_key/rotate')) {
    const body = await readJson(req);
    const keepOld = body.keep_old ?? ['1', 'true', 'yes'].includes(url.searchParams.get('keep_old') ?? '');
    if (typeof keepOld !== 'boolean') throw new HttpError(400, '"keep_old" must be a boolean');
    const previous = clientKeys.map((k) => k.keyId);
    const fresh = newClientKey();
    clientKeys = keepOld ? [fresh, ...clientKeys] : [fresh];
    wrongClientKey = newClientKey({ keyId: fresh.keyId, appId: fresh.appId });
    swapProvider();
    return send(res, 200, { ...clientKeyInfo(), previous_key_ids: previous });
  }

  if (is('POST', '/__control/client_auth')) {
    const body = await readJson(req);
    const audience = body.assertion_audience ?? 'any';
    if (!['any', 'issuer'].includes(audience)) throw new HttpError(400, '"assertion_audience" must be "any" or "issuer"');
    assertionAudience = audience;
    return send(res, 200, { assertion_audience: assertionAudience, accepted_audiences: acceptedAudiences() });
  }

  if (is('GET', '/__control/assertions')) {
    return send(res, 200, { assertions, count: assertions.length });
  }

  if (is('DELETE', '/__control/assertions') || is('POST', '/__control/assertions/reset')) {
    assertions = [];
    return send(res, 200, { assertions, count: 0 });
  }

  return send(res, 404, { error: 'not_found', error_description: `no control route ${method} ${route}` });
}

// ---------------------------------------------------------------------------------------------
// server

async function handle(req, res) {
  let url;
  try {
    url = new URL(req.url, issuer);
  } catch {
    return send(res, 400, { error: 'invalid_request' });
  }
  if (VERBOSE) log(req.method, url.pathname);

  if (url.pathname === '/__control' || url.pathname.startsWith('/__control/')) {
    try {
      return await control(req, res, url);
    } catch (err) {
      if (err instanceof HttpError) {
        return send(res, err.status, { error: 'invalid_request', error_description: err.message });
      }
      log('control error:', err?.stack || err);
      return send(res, 500, { error: 'server_error', error_description: String(err?.message || err) });
    }
  }

  count(url.pathname);

  if (outage.down) {
    switch (outage.mode) {
      case 'close':
        req.socket.destroy();
        return undefined;
      case 'hang':
        hung.add(req);
        req.on('close', () => hung.delete(req));
        return undefined;
      default:
        res.setHeader('retry-after', '1');
        return send(res, 503, { error: 'temporarily_unavailable', error_description: 'simulated outage (/__control/down)' });
    }
  }
  if (latencyMs) await new Promise((r) => setTimeout(r, latencyMs));
  return current.callback(req, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    log('unhandled:', err?.stack || err);
    if (!res.headersSent) send(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});
server.keepAliveTimeout = 5000;

let shuttingDown = false;
function shutdown(reason) {
  if (shuttingDown) return;
  shuttingDown = true;
  log(`shutting down (${reason})`);
  releaseHung();
  server.close();
  server.closeAllConnections();
  // Exit promptly; nothing is persisted.
  setImmediate(() => process.exit(0));
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGHUP', () => shutdown('SIGHUP'));

// Exit when the parent goes away: watch stdin when it is a pipe/socket (e.g. Rust
// Stdio::piped(), node spawn stdio 'pipe'). /dev/null, files and TTYs are not watched unless
// --stdin-exit is given.
function watchStdin() {
  let watch = opts.stdinExit === 'on';
  if (opts.stdinExit === 'auto') {
    try {
      const st = fs.fstatSync(0);
      watch = st.isFIFO() || st.isSocket();
    } catch {
      watch = false;
    }
  }
  if (!watch) return false;
  process.stdin.on('data', () => {}); // discard
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
  return true;
}

server.on('error', (err) => {
  log('listen error:', err.message);
  process.exit(1);
});

server.listen(opts.port, HOST, () => {
  try {
    const { port } = server.address();
    issuer = `http://${HOST}:${port}`;
    keySets = [newKeySet()];
    swapProvider();
    const i = info();
    paths = {
      '/.well-known/openid-configuration': 'discovery',
      [new URL(i.jwks_uri).pathname]: 'jwks',
      [new URL(i.token_endpoint).pathname]: 'token',
      [new URL(i.introspection_endpoint).pathname]: 'introspection',
      [new URL(i.revocation_endpoint).pathname]: 'revocation',
      [new URL(i.userinfo_endpoint).pathname]: 'userinfo',
    };
    const watching = watchStdin();
    log(`listening on ${issuer} (pid ${process.pid}; exits on SIGTERM/SIGINT${watching ? ' and when stdin closes' : ''})`);
    process.stdout.write(`${JSON.stringify(i)}\n`);
  } catch (err) {
    log('startup failed:', err?.stack || err);
    process.exit(1);
  }
});
