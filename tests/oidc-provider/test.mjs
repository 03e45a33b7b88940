// Self-test of the OpenID provider fixture: `node --test test.mjs` (or ./run.sh).
// Starts server.mjs as a child process and checks every feature end to end over HTTP.

import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import { once } from 'node:events';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';

const SERVER = join(dirname(fileURLToPath(import.meta.url)), 'server.mjs');
const BROKER = 'Basic ' + Buffer.from('broker:broker-secret').toString('base64');
const WIDGET = 'Basic ' + Buffer.from('widget-site:widget-secret').toString('base64');

// Start the fixture; resolves with { child, ready, stdoutLines, stderr() }.
async function startFixture(args = ['--port', '0'], { stdin = 'pipe' } = {}) {
  const child = spawn(process.execPath, [SERVER, ...args], {
    stdio: [stdin, 'pipe', 'pipe'],
    env: { ...process.env, OIDC_BROKER_SECRET: '', OIDC_WIDGET_SECRET: '' },
  });
  let err = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { err += d; });
  const stdoutLines = [];
  let buf = '';
  child.stdout.setEncoding('utf8');
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fixture not ready in 10 s; stderr:\n${err}`)), 10_000);
    child.stdout.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        stdoutLines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (stdoutLines.length === 1) {
          clearTimeout(timer);
          resolve(JSON.parse(stdoutLines[0]));
        }
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`fixture exited early (${code}); stderr:\n${err}`));
    });
  });
  return { child, ready: await ready, stdoutLines, stderr: () => err };
}

async function waitExit(child, ms = 5000) {
  if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, signal: child.signalCode };
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  const [code, signal] = await once(child, 'exit');
  clearTimeout(timer);
  return { code, signal };
}

const json = async (res) => {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`not JSON (${res.status}): ${text}`);
  }
};

function b64json(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// Verify a JWS with node:crypto only (independent of jose).
function verifyWithNodeCrypto(jwt, jwks) {
  const [h, p, s] = jwt.split('.');
  const header = b64json(h);
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  if (!jwk) return false;
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const data = Buffer.from(`${h}.${p}`);
  const sig = Buffer.from(s, 'base64url');
  switch (header.alg) {
    case 'RS256': return crypto.verify('sha256', data, key, sig);
    case 'ES256': return crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
    case 'EdDSA': return crypto.verify(null, data, key, sig);
    default: throw new Error(`unexpected alg ${header.alg}`);
  }
}

describe('oidc-provider fixture', () => {
  let fx;
  let R; // ready line
  const base = () => R.issuer;
  const ctl = (path, body, method = 'POST') => fetch(`${R.control}${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const mint = async (body) => {
    const res = await ctl('/token', body);
    const out = await json(res);
    assert.equal(res.status, 200, JSON.stringify(out));
    return out;
  };
  const jwks = async () => json(await fetch(R.jwks_uri));
  const introspect = async (token, auth = BROKER) => {
    const res = await fetch(R.introspection_endpoint, {
      method: 'POST',
      headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
    });
    return { status: res.status, body: await json(res) };
  };
  const verify = async (jwt, opts = {}) => jose.jwtVerify(jwt, jose.createLocalJWKSet(await jwks()), {
    issuer: R.issuer,
    audience: 'chat-widget',
    typ: 'at+jwt',
    ...opts,
  });

  before(async () => {
    fx = await startFixture();
    R = fx.ready;
  });

  after(async () => {
    if (fx) {
      fx.child.kill('SIGTERM');
      await waitExit(fx.child);
    }
  });

  test('ready line: one JSON line with the endpoints', () => {
    assert.equal(fx.stdoutLines.length, 1);
    assert.match(R.issuer, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(R.issuer, `http://127.0.0.1:${R.port}`);
    assert.ok(R.port > 0);
    for (const k of ['jwks_uri', 'token_endpoint', 'introspection_endpoint', 'revocation_endpoint', 'userinfo_endpoint', 'discovery_url']) {
      assert.ok(R[k].startsWith(`${R.issuer}/`), k);
    }
    assert.equal(R.control, `${R.issuer}/__control`);
  });

  test('discovery document', async () => {
    const res = await fetch(`${base()}/.well-known/openid-configuration`);
    assert.equal(res.status, 200);
    const d = await json(res);
    assert.equal(d.issuer, R.issuer);
    assert.equal(d.jwks_uri, R.jwks_uri);
    assert.equal(d.token_endpoint, R.token_endpoint);
    assert.equal(d.introspection_endpoint, R.introspection_endpoint);
    assert.equal(d.revocation_endpoint, R.revocation_endpoint);
    assert.equal(d.userinfo_endpoint, R.userinfo_endpoint);
    // oidc-provider 9 uses the token endpoint's auth methods for introspection/revocation too
    assert.ok(d.token_endpoint_auth_methods_supported.includes('client_secret_basic'));
    assert.ok(d.id_token_signing_alg_values_supported.includes('RS256'));
    assert.ok(d.id_token_signing_alg_values_supported.includes('ES256'));
    assert.ok(d.claims_supported.includes('email'));
    assert.ok(d.claims_supported.includes('urn:zitadel:iam:user:resourceowner:id'));
  });

  test('JWKS: RS256, ES256 and EdDSA public keys with distinct kids', async () => {
    const res = await fetch(R.jwks_uri);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /application\/jwk-set\+json/);
    const { keys } = await json(res);
    assert.equal(keys.length, 3);
    assert.deepEqual(keys.map((k) => k.alg).sort(), ['ES256', 'EdDSA', 'RS256']);
    assert.equal(new Set(keys.map((k) => k.kid)).size, keys.length);
    for (const k of keys) {
      assert.equal(k.use, 'sig');
      for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi']) assert.equal(k[priv], undefined, `${k.kid} leaks ${priv}`);
    }
  });

  test('JWT access tokens (RS256, ES256, EdDSA) verify against the JWKS and carry the claims', async () => {
    const { keys } = await jwks();
    for (const alg of ['RS256', 'ES256', 'EdDSA']) {
      const t = await mint({
        sub: 'alice',
        email: 'alice@example.com',
        name: 'Alice',
        format: 'jwt',
        audience: 'chat-widget',
        ttl: 3600,
        alg,
        scope: 'openid email profile',
        extra_claims: {
          'urn:zitadel:iam:user:resourceowner:id': 'org-1',
          groups: ['staff', 'chat'],
          org: { id: 'o1', roles: { admin: true } },
        },
      });
      assert.equal(t.token_type, 'Bearer');
      assert.equal(t.expires_in, 3600);
      const [h] = t.access_token.split('.');
      const header = b64json(h);
      assert.equal(header.alg, alg);
      assert.equal(header.typ, 'at+jwt');
      assert.equal(header.kid, keys.find((k) => k.alg === alg).kid);
      assert.equal(t.kid, header.kid);

      assert.ok(verifyWithNodeCrypto(t.access_token, { keys }), `node:crypto verify ${alg}`);
      const { payload } = await verify(t.access_token, { algorithms: [alg] });
      assert.equal(payload.iss, R.issuer);
      assert.equal(payload.sub, 'alice');
      assert.equal(payload.aud, 'chat-widget');
      assert.equal(payload.client_id, 'widget-site');
      assert.equal(payload.scope, 'openid email profile');
      assert.equal(payload.email, 'alice@example.com');
      assert.equal(payload.name, 'Alice');
      assert.equal(payload['urn:zitadel:iam:user:resourceowner:id'], 'org-1');
      assert.deepEqual(payload.groups, ['staff', 'chat']);
      assert.deepEqual(payload.org, { id: 'o1', roles: { admin: true } });
      assert.equal(payload.exp - payload.iat, 3600);
      assert.ok(Math.abs(payload.iat - Date.now() / 1000) < 5);
      assert.ok(payload.jti);
    }
  });

  test('JWT options: other audience, no email/name, nbf, expired token', async () => {
    const other = await mint({ sub: 'dave', audience: 'other-api' });
    const { payload } = await verify(other.access_token, { audience: 'other-api' });
    assert.equal(payload.email, undefined);
    assert.equal(payload.name, undefined);
    await assert.rejects(verify(other.access_token), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED' });

    const future = await mint({ sub: 'dave', extra_claims: { nbf: Math.floor(Date.now() / 1000) + 600 } });
    await assert.rejects(verify(future.access_token), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'nbf' });

    const expired = await mint({ sub: 'dave', ttl: -120 });
    assert.ok(verifyWithNodeCrypto(expired.access_token, await jwks()));
    await assert.rejects(verify(expired.access_token), { code: 'ERR_JWT_EXPIRED' });

    const bad = await ctl('/token', { sub: 'x', extra_claims: { iss: 'evil' } });
    assert.equal(bad.status, 400);
    const noSub = await ctl('/token', { email: 'x@example.com' });
    assert.equal(noSub.status, 400);
  });

  test('opaque tokens: RFC 7662 introspection active / inactive', async () => {
    const t = await mint({
      sub: 'bob',
      email: 'bob@example.com',
      name: 'Bob',
      format: 'opaque',
      extra_claims: { 'urn:zitadel:iam:user:resourceowner:id': 'org-2', groups: ['g1'] },
    });
    assert.equal(t.token_type, 'Bearer');
    assert.equal(t.access_token.split('.').length, 1, 'opaque token is not a JWT');

    const { status, body } = await introspect(t.access_token);
    assert.equal(status, 200);
    assert.equal(body.active, true);
    assert.equal(body.sub, 'bob');
    assert.equal(body.email, 'bob@example.com');
    assert.equal(body.name, 'Bob');
    assert.equal(body['urn:zitadel:iam:user:resourceowner:id'], 'org-2');
    assert.deepEqual(body.groups, ['g1']);
    assert.equal(body.aud, 'chat-widget');
    assert.equal(body.iss, R.issuer);
    assert.equal(body.client_id, 'widget-site');
    assert.equal(body.token_type, 'Bearer');
    assert.equal(body.exp - body.iat, 3600);

    assert.deepEqual((await introspect('no-such-token')).body, { active: false });

    // oidc-provider refuses to introspect JWT access tokens
    const jwt = await mint({ sub: 'bob' });
    const structured = await introspect(jwt.access_token);
    assert.equal(structured.status, 400);
    assert.equal(structured.body.error, 'unsupported_token_type');

    const expired = await mint({ sub: 'bob', format: 'opaque', ttl: -5 });
    assert.deepEqual((await introspect(expired.access_token)).body, { active: false });

    const wrongSecret = await introspect(t.access_token, 'Basic ' + Buffer.from('broker:nope').toString('base64'));
    assert.equal(wrongSecret.status, 401);
    assert.equal(wrongSecret.body.error, 'invalid_client');

  });

  test('revocation (RFC 7009) deactivates exactly the revoked token', async () => {
    const a = await mint({ sub: 'erin', format: 'opaque' });
    const b = await mint({ sub: 'erin', format: 'opaque' });
    const c = await mint({ sub: 'erin', format: 'opaque' });
    const revoke = (token, auth) => fetch(R.revocation_endpoint, {
      method: 'POST',
      headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
    });
    assert.equal((await revoke(a.access_token, WIDGET)).status, 200);
    assert.equal((await introspect(a.access_token)).body.active, false);
    assert.equal((await introspect(b.access_token)).body.active, true);
    assert.equal((await revoke(c.access_token, BROKER)).status, 200);
    assert.equal((await introspect(c.access_token)).body.active, false);
    assert.equal((await introspect(b.access_token)).body.active, true);
  });

  test('userinfo returns the account claims (email, name, custom and nested)', async () => {
    const t = await mint({
      sub: 'carol',
      email: 'carol@example.com',
      name: 'Carol',
      format: 'opaque',
      audience: null, // userinfo-only token: no aud
      extra_claims: {
        groups: ['a'],
        'urn:zitadel:iam:user:resourceowner:id': 'org-3',
        tenant: { id: 't-1', plan: 'pro' }, // a claim name never seen before
      },
    });
    const res = await fetch(R.userinfo_endpoint, { headers: { authorization: `Bearer ${t.access_token}` } });
    const body = await json(res);
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.deepEqual(body, {
      sub: 'carol',
      email: 'carol@example.com',
      name: 'Carol',
      groups: ['a'],
      'urn:zitadel:iam:user:resourceowner:id': 'org-3',
      tenant: { id: 't-1', plan: 'pro' },
    });

    // scope without "email": no email claim
    const t2 = await mint({ sub: 'carol', email: 'carol@example.com', name: 'Carol', format: 'opaque', audience: null, scope: 'openid profile' });
    const body2 = await json(await fetch(R.userinfo_endpoint, { headers: { authorization: `Bearer ${t2.access_token}` } }));
    assert.equal(body2.email, undefined);
    assert.equal(body2.name, 'Carol');

    // a token with an audience (a resource server's token) is refused at userinfo, as by the spec
    const aud = await mint({ sub: 'carol', format: 'opaque' });
    const res3 = await fetch(R.userinfo_endpoint, { headers: { authorization: `Bearer ${aud.access_token}` } });
    assert.equal(res3.status, 401);
    await res3.arrayBuffer();
  });

  test('token endpoint: client_credentials with a resource indicator issues a JWT', async () => {
    const res = await fetch(R.token_endpoint, {
      method: 'POST',
      headers: { authorization: WIDGET, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'client_credentials', resource: 'urn:chat-widget', scope: 'chat' }),
    });
    const body = await json(res);
    assert.equal(res.status, 200, JSON.stringify(body));
    const { payload } = await verify(body.access_token, { audience: 'urn:chat-widget' });
    assert.equal(payload.sub, 'widget-site');
    assert.equal(payload.scope, 'chat');
  });

  test('key rotation keeps old keys published; drop_old removes them', async () => {
    const before1 = await jwks();
    const oldJwt = await mint({ sub: 'frank', alg: 'ES256' });
    const oldOpaque = await mint({ sub: 'frank', format: 'opaque' });

    const rot = await json(await ctl('/rotate'));
    assert.equal(rot.kids.length, 6);
    assert.deepEqual(rot.previous_kids, before1.keys.map((k) => k.kid));
    assert.deepEqual(rot.dropped_kids, []);
    const after1 = await jwks();
    assert.equal(after1.keys.length, 6);
    for (const k of before1.keys) assert.ok(after1.keys.some((n) => n.kid === k.kid), `old ${k.kid} still published`);
    // new keys first, and used for signing
    const newJwt = await mint({ sub: 'frank', alg: 'ES256' });
    assert.equal(newJwt.kid, rot.signing_kids.ES256);
    assert.notEqual(newJwt.kid, oldJwt.kid);
    assert.equal(after1.keys[0].kid, rot.signing_kids.RS256);
    await verify(oldJwt.access_token);
    await verify(newJwt.access_token);
    assert.equal((await introspect(oldOpaque.access_token)).body.active, true, 'opaque tokens survive rotation');
    // discovery still fine on the new provider instance
    assert.equal((await json(await fetch(R.discovery_url))).issuer, R.issuer);

    const rot2 = await json(await ctl('/rotate?drop_old=1'));
    assert.equal(rot2.kids.length, 3);
    assert.equal(rot2.dropped_kids.length, 6);
    const after2 = await jwks();
    assert.deepEqual(after2.keys.map((k) => k.kid), rot2.kids);
    await assert.rejects(verify(oldJwt.access_token), { code: 'ERR_JWKS_NO_MATCHING_KEY' });
    await assert.rejects(verify(newJwt.access_token), { code: 'ERR_JWKS_NO_MATCHING_KEY' });
    await verify((await mint({ sub: 'frank' })).access_token);
    assert.equal((await introspect(oldOpaque.access_token)).body.active, true);

    // rotate, then drop the previous generation separately
    await ctl('/rotate');
    assert.equal((await jwks()).keys.length, 6);
    const dropped = await json(await ctl('/drop_old'));
    assert.equal(dropped.dropped_kids.length, 3);
    assert.equal((await jwks()).keys.length, 3);
  });

  test('outage simulation: down (503 / close / hang) and up', async () => {
    const t = await mint({ sub: 'gina', format: 'opaque' });
    assert.deepEqual(await json(await ctl('/down')), { down: true, mode: '503' });
    for (const url of [R.discovery_url, R.jwks_uri]) {
      const res = await fetch(url);
      assert.equal(res.status, 503);
      await res.arrayBuffer();
    }
    assert.equal((await introspect(t.access_token)).status, 503);
    // the control API keeps working while "down"
    assert.equal((await ctl('/stats', undefined, 'GET')).status, 200);

    await ctl('/down', { mode: 'close' });
    await assert.rejects(fetch(R.jwks_uri), TypeError);

    await ctl('/down', { mode: 'hang' });
    await assert.rejects(fetch(R.jwks_uri, { signal: AbortSignal.timeout(300) }), { name: 'TimeoutError' });

    assert.deepEqual(await json(await ctl('/up')), { down: false });
    assert.equal((await fetch(R.jwks_uri)).status, 200);
    assert.equal((await introspect(t.access_token)).body.active, true);
  });

  test('stats count requests per endpoint; reset', async () => {
    await ctl('/stats/reset');
    await (await fetch(R.jwks_uri)).arrayBuffer();
    await (await fetch(R.jwks_uri)).arrayBuffer();
    await (await fetch(R.discovery_url)).arrayBuffer();
    const t = await mint({ sub: 'hal', format: 'opaque', audience: null });
    await introspect(t.access_token);
    await (await fetch(R.userinfo_endpoint, { headers: { authorization: `Bearer ${t.access_token}` } })).arrayBuffer();
    const s = await json(await ctl('/stats', undefined, 'GET'));
    assert.deepEqual(s.counts, {
      discovery: 1, jwks: 2, token: 0, introspection: 1, revocation: 0, userinfo: 1, other: 0,
    });
    assert.equal(s.by_path['/jwks'], 2);
    assert.equal(s.times.jwks.length, 2);
    assert.ok(s.times.jwks.every((ms) => ms >= s.since && ms <= s.now));
  });

  test('latency injection delays provider routes only', async () => {
    await ctl('/latency', { ms: 300 });
    let t0 = Date.now();
    await (await fetch(R.jwks_uri)).arrayBuffer();
    assert.ok(Date.now() - t0 >= 280);
    t0 = Date.now();
    await (await ctl('/stats', undefined, 'GET')).arrayBuffer();
    assert.ok(Date.now() - t0 < 250);
    await ctl('/latency', { ms: 0 });
  });

  // ---- private_key_jwt (RFC 7523) client authentication: the "broker-jwt" client ----------------

  const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
  const clientKey = async () => json(await ctl('/client_key', undefined, 'GET'));
  // A client assertion as the broker makes it; `over` replaces claims / header fields (undefined = drop).
  const assertion = async (pem, kid, { claims = {}, header = {}, alg = 'RS256' } = {}) => {
    const now = Math.floor(Date.now() / 1000);
    const payload = {
      iss: 'broker-jwt', sub: 'broker-jwt', aud: R.issuer, iat: now, exp: now + 60, jti: crypto.randomUUID(),
      ...claims,
    };
    for (const [k, v] of Object.entries(payload)) if (v === undefined) delete payload[k];
    const hdr = { alg, kid, typ: 'JWT', ...header };
    for (const [k, v] of Object.entries(hdr)) if (v === undefined) delete hdr[k];
    const key = alg.startsWith('HS') ? new TextEncoder().encode('x'.repeat(64)) : crypto.createPrivateKey(pem);
    return new jose.SignJWT(payload).setProtectedHeader(hdr).sign(key);
  };
  const introspectJwt = async (token, clientAssertion, extra = {}) => {
    const res = await fetch(R.introspection_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        token,
        token_type_hint: 'access_token',
        client_assertion_type: ASSERTION_TYPE,
        client_assertion: clientAssertion,
        ...extra,
      }),
    });
    return { status: res.status, body: await json(res) };
  };
  const assertionsLog = async () => (await json(await ctl('/assertions', undefined, 'GET'))).assertions;

  test('private_key_jwt client: key in Zitadel JSON, PKCS#1 and PKCS#8 shapes; a wrong key', async () => {
    const k = await clientKey();
    assert.equal(k.client_id, 'broker-jwt');
    assert.match(k.key_id, /^\d{18}$/);
    assert.match(k.app_id, /^\d{18}$/);
    assert.deepEqual(Object.keys(k.zitadel_json).sort(), ['appId', 'clientId', 'key', 'keyId', 'type']);
    assert.deepEqual(
      { ...k.zitadel_json, key: undefined },
      { type: 'application', keyId: k.key_id, key: undefined, appId: k.app_id, clientId: 'broker-jwt' },
    );
    assert.match(k.zitadel_json.key, /^-----BEGIN RSA PRIVATE KEY-----\n[\s\S]+\n-----END RSA PRIVATE KEY-----\n$/);
    assert.equal(k.pkcs1_pem, k.zitadel_json.key);
    assert.match(k.pkcs8_pem, /^-----BEGIN PRIVATE KEY-----\n[\s\S]+\n-----END PRIVATE KEY-----\n$/);
    const pub1 = crypto.createPublicKey(crypto.createPrivateKey(k.zitadel_json.key)).export({ format: 'jwk' });
    const pub8 = crypto.createPublicKey(crypto.createPrivateKey(k.pkcs8_pem)).export({ format: 'jwk' });
    assert.equal(pub1.n, pub8.n);
    assert.equal(pub1.n, k.public_jwk.n);
    assert.equal(k.public_jwk.kid, k.key_id);
    assert.equal(k.public_jwk.d, undefined);
    assert.equal(k.token_endpoint_auth_method, 'private_key_jwt');
    assert.equal(k.alg, 'RS256');
    assert.deepEqual(k.registered_key_ids, [k.key_id]);
    assert.equal(k.assertion_audience, 'any');
    assert.deepEqual(k.accepted_audiences, [R.issuer, R.token_endpoint, R.introspection_endpoint, R.revocation_endpoint]);

    // the wrong key: same ids, other key material, same shapes
    const w = k.wrong;
    assert.equal(w.key_id, k.key_id);
    assert.equal(w.zitadel_json.keyId, k.key_id);
    assert.equal(w.zitadel_json.clientId, 'broker-jwt');
    assert.match(w.zitadel_json.key, /^-----BEGIN RSA PRIVATE KEY-----\n/);
    assert.match(w.pkcs8_pem, /^-----BEGIN PRIVATE KEY-----\n/);
    assert.notEqual(w.public_jwk.n, k.public_jwk.n);
    assert.deepEqual(await json(await ctl('/client_key/wrong', undefined, 'GET')), w);

    const d = await json(await fetch(R.discovery_url));
    assert.ok(d.token_endpoint_auth_methods_supported.includes('private_key_jwt'));
    assert.ok(d.token_endpoint_auth_signing_alg_values_supported.includes('RS256'));
  });

  test('private_key_jwt introspection: accepted with aud = issuer, token or introspection endpoint; recorded', async () => {
    await ctl('/stats/reset');
    assert.deepEqual(await assertionsLog(), []);
    const k = await clientKey();
    const t = await mint({ sub: 'ivy', email: 'ivy@example.com', format: 'opaque' });
    const auds = [R.issuer, R.token_endpoint, R.introspection_endpoint, [R.issuer, 'https://elsewhere.example']];
    const sent = [];
    for (const [i, aud] of auds.entries()) {
      const pem = i % 2 ? k.pkcs8_pem : k.zitadel_json.key; // both shapes sign alike
      const a = await assertion(pem, k.key_id, { claims: { aud } });
      sent.push(jose.decodeJwt(a));
      const { status, body } = await introspectJwt(t.access_token, a);
      assert.equal(status, 200, JSON.stringify(body));
      assert.equal(body.active, true);
      assert.equal(body.sub, 'ivy');
      assert.equal(body.email, 'ivy@example.com');
    }
    // client_id in the body as well (allowed when it matches)
    const withId = await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id), { client_id: 'broker-jwt' });
    assert.equal(withId.body.active, true);

    const log = await assertionsLog();
    assert.equal(log.length, 5);
    for (const [i, e] of log.entries()) {
      assert.equal(e.endpoint, 'introspection');
      assert.equal(e.path, '/token/introspection');
      assert.equal(e.client_assertion_type, ASSERTION_TYPE);
      assert.equal(e.status, 200);
      assert.equal(e.error, null);
      assert.equal(e.error_detail, null);
      assert.deepEqual(e.header, { alg: 'RS256', kid: k.key_id, typ: 'JWT' });
      assert.equal(e.claims.iss, 'broker-jwt');
      assert.equal(e.claims.sub, 'broker-jwt');
      assert.equal(e.claims.exp - e.claims.iat, 60);
      if (i < sent.length) assert.deepEqual(e.claims, sent[i]);
      assert.ok(e.at >= Date.now() - 10_000);
    }
    assert.equal(new Set(log.map((e) => e.claims.jti)).size, log.length);
    assert.equal(JSON.stringify(log).includes('PRIVATE KEY'), false);
    // revocation accepts the same client authentication
    const rev = await fetch(R.revocation_endpoint, {
      method: 'POST',
      body: new URLSearchParams({
        token: t.access_token, client_assertion_type: ASSERTION_TYPE, client_assertion: await assertion(k.pkcs8_pem, k.key_id),
      }),
    });
    assert.equal(rev.status, 200);
    await rev.arrayBuffer();
    assert.equal((await introspect(t.access_token)).body.active, false);
    assert.equal((await assertionsLog()).at(-1).endpoint, 'revocation');
  });

  test('private_key_jwt: a reused assertion (same jti) is refused', async () => {
    await ctl('/stats/reset');
    const k = await clientKey();
    const t = await mint({ sub: 'jon', format: 'opaque' });
    const a = await assertion(k.pkcs8_pem, k.key_id);
    assert.equal((await introspectJwt(t.access_token, a)).body.active, true);
    const replay = await introspectJwt(t.access_token, a);
    assert.equal(replay.status, 401);
    assert.equal(replay.body.error, 'invalid_client');
    // same jti in a freshly signed assertion: refused as well
    const { jti } = jose.decodeJwt(a);
    const again = await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id, { claims: { jti } }));
    assert.equal(again.status, 401);
    const log = await assertionsLog();
    assert.deepEqual(log.map((e) => e.status), [200, 401, 401]);
    assert.equal(log[1].error, 'invalid_client');
    assert.match(log[1].error_detail, /only be used once/);
    assert.match(log[2].error_detail, /only be used once/);
  });

  test('private_key_jwt: wrong key, kid, aud, exp, iat, iss/sub, alg, type are refused with 401 invalid_client', async () => {
    await ctl('/stats/reset');
    const k = await clientKey();
    const now = Math.floor(Date.now() / 1000);
    const t = await mint({ sub: 'kim', format: 'opaque' });
    const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    const cases = [
      ['wrong key (Zitadel JSON)', await assertion(k.wrong.zitadel_json.key, k.wrong.key_id), /signature/],
      ['wrong key (PKCS#8)', await assertion(k.wrong.pkcs8_pem, k.wrong.key_id), /signature/],
      ['unknown kid', await assertion(other, '999999999999999999'), /no applicable key/],
      ['no kid', await assertion(k.pkcs8_pem, undefined), /kid/],
      ['aud elsewhere', await assertion(k.pkcs8_pem, k.key_id, { claims: { aud: 'https://elsewhere.example' } }), /aud/],
      ['aud missing', await assertion(k.pkcs8_pem, k.key_id, { claims: { aud: undefined } }), /aud/],
      ['expired', await assertion(k.pkcs8_pem, k.key_id, { claims: { iat: now - 300, exp: now - 60 } }), /jwt expired/],
      ['exp missing', await assertion(k.pkcs8_pem, k.key_id, { claims: { exp: undefined } }), /expiration/],
      ['exp too far', await assertion(k.pkcs8_pem, k.key_id, { claims: { exp: now + 7200 } }), /exp may be at most/],
      ['iat missing', await assertion(k.pkcs8_pem, k.key_id, { claims: { iat: undefined } }), /iat/],
      ['jti missing', await assertion(k.pkcs8_pem, k.key_id, { claims: { jti: undefined } }), /jti/],
      ['iss other', await assertion(k.pkcs8_pem, k.key_id, { claims: { iss: 'broker' } }), /iss/],
      ['PS256 (not the registered alg)', await assertion(k.pkcs8_pem, k.key_id, { alg: 'PS256' }), /alg/],
      ['HS256', await assertion(undefined, k.key_id, { alg: 'HS256' }), /alg|mechanism/],
    ];
    for (const [name, a, detail] of cases) {
      const { status, body } = await introspectJwt(t.access_token, a);
      assert.equal(status, 401, `${name}: ${JSON.stringify(body)}`);
      assert.equal(body.error, 'invalid_client', name);
      const e = (await assertionsLog()).at(-1);
      assert.equal(e.status, 401, name);
      assert.match(e.error_detail, detail, `${name}: ${e.error_detail}`);
    }
    // sub other than the client: that client is looked up (and is not a private_key_jwt client)
    const subOther = await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id, { claims: { sub: 'broker' } }));
    assert.equal(subOther.status, 401);
    // wrong client_assertion_type: 400 invalid_request
    const badType = await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id), { client_assertion_type: 'urn:nope' });
    assert.equal(badType.status, 400);
    assert.equal(badType.body.error, 'invalid_request');
    // the right key still works after all that
    assert.equal((await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id))).body.active, true);
    assert.equal((await assertionsLog()).length, cases.length + 3);
  });

  test('private_key_jwt: assertion audience policy "issuer" (Zitadel) and back to "any"', async () => {
    const k = await clientKey();
    const t = await mint({ sub: 'lea', format: 'opaque' });
    const set = await json(await ctl('/client_auth', { assertion_audience: 'issuer' }));
    assert.deepEqual(set, { assertion_audience: 'issuer', accepted_audiences: [R.issuer] });
    const tokenAud = await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id, { claims: { aud: R.token_endpoint } }));
    assert.equal(tokenAud.status, 401);
    assert.equal((await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id))).body.active, true);
    assert.equal((await ctl('/client_auth', { assertion_audience: 'nope' })).status, 400);
    assert.equal((await json(await ctl('/client_auth', {}))).assertion_audience, 'any');
    assert.equal((await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id, { claims: { aud: R.token_endpoint } }))).body.active, true);
  });

  test('private_key_jwt: client key rotation (old key refused; keep_old keeps both)', async () => {
    const t = await mint({ sub: 'max', format: 'opaque' });
    const k1 = await clientKey();
    const r1 = await json(await ctl('/client_key/rotate'));
    assert.deepEqual(r1.previous_key_ids, [k1.key_id]);
    assert.notEqual(r1.key_id, k1.key_id);
    assert.deepEqual(r1.registered_key_ids, [r1.key_id]);
    assert.equal(r1.wrong.key_id, r1.key_id);
    assert.equal((await introspectJwt(t.access_token, await assertion(k1.pkcs8_pem, k1.key_id))).status, 401);
    assert.equal((await introspectJwt(t.access_token, await assertion(r1.pkcs8_pem, r1.key_id))).body.active, true);

    const r2 = await json(await ctl('/client_key/rotate', { keep_old: true }));
    assert.deepEqual(r2.registered_key_ids, [r2.key_id, r1.key_id]);
    assert.equal((await introspectJwt(t.access_token, await assertion(r1.zitadel_json.key, r1.key_id))).body.active, true);
    assert.equal((await introspectJwt(t.access_token, await assertion(r2.zitadel_json.key, r2.key_id))).body.active, true);
    const { previous_key_ids: _p, ...r2Info } = r2;
    assert.deepEqual(await clientKey(), r2Info);
    // the client_secret_basic resource server is unaffected
    assert.equal((await introspect(t.access_token)).body.active, true);
  });

  test('role claims (Zitadel object shape, Keycloak array shape) in JWT, introspection and userinfo', async () => {
    const roles = {
      'urn:zitadel:iam:org:project:roles': { 'chat-user': { '2876543210987654321': 'acme.example.com' } },
      'urn:zitadel:iam:org:project:2876500000000000000:roles': {
        'chat-user': { '2876543210987654321': 'acme.example.com' },
        'chat-admin': { '2876543210987654321': 'acme.example.com' },
      },
      realm_access: { roles: ['chat-user', 'offline_access'] },
      resource_access: { 'chat-widget': { roles: ['reader'] } },
    };
    const check = (claims, where) => {
      for (const [name, value] of Object.entries(roles)) assert.deepEqual(claims[name], value, `${where}: ${name}`);
    };
    const jwt = await mint({ sub: 'nia', extra_claims: roles });
    check((await verify(jwt.access_token)).payload, 'JWT');

    const opaque = await mint({ sub: 'nia', format: 'opaque', extra_claims: roles });
    check((await introspect(opaque.access_token)).body, 'introspection (client_secret_basic)');
    const k = await clientKey();
    const viaJwt = await introspectJwt(opaque.access_token, await assertion(k.pkcs8_pem, k.key_id));
    check(viaJwt.body, 'introspection (private_key_jwt)');

    const ui = await mint({ sub: 'nia', format: 'opaque', audience: null, extra_claims: roles });
    const res = await fetch(R.userinfo_endpoint, { headers: { authorization: `Bearer ${ui.access_token}` } });
    check(await json(res), 'userinfo');

    // no roles: absent everywhere
    const none = await mint({ sub: 'oto', format: 'opaque' });
    const body = (await introspect(none.access_token)).body;
    for (const name of Object.keys(roles)) assert.equal(body[name], undefined, name);
  });

  test('stats reset also clears the assertion log', async () => {
    assert.ok((await assertionsLog()).length > 0);
    await ctl('/stats/reset');
    assert.deepEqual(await json(await ctl('/assertions', undefined, 'GET')), { assertions: [], count: 0 });
    const k = await clientKey();
    const t = await mint({ sub: 'pia', format: 'opaque' });
    await introspectJwt(t.access_token, await assertion(k.pkcs8_pem, k.key_id));
    assert.equal((await assertionsLog()).length, 1);
    assert.deepEqual(await json(await ctl('/assertions', undefined, 'DELETE')), { assertions: [], count: 0 });
    const s = await json(await ctl('/stats', undefined, 'GET'));
    assert.equal(s.counts.introspection, 1);
  });

  test('stdout carried only the ready line', () => {
    assert.equal(fx.stdoutLines.length, 1);
  });
});

