// Proves the `make demo` launcher: it starts a node, forms a one-node cluster, prints an admin token that works, serves /healthz and OpenAPI, and stops cleanly on Ctrl-C.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assertBuilt, collect, repoRoot, testNodeEnv } from '../support/proc.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('make demo', () => {
  it('forms a cluster, prints a working admin token, and stops on SIGINT', async () => {
    assertBuilt();
    const dir = mkdtempSync(join(tmpdir(), 'nc-demo-'));
    dirs.push(dir);
    const port = await freePort();
    const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NOVACRON_')));
    const child = spawn(process.execPath, [join(repoRoot, 'dist/node/demo/main.js'), '--dir', dir, '--port', String(port)], {
      env: { ...base, ...testNodeEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const done = collect(child, 60_000);
    let out = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`demo did not come up: ${out}`)), 45_000);
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('Press Ctrl-C to stop.')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const url = `http://127.0.0.1:${port}`;
    const token = readFileSync(join(dir, 'admin-token'), 'utf8').trim();
    expect(out).toContain(token);
    expect(token).toMatch(/^ncadm_/);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect((await fetch(`${url}/v1/openapi.json`)).status).toBe(200);
    const status = await fetch(`${url}/v1/cluster/status`, { headers: { authorization: `Bearer ${token}` } });
    expect(status.status).toBe(200);
    expect(await status.json()).toMatchObject({ initialised: true, raft: { role: 'leader' } });
    child.kill('SIGINT');
    const r = await done;
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/node stopped \(exit 0\)/);
  });
});
