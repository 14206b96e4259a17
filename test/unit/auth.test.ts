// Proves the auth hook in-process (Fastify inject, a fake token lookup): role ordering admin ⊃ operator ⊃ viewer,
// public routes, 401 (missing/unknown token, WWW-Authenticate) vs 403 (too weak a role) as problem+json,
// loopback-only access on a node without a cluster, fail-closed defaults and the OpenAPI bearerAuth marking.
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authenticate, isLoopback, roleSatisfies, type Principal, type TokenInfo } from '../../node/api/auth.js';
import { createApi, type Api } from '../../node/api/server.js';
import { registerSystemRoutes } from '../../node/api/routes/system.js';
import { createLogger } from '../../node/log.js';

const tokens: Record<string, TokenInfo> = {
  's-admin': { id: 't1', name: 'root', role: 'admin' },
  's-op': { id: 't2', name: 'ops', role: 'operator' },
  's-view': { id: 't3', name: 'dash', role: 'viewer' },
};
let enforced = true;
let app: Api;

beforeAll(async () => {
  const { logger } = createLogger({ level: 'silent', stdout: new Writable({ write: (_c, _e, cb) => cb() }) });
  app = await createApi({ logger, bodyLimitBytes: 4096, auth: { enforced: () => enforced, lookup: (s) => tokens[s] ?? null } });
  registerSystemRoutes(app, {
    checks: () => [],
    version: () => ({
      version: '1',
      apiVersion: 'v1',
      node: { name: 'n' },
      runtime: { node: process.version, platform: process.platform, arch: process.arch },
      qemu: { binary: 'q', version: null, supported: false, detail: '' },
      uptimeSeconds: 1,
    }),
  });
  const echo = async (req: { principal: Principal | null }): Promise<{ principal: Principal | null }> => ({ principal: req.principal });
  app.get('/v1/view', { config: { auth: 'viewer' }, schema: { summary: 'v' } }, echo);
  app.get('/v1/op', { config: { auth: 'operator' }, schema: { summary: 'o' } }, echo);
  app.get('/v1/admin', { config: { auth: 'admin' }, schema: { summary: 'a' } }, echo);
  app.get('/v1/undeclared', { schema: { summary: 'u' } }, echo);
  app.post('/v1/boot', { config: { auth: 'bootstrap' }, schema: { summary: 'b' } }, echo);
  await app.ready();
});

afterAll(async () => {
  await app.close();
});

const bearer = (s: string): Record<string, string> => ({ authorization: `Bearer ${s}` });

describe('role ordering', () => {
  it('admin ⊃ operator ⊃ viewer', () => {
    expect(roleSatisfies('admin', 'viewer')).toBe(true);
    expect(roleSatisfies('admin', 'operator')).toBe(true);
    expect(roleSatisfies('operator', 'viewer')).toBe(true);
    expect(roleSatisfies('operator', 'admin')).toBe(false);
    expect(roleSatisfies('viewer', 'operator')).toBe(false);
    expect(roleSatisfies('viewer', 'viewer')).toBe(true);
  });

  it('knows loopback addresses', () => {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) expect(isLoopback(a), a).toBe(true);
    for (const a of ['10.0.0.1', '::ffff:10.0.0.1', 'fe80::1', undefined]) expect(isLoopback(a), String(a)).toBe(false);
  });

  it('grants each route to exactly the roles at or above its own', async () => {
    enforced = true;
    const cases: Array<[string, string, number]> = [
      ['/v1/view', 's-view', 200],
      ['/v1/view', 's-op', 200],
      ['/v1/view', 's-admin', 200],
      ['/v1/op', 's-view', 403],
      ['/v1/op', 's-op', 200],
      ['/v1/op', 's-admin', 200],
      ['/v1/admin', 's-view', 403],
      ['/v1/admin', 's-op', 403],
      ['/v1/admin', 's-admin', 200],
      ['/v1/undeclared', 's-op', 403],
      ['/v1/undeclared', 's-admin', 200],
    ];
    for (const [url, secret, status] of cases) {
      const res = await app.inject({ method: 'GET', url, headers: bearer(secret) });
      expect(res.statusCode, `${url} ${secret}`).toBe(status);
      if (status === 403) {
        expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
        expect(res.json()).toMatchObject({ code: 'forbidden', status: 403 });
      }
    }
    const ok = await app.inject({ method: 'GET', url: '/v1/op', headers: bearer('s-op') });
    expect(ok.json()).toEqual({ principal: { kind: 'token', tokenId: 't2', name: 'ops', role: 'operator' } });
  });
});

