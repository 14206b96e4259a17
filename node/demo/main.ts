// `make demo`: starts a local NovaCron node (later: a 3-node cluster with the UI and a demo VM) in the
// foreground, prints where to reach it, and stops everything on Ctrl-C.
import '../polyfill.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
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
  try {
    await waitHealthy(url, child, demoReadyTimeoutMs);
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
      `  CLI:      node ${cliPath} --api ${url} version`,
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
