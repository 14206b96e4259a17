// Proves a real `novacron node start` process: serves health, readiness, version and OpenAPI, shuts down cleanly
// on SIGTERM and SIGINT, refuses bad configuration and a data dir already in use.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { collect, runCli, spawnCli, waitForLog } from '../support/proc.js';
import { removeTempDirs, tempDir } from '../support/tmp.js';

afterAll(removeTempDirs);

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

function tmp(): string {
  return tempDir('nc-node-');
}

async function startNode(dataDir: string, extra: string[] = []): Promise<{ child: ChildProcess; url: string }> {
  const child = spawnCli(['node', 'start', '--data-dir', dataDir, '--api-host', '127.0.0.1', '--api-port', '0', ...extra]);
  children.push(child);
  const started = await waitForLog(child, (r) => r.msg === 'node started');
  return { child, url: started.api as string };
}

describe('novacron node start', () => {
  it('serves /healthz, /readyz, /v1/version and /v1/openapi.json, then stops on SIGTERM', async () => {
    const dataDir = tmp();
    const { child, url } = await startNode(dataDir, ['--name', 'edge-a']);
    const done = collect(child, 15_000);

    expect(await (await fetch(`${url}/healthz`)).json()).toEqual({ status: 'ok' });
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).toBe(200);
    const version = (await (await fetch(`${url}/v1/version`)).json()) as { node: { name: string }; apiVersion: string };
    expect(version).toMatchObject({ node: { name: 'edge-a' }, apiVersion: 'v1' });
    const doc = (await (await fetch(`${url}/v1/openapi.json`)).json()) as { openapi: string; paths: Record<string, unknown> };
    expect(doc.openapi).toMatch(/^3\./);
    expect(doc.paths).toHaveProperty('/v1/version');
    expect(doc.paths).toHaveProperty('/metrics');

    // Prometheus: API durations by route template, mesh gauges, and the cluster view with this node in it.
    const metrics = await fetch(`${url}/metrics`);
    expect(metrics.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await metrics.text();
    expect(text).toMatch(/novacron_api_request_duration_seconds_count\{method="GET",route="\/healthz",status="200"\} 1/);
    expect(text).toMatch(/^novacron_mesh_connections \d+$/m);
    expect(text).toMatch(/^process_cpu_seconds_total /m);
    const badScope = await fetch(`${url}/metrics?scope=galaxy`);
    expect(badScope.status).toBe(400);
    expect(badScope.headers.get('content-type')).toMatch(/problem\+json/);
    expect(readFileSync(join(dataDir, 'run', 'node.pid'), 'utf8').trim()).toBe(String(child.pid));

    // The CLI talks to it.
    const cli = await runCli(['version', '--api', url, '--json']);
    expect(cli.code).toBe(0);
    expect(JSON.parse(cli.stdout)).toMatchObject({ server: { node: { name: 'edge-a' } } });

    child.kill('SIGTERM');
    const result = await done;
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/"msg":"node stopped"/);
    expect(existsSync(join(dataDir, 'run', 'node.pid'))).toBe(false);
  });

  it('stops on SIGINT and writes node.log when file logging is on', async () => {
    const dataDir = tmp();
    const { child } = await startNode(dataDir, ['--set', 'log.file=true']);
    const done = collect(child, 15_000);
    child.kill('SIGINT');
    expect((await done).code).toBe(0);
    expect(readFileSync(join(dataDir, 'logs', 'node.log'), 'utf8')).toMatch(/"msg":"node started"/);
  });

  it('refuses a second node on the same data dir', async () => {
    const dataDir = tmp();
    const { child } = await startNode(dataDir);
    const second = await runCli(['node', 'start', '--data-dir', dataDir, '--api-host', '127.0.0.1', '--api-port', '0']);
    expect(second.code).toBe(2);
    expect(second.stderr).toMatch(new RegExp(`in use by another novacron process \\(pid ${child.pid}\\)`));
  });

  it('exits 2 naming the bad key, value and file', async () => {
    const dataDir = tmp();
    const file = join(dataDir, 'config.yaml');
    writeFileSync(file, 'api:\n  port: http\n  colour: blue\n');
    const r = await runCli(['node', 'start', '--data-dir', dataDir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/api\.port: .*\(got "http"\) \[from .*config\.yaml\]/);
    expect(r.stderr).toMatch(/api\.colour: unknown key/);
  });

  it('exits 2 naming a bad environment variable', async () => {
    const r = await runCli(['node', 'start', '--data-dir', tmp()], { env: { NOVACRON_LOG_LEVEL: 'chatty' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/log\.level: .*\(got "chatty"\) \[from NOVACRON_LOG_LEVEL\]/);
  });

  it('exits 2 when the data dir is a file', async () => {
    const file = join(tmp(), 'not-a-dir');
    writeFileSync(file, '');
    const r = await runCli(['node', 'start', '--data-dir', file, '--api-port', '0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/exists and is not a directory/);
  });

  it('exits 1 when the API port is taken', async () => {
    const { url } = await startNode(tmp());
    const port = new URL(url).port;
    const r = await runCli(['node', 'start', '--data-dir', tmp(), '--api-host', '127.0.0.1', '--api-port', port]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/EADDRINUSE/);
  });
});
