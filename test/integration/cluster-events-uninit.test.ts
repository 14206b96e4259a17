// The event stream on a node without a cluster: a loopback caller (no token) may open it; it stays open and
// delivers `cluster.init` once the cluster is founded, then closes (tokens are enforced from then on, so the
// client reconnects with one). A node stops promptly even with a stream open.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, spawnCli, waitForLog } from '../support/proc.js';

let child: ChildProcess;
let dataDir: string;
let url: string;
let admin: string;

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'nc-events-uninit-'));
  child = spawnCli(['node', 'start', '--data-dir', dataDir, '--api-host', '127.0.0.1', '--api-port', '0', '--name', 'events-2']);
  url = (await waitForLog(child, (r) => r.msg === 'node started')).api as string;
}, 30_000);

afterAll(() => {
  if (child.exitCode === null) child.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
});

async function readAll(res: Response): Promise<string> {
  return await res.text();
}

describe('event stream before cluster init', () => {
  it('stays open, delivers cluster.init, then closes the tokenless stream', async () => {
    const res = await fetch(`${url}/v1/events`, { signal: AbortSignal.timeout(15_000) });
    expect(res.status).toBe(200);
    const body = readAll(res);
    await new Promise((r) => setTimeout(r, 200));
    const init = await runCli(['cluster', 'init', '--api', url, '--json']);
    expect(init.code, init.stderr).toBe(0);
    admin = (JSON.parse(init.stdout) as { adminToken: string }).adminToken;
    const text = await body;
    expect(text).toMatch(/^event: cluster\.init\nid: \d+\ndata: \{"index":\d+,"type":"cluster\.init","ids":\[/m);
  }, 30_000);

  it('refuses a tokenless stream after init and stops the node promptly with a stream open', async () => {
    expect((await fetch(`${url}/v1/events`)).status).toBe(401);
    const res = await fetch(`${url}/v1/events`, { headers: { authorization: `Bearer ${admin}` } });
    expect(res.status).toBe(200);
    const body = readAll(res);
    const stopped = waitForLog(child, (r) => r.msg === 'node stopped', 8_000);
    const t0 = Date.now();
    child.kill('SIGTERM');
    await stopped;
    expect(Date.now() - t0).toBeLessThan(8_000);
    await body; // the server ended the stream
  }, 30_000);
});