describe('the auth hook on an initialised node', () => {
  it('serves public routes without a token', async () => {
    enforced = true;
    for (const url of ['/healthz', '/v1/version', '/v1/openapi.json']) {
      expect((await app.inject({ method: 'GET', url })).statusCode, url).toBe(200);
    }
  });

  it('refuses missing, malformed and unknown tokens with 401 problem+json and WWW-Authenticate', async () => {
    enforced = true;
    for (const headers of [{}, { authorization: 'Basic Zm9vOmJhcg==' }, { authorization: 'Bearer' }, bearer('nope'), bearer('x'.repeat(600))]) {
      const res = await app.inject({ method: 'GET', url: '/v1/view', headers });
      expect(res.statusCode, JSON.stringify(headers)).toBe(401);
      expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
      expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
      expect(res.json()).toMatchObject({ code: 'unauthorized', status: 401, type: 'urn:novacron:problem:unauthorized' });
    }
    // Even loopback callers (inject is 127.0.0.1) need a token once the cluster exists; unknown routes too.
    expect((await app.inject({ method: 'GET', url: '/v1/nothing-here' })).statusCode).toBe(401);
  });

  it('lets loopback bootstrap without a token, but checks a token that is sent', async () => {
    enforced = true;
    expect((await app.inject({ method: 'POST', url: '/v1/boot' })).json()).toEqual({ principal: { kind: 'local' } });
    expect((await app.inject({ method: 'POST', url: '/v1/boot', headers: bearer('s-view') })).statusCode).toBe(403);
    expect((await app.inject({ method: 'POST', url: '/v1/boot', headers: bearer('s-admin') })).statusCode).toBe(200);
    const remote = (auth?: string): Principal | null =>
      authenticate({ enforced: () => true, lookup: (s) => tokens[s] ?? null }, 'bootstrap', {
        headers: auth === undefined ? {} : { authorization: `Bearer ${auth}` },
        socket: { remoteAddress: '192.0.2.7' },
      } as never);
    expect(() => remote()).toThrow(/missing bearer token/);
    expect(remote('s-admin')).toMatchObject({ kind: 'token', role: 'admin' });
  });
});

describe('a node without a cluster', () => {
  it('serves loopback callers without a token', async () => {
    enforced = false;
    const res = await app.inject({ method: 'GET', url: '/v1/admin' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ principal: { kind: 'local' } });
    enforced = true;
  });

  it('refuses other addresses with 401 saying the node is not initialised', () => {
    const deps = { enforced: () => false, lookup: () => null };
    const req = { headers: {}, socket: { remoteAddress: '192.0.2.7' } } as never;
    expect(() => authenticate(deps, 'viewer', req)).toThrow(/not initialised/);
    expect(authenticate(deps, 'public', req)).toBeNull();
  });
});

describe('OpenAPI', () => {
  it('declares bearerAuth and marks protected routes only', async () => {
    const doc = (await app.inject({ method: 'GET', url: '/v1/openapi.json' })).json<{
      components: { securitySchemes: Record<string, { scheme: string }> };
      paths: Record<string, Record<string, { security?: unknown }>>;
    }>();
    expect(doc.components.securitySchemes.bearerAuth?.scheme).toBe('bearer');
    expect(doc.paths['/v1/view']?.get?.security).toEqual([{ bearerAuth: [] }]);
    expect(doc.paths['/v1/undeclared']?.get?.security).toEqual([{ bearerAuth: [] }]);
    expect(doc.paths['/healthz']?.get?.security).toBeUndefined();
  });
});
