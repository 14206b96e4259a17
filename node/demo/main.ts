// `make demo`: starts a local NovaCron node (later: a 3-node cluster with the UI and a demo VM) in the
// foreground, forms a one-node cluster on first run, prints where to reach it and an admin token, and
// stops everything on Ctrl-C.
import '../polyfill.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

export const demoReadyTimeoutMs = 30_000;
const readyPollIntervalMs = 200;

const here = dirname(fileURLToPath(import.meta.url));
const cliPath = resolve(here, '../cli/main.js');

async function waitHealthy(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`node exited with code ${child.exitCode} before it became healthy`);
    try {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, readyPollIntervalMs));
  }
  throw new Error(`node at ${url} did not become healthy within ${timeoutMs} ms`);
}

/**
 * Forms the cluster on first run and keeps its admin token in <demo dir>/admin-token (0600): the API shows
 * a token once, and a demo that is restarted should still print a working one.
 */
async function ensureCluster(url: string, tokenFile: string): Promise<string> {
  if (existsSync(tokenFile)) return readFileSync(tokenFile, 'utf8').trim();
  const res = await fetch(`${url}/v1/cluster/init`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{}',
    signal: AbortSignal.timeout(demoReadyTimeoutMs),
  });
  const body = (await res.json()) as { adminToken?: string; detail?: string };
  if (res.status !== 201 || typeof body.adminToken !== 'string') {
    throw new Error(`cluster init answered ${res.status}: ${body.detail ?? JSON.stringify(body)}`);
  }
  writeFileSync(tokenFile, `${body.adminToken}\n`, { mode: 0o600 });
  return body.adminToken;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: '.demo' },
      port: { type: 'string', default: '8780' },
    },
  });
  const root = resolve(values.dir ?? '.demo');
  const port = Number(values.port);
  const dataDir = join(root, 'node1');
  mkdirSync(join(dataDir, 'logs'), { recursive: true, mode: 0o700 });
  const out = openSync(join(dataDir, 'logs', 'stdout.log'), 'a');
  const child = spawn(
    process.execPath,
    [cliPath, 'node', 'start', '--data-dir', dataDir, '--name', 'demo-1', '--api-host', '127.0.0.1', '--api-port', String(port)],
    { stdio: ['ignore', out, out] },
  );
  const url = `http://127.0.0.1:${port}`;
  const stop = (): void => {
    if (child.exitCode === null) child.kill('SIGTERM');
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const tokenFile = join(root, 'admin-token');
  let token: string;
  try {
    await waitHealthy(url, child, demoReadyTimeoutMs);
    token = await ensureCluster(url, tokenFile);
  } catch (err) {
    process.stderr.write(`demo: ${(err as Error).message}; see ${join(dataDir, 'logs', 'stdout.log')}\n`);
    stop();
    return 1;
  }
  process.stdout.write(
    [
      '',
      'NovaCron demo is running.',
      `  API:      ${url}/v1/version`,
      `  OpenAPI:  ${url}/v1/openapi.json`,
      `  Health:   ${url}/healthz  ${url}/readyz`,
      `  Admin token (also in ${tokenFile}):`,
      `            ${token}`,
      `  CLI:      export NOVACRON_API=${url} NOVACRON_TOKEN=$(cat ${tokenFile})`,
      `            node ${cliPath} cluster status`,
      `  Logs:     ${join(dataDir, 'logs', 'stdout.log')}`,
      '',
      'Press Ctrl-C to stop.',
      '',
    ].join('\n'),
  );
  const code = await new Promise<number>((res) => child.on('exit', (c) => res(c ?? 1)));
  process.stdout.write(`demo: node stopped (exit ${code})\n`);
  return code;
}

process.exitCode = await main();