describe('process lifecycle', { concurrency: true }, () => {
  test('exits cleanly on SIGTERM', async () => {
    const { child } = await startFixture();
    child.kill('SIGTERM');
    assert.deepEqual(await waitExit(child), { code: 0, signal: null });
  });

  test('exits cleanly on SIGINT', async () => {
    const { child } = await startFixture();
    child.kill('SIGINT');
    assert.deepEqual(await waitExit(child), { code: 0, signal: null });
  });

  test('exits when its stdin closes (parent gone)', async () => {
    const { child, stderr } = await startFixture();
    child.stdin.end();
    assert.deepEqual(await waitExit(child), { code: 0, signal: null });
    assert.match(stderr(), /stdin closed/);
  });

  test('with stdin = /dev/null it keeps running; --port picks the port', async () => {
    const probe = await startFixture(['--port', '0'], { stdin: 'ignore' });
    const { port } = probe.ready;
    probe.child.kill('SIGTERM');
    await waitExit(probe.child);
    const { child, ready } = await startFixture(['--port', String(port)], { stdin: 'ignore' });
    try {
      assert.equal(ready.port, port);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(child.exitCode, null);
      assert.equal((await fetch(ready.jwks_uri)).status, 200);
    } finally {
      child.kill('SIGTERM');
      await waitExit(child);
    }
  });

  test('OIDC_BROKER_SECRET sets the broker client secret', async () => {
    const child = spawn(process.execPath, [SERVER], {
      stdio: ['pipe', 'pipe', 'ignore'],
      env: { ...process.env, OIDC_BROKER_SECRET: 's3cret' },
    });
    const [line] = await once(child.stdout.setEncoding('utf8'), 'data');
    const r = JSON.parse(line);
    try {
      const t = await json(await fetch(`${r.control}/token`, { method: 'POST', body: JSON.stringify({ sub: 'z', format: 'opaque' }) }));
      const ok = await fetch(r.introspection_endpoint, {
        method: 'POST',
        headers: { authorization: 'Basic ' + Buffer.from('broker:s3cret').toString('base64') },
        body: new URLSearchParams({ token: t.access_token }),
      });
      assert.equal((await json(ok)).active, true);
      const bad = await fetch(r.introspection_endpoint, {
        method: 'POST',
        headers: { authorization: BROKER },
        body: new URLSearchParams({ token: t.access_token }),
      });
      assert.equal(bad.status, 401);
      await bad.arrayBuffer();
    } finally {
      child.stdin.end();
      await waitExit(child);
    }
  });
});
