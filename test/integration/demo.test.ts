// Proves the `make demo` launcher: it starts three nodes, forms a 3-voter cluster, starts the demo VM (its heartbeat shows on the console), prints an admin token that works on every node, stops cleanly on Ctrl-C, and comes back formed with the same VM on a second run.
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

/** First run: build the demo guest, import it, boot it under TCG; generous for a loaded 2-core CI machine. */
const demoUpBoundMs = 240_000;

/** A base port with the ports after it (and those `offset` above, for the mesh) free too. */
async function freePorts(count: number, offset: number): Promise<number> {
  for (;;) {
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const { port } = srv.address() as AddressInfo;
    await new Promise<void>((r) => srv.close(() => r()));
    if (port + offset + count > 65_535) continue;
    const wanted = [...Array.from({ length: count - 1 }, (_, i) => port + i + 1), ...Array.from({ length: count }, (_, i) => port + offset + i)];
    const others = await Promise.all(
      wanted.map((p) =>
        new Promise<boolean>((r) => {
          const s = createServer();
          s.once('error', () => r(false));
          s.listen(p, '127.0.0.1', () => s.close(() => r(true)));
        }),
      ),
    );
    if (others.every(Boolean)) return port;
  }
}

async function runDemo(dir: string, port: number): Promise<{ child: ReturnType<typeof spawn>; out: () => string; done: ReturnType<typeof collect> }> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NOVACRON_')));
  const child = spawn(process.execPath, [join(repoRoot, 'dist/node/demo/main.js'), '--dir', dir, '--port', String(port)], {
    env: { ...base, ...testNodeEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const done = collect(child, 90_000);
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`demo did not come up: ${out}`)), demoUpBoundMs);
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('Press Ctrl-C to stop.')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { child, out: () => out, done };
}

describe('make demo', () => {
  it('forms a 3-node cluster, prints a working admin token, stops on SIGINT and restarts formed', async () => {
    assertBuilt();
    const dir = mkdtempSync(join(tmpdir(), 'nc-demo-'));
    dirs.push(dir);
    const port = await freePorts(3, 1000);
    const first = await runDemo(dir, port);
    const token = readFileSync(join(dir, 'admin-token'), 'utf8').trim();
    expect(first.out()).toContain(token);
    expect(token).toMatch(/^ncadm_/);
    const urls = [0, 1, 2].map((i) => `http://127.0.0.1:${port + i}`);
    for (const url of urls) expect(first.out()).toContain(url);
    expect((await fetch(`${urls[0]}/healthz`)).status).toBe(200);
    expect((await fetch(`${urls[0]}/v1/openapi.json`)).status).toBe(200);
    for (const url of urls) {
      const status = await fetch(`${url}/v1/cluster/status`, { headers: { authorization: `Bearer ${token}` } });
      expect(status.status).toBe(200);
      const body = (await status.json()) as { initialised: boolean; members: Array<{ role: string }> };
      expect(body.initialised).toBe(true);
      expect(body.members.filter((m) => m.role === 'voter')).toHaveLength(3);
    }
    // The demo VM runs (observed by its owner) and its console shows the guest's heartbeat.
    expect(first.out()).toMatch(/Demo VM: {2}"demo" running on demo-\d/);
    const vms = (await (await fetch(`${urls[2]}/v1/vms`, { headers: { authorization: `Bearer ${token}` } })).json()) as { vms: Array<{ id: string; name: string; observed: { state: string } | null }> };
    expect(vms.vms).toHaveLength(1);
    expect(vms.vms[0]).toMatchObject({ name: 'demo', observed: { state: 'running' } });
    const vmId = vms.vms[0]?.id ?? '';
    let heartbeat = false;
    for (let i = 0; i < 60 && !heartbeat; i++) {
      const con = (await (await fetch(`${urls[0]}/v1/vms/${vmId}/console?tail=50`, { headers: { authorization: `Bearer ${token}` } })).json()) as { lines?: string[] };
      heartbeat = (con.lines ?? []).some((l) => l.includes('NOVACRON-HEARTBEAT'));
      if (!heartbeat) await new Promise((r) => setTimeout(r, 1000));
    }
    expect(heartbeat).toBe(true);
    first.child.kill('SIGINT');
    const r = await first.done;
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/nodes stopped \(exit 0, 0, 0\)/);

    // A second run reopens the same cluster and prints the same token.
    const second = await runDemo(dir, port);
    expect(second.out()).toContain(token);
    const nodes = await fetch(`${urls[1]}/v1/nodes`, { headers: { authorization: `Bearer ${token}` } });
    expect(nodes.status).toBe(200);
    expect(((await nodes.json()) as { nodes: unknown[] }).nodes).toHaveLength(3);
    // The same VM, not a second one.
    const again = (await (await fetch(`${urls[0]}/v1/vms`, { headers: { authorization: `Bearer ${token}` } })).json()) as { vms: Array<{ id: string }> };
    expect(again.vms.map((v) => v.id)).toEqual([vmId]);
    second.child.kill('SIGINT');
    expect((await second.done).code).toBe(0);
  }, 600_000);
});
