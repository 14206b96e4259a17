// Proves the HTTP shell end to end in-process: system routes, OpenAPI generation, problem+json for every failure path, and a shutdown that lets requests in flight finish but is not held open by a connection.
import { connect, type AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import Type from 'typebox';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeApi, createApi, type Api } from '../../node/api/server.js';
import { registerSystemRoutes, type Check } from '../../node/api/routes/system.js';
import { ConflictError } from '../../node/errors.js';
import { createLogger } from '../../node/log.js';

const logLines: string[] = [];
const sink = new Writable({
  write(chunk: Buffer, _enc, cb) {
    logLines.push(chunk.toString());
    cb();
  },
});

let checks: Check[] = [];
let app: Api;

beforeAll(async () => {
  const { logger } = createLogger({ level: 'debug', stdout: sink });
  app = await createApi({ logger, bodyLimitBytes: 2048 });
  registerSystemRoutes(app, {
    checks: () => checks,
    version: () => ({
      version: '9.9.9',
      apiVersion: 'v1',
      node: { name: 'n1' },
      runtime: { node: process.version, platform: process.platform, arch: process.arch },
      qemu: { binary: 'qemu-system-x86_64', version: '10.0.2', supported: true, detail: '' },
      uptimeSeconds: 1,
    }),
  });
  // A route with a body schema, standing in for the resource routes of later issues.
  app.post(
    '/v1/things',
    {
      schema: {
        body: Type.Object({ name: Type.String({ minLength: 1 }), memoryMiB: Type.Integer({ minimum: 1 }) }, { additionalProperties: false }),
        querystring: Type.Object({ dryRun: Type.Optional(Type.Boolean()) }),
        response: { 201: Type.Object({ name: Type.String(), dryRun: Type.Boolean() }) },
      },
    },
    async (req, reply) => {
      if (req.body.name === 'taken') throw new ConflictError('a thing named "taken" exists', { details: { name: 'taken' } });
      if (req.body.name === 'crash') throw new Error('internal detail that must not leak');
      return reply.code(201).send({ name: req.body.name, dryRun: req.query.dryRun ?? false });
    },
  );
  await app.ready();
});

afterAll(async () => {
  await app.close();
});

describe('system routes', () => {
  it('answers /healthz', async () => {
    const res = await app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: 'ok' });
  });

  it('answers /readyz with 200 when required checks pass, even if optional ones fail', async () => {
    checks = [
      { name: 'api', ok: true, required: true, detail: 'listening' },
      { name: 'qemu', ok: false, required: false, detail: 'missing' },
    ];
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ status: 'ready' });
  });

  it('answers /readyz with 503 problem+json naming the failing check', async () => {
    checks = [{ name: 'dataDir', ok: false, required: true, detail: 'read-only' }];
    const res = await app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(503);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.json()).toMatchObject({ code: 'not_ready', detail: 'dataDir: read-only', checks });
  });

  it('answers /v1/version', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/version' });
    expect(res.json()).toMatchObject({ version: '9.9.9', apiVersion: 'v1', qemu: { supported: true } });
  });

  it('serves an OpenAPI 3 document generated from the route schemas', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/openapi.json' });
    expect(res.statusCode).toBe(200);
    const doc = res.json<{ openapi: string; paths: Record<string, unknown>; components: { schemas: Record<string, unknown> } }>();
    expect(doc.openapi).toMatch(/^3\./);
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/healthz', '/readyz', '/v1/version', '/v1/things']));
    expect(doc.components.schemas.Problem).toBeDefined();
    const things = doc.paths['/v1/things'] as { post: { requestBody: { content: Record<string, { schema: { required: string[] } }> } } };
    expect(things.post.requestBody.content['application/json']?.schema.required).toEqual(['name', 'memoryMiB']);
  });
});

describe('errors as problem+json', () => {
  const post = (payload: string, headers: Record<string, string> = { 'content-type': 'application/json' }, url = '/v1/things') =>
    app.inject({ method: 'POST', url, payload, headers });

  it('accepts a valid body and coerces the query string', async () => {
    const res = await post(JSON.stringify({ name: 'a', memoryMiB: 64 }), undefined, '/v1/things?dryRun=true');
    expect(res.statusCode).toBe(201);
    expect(res.json()).toEqual({ name: 'a', dryRun: true });
  });

  it('rejects a body with a wrong type, an unknown field and a missing field, listing each', async () => {
    const res = await post(JSON.stringify({ memoryMiB: '64', colour: 'red' }));
    expect(res.statusCode).toBe(400);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    const body = res.json<{ code: string; errors: Array<{ path: string }> }>();
    expect(body.code).toBe('validation_failed');
    expect(body.errors.map((e) => e.path).sort()).toEqual(['body/colour', 'body/memoryMiB', 'body/name']);
  });

  it('rejects malformed JSON', async () => {
    const res = await post('{"name": ');
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ code: 'bad_request' });
  });

  it('rejects an unsupported content type', async () => {
    const res = await post('name=a', { 'content-type': 'application/x-www-form-urlencoded' });
    expect(res.statusCode).toBe(415);
    expect(res.json()).toMatchObject({ code: 'unsupported_media_type' });
  });

  it('rejects a body over the limit', async () => {
    const res = await post(JSON.stringify({ name: 'x'.repeat(5000), memoryMiB: 1 }));
    expect(res.statusCode).toBe(413);
    expect(res.json()).toMatchObject({ code: 'payload_too_large' });
  });

  it('maps a typed error thrown by a handler', async () => {
    const res = await post(JSON.stringify({ name: 'taken', memoryMiB: 1 }));
    expect(res.statusCode).toBe(409);
    expect(res.json()).toMatchObject({ code: 'conflict', name: 'taken', instance: '/v1/things' });
  });

  it('hides an unexpected error and logs it', async () => {
    const res = await post(JSON.stringify({ name: 'crash', memoryMiB: 1 }));
    expect(res.statusCode).toBe(500);
    expect(res.body).not.toMatch(/must not leak/);
    expect(logLines.some((l) => l.includes('must not leak') && l.includes('"level":"error"'))).toBe(true);
  });

  it('answers an unknown route with 404 problem+json', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/nothing?x=1' });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toMatchObject({ code: 'not_found', detail: 'no route for GET /v1/nothing' });
  });
});

describe('shutdown', () => {
  async function listening(): Promise<{ api: Api; port: number }> {
    const { logger } = createLogger({ level: 'silent', stdout: sink });
    const api = await createApi({ logger, bodyLimitBytes: 2048 });
    api.get('/slow', async () => {
      await new Promise((r) => setTimeout(r, 300));
      return { done: true };
    });
    await api.listen({ host: '127.0.0.1', port: 0 });
    return { api, port: (api.server.address() as AddressInfo).port };
  }

  it('lets a request in flight finish', async () => {
    const { api, port } = await listening();
    const res = fetch(`http://127.0.0.1:${port}/slow`);
    await new Promise((r) => setTimeout(r, 100));
    await closeApi(api, 5_000);
    const answered = await res;
    expect(answered.status).toBe(200);
    expect(await answered.json()).toEqual({ done: true });
  });

  it('closes a connection that is not idle once the drain is over', async () => {
    const { api, port } = await listening();
    // A request whose headers never end: Node counts the connection active, so close() alone would wait for it.
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    const socketClosed = new Promise<void>((r) => socket.once('close', () => r()));
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    await closeApi(api, 200);
    expect(Date.now() - t0).toBeLessThan(3_000);
    await socketClosed;
  });
});
