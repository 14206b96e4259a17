// Proves the CLI's exit codes (usage, connection, rejected, server) and its --json output, against real HTTP servers.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/proc.js';

// A stand-in node that answers /v1/version with whatever status the test sets.
let fake: Server;
let fakeUrl: string;
let fakeStatus = 200;

beforeAll(async () => {
  fake = createServer((req, res) => {
    if (req.url !== '/v1/version') {
      res.writeHead(404, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ type: 'urn:novacron:problem:not_found', title: 'Not found', status: 404, detail: 'no route', code: 'not_found' }));
      return;
    }
    if (fakeStatus === 200) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          version: '1.2.3',
          apiVersion: 'v1',
          node: { name: 'edge-1' },
          runtime: { node: 'v20', platform: 'linux', arch: 'x64' },
          qemu: { binary: 'q', version: '10.0.2', supported: true, detail: '' },
          uptimeSeconds: 5,
        }),
      );
      return;
    }
    if (fakeStatus === 502) {
      res.writeHead(502, { 'content-type': 'text/html' });
      res.end('<html>bad gateway</html>');
      return;
    }
    res.writeHead(fakeStatus, { 'content-type': 'application/problem+json' });
    res.end(JSON.stringify({ type: 'urn:novacron:problem:x', title: 't', status: fakeStatus, detail: `failed with ${fakeStatus}`, code: fakeStatus >= 500 ? 'no_quorum' : 'unauthorized' }));
  });
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
  fakeUrl = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((r) => fake.close(r));
});

describe('novacron CLI', () => {
  it('prints help and exits 0', async () => {
    const r = await runCli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Usage: novacron/);
    expect(r.stdout).toMatch(/node\b/);
  });

  it('exits 2 on an unknown command, an unknown option and a bad option value', async () => {
    for (const args of [['frobnicate'], ['version', '--bogus'], ['--timeout-ms', 'soon', 'version'], ['node', 'start', '--set', 'novalue']]) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.length).toBeGreaterThan(0);
    }
  });

  it('prints the client version without contacting a node', async () => {
    const r = await runCli(['version', '--client', '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ client: { version: expect.stringMatching(/^\d+\.\d+\.\d+/) as unknown } });
  });

  it('exits 3 when the node cannot be reached, and still prints the client half', async () => {
    const r = await runCli(['version', '--api', `http://127.0.0.1:${await closedPort()}`, '--json']);
    expect(r.code).toBe(3);
    expect(JSON.parse(r.stdout)).toHaveProperty('client.version');
    expect(JSON.parse(r.stderr)).toMatchObject({ error: { code: 'connection_failed', message: expect.stringMatching(/ECONNREFUSED/) as unknown } });
  });

  it('reads the API address from NOVACRON_API', async () => {
    fakeStatus = 200;
    const r = await runCli(['version', '--json'], { env: { NOVACRON_API: fakeUrl } });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ server: { version: '1.2.3', node: { name: 'edge-1' } } });
  });

  it('prints a human table by default', async () => {
    fakeStatus = 200;
    const r = await runCli(['version', '--api', fakeUrl]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^client:\s+\d/m);
    expect(r.stdout).toMatch(/^node:\s+edge-1$/m);
  });

  it('exits 4 when the node rejects the request', async () => {
    fakeStatus = 401;
    const r = await runCli(['version', '--api', fakeUrl, '--json']);
    expect(r.code).toBe(4);
    expect(JSON.parse(r.stderr)).toMatchObject({ error: { code: 'unauthorized', status: 401, message: 'failed with 401' } });
  });

  it('exits 5 when the node fails, with or without a problem+json body', async () => {
    fakeStatus = 503;
    const r = await runCli(['version', '--api', fakeUrl]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/^error: failed with 503/);
    fakeStatus = 502;
    const r2 = await runCli(['version', '--api', fakeUrl]);
    expect(r2.code).toBe(5);
    expect(r2.stderr).toMatch(/HTTP 502/);
  });

  it('lists configuration keys as JSON', async () => {
    const r = await runCli(['node', 'config-keys', '--json']);
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.stdout) as Array<{ key: string; env: string }>;
    expect(rows).toContainEqual(expect.objectContaining({ key: 'api.port', env: 'NOVACRON_API_PORT' }));
  });
});

/** A loopback port that nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}
