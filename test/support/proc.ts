// Helpers to run the built CLI and node as real child processes and read what they print.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';

export const repoRoot = resolve(import.meta.dirname, '../..');
export const cliPath = resolve(repoRoot, 'dist/node/cli/main.js');

export function assertBuilt(): void {
  if (!existsSync(cliPath)) throw new Error(`${cliPath} is missing: run \`npm run build\` (npm test does it)`);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion. Environment variables starting with NOVACRON_ are cleared unless given. */
export function runCli(args: string[], options: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<RunResult> {
  const child = spawnCli(args, options.env);
  return collect(child, options.timeoutMs ?? 20_000);
}

/**
 * Test nodes keep off the LAN and the fixed mesh port: a free loopback port each and no mDNS, so parallel
 * test files never collide or discover each other. A test's own env or flags override these.
 */
export const testNodeEnv: Record<string, string> = {
  NOVACRON_MESH_LISTEN: '/ip4/127.0.0.1/tcp/0',
  NOVACRON_MESH_MDNS: 'false',
  // The KVM probe costs ~3 s per node start where KVM hangs (nested virtualisation): tests use TCG directly.
  NOVACRON_HYPERVISOR_ACCEL: 'tcg',
};

export function spawnCli(args: string[], env: Record<string, string> = {}): ChildProcess {
  assertBuilt();
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NOVACRON_')));
  return spawn(process.execPath, [cliPath, ...args], { env: { ...base, ...testNodeEnv, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

export function collect(child: ChildProcess, timeoutMs: number): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`process did not exit within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, timeoutMs);
    // 'close' rather than 'exit': it fires once the process has exited and its pipes have drained.
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout, stderr });
    });
  });
}

export interface LogRecord {
  level: string;
  msg: string;
  [k: string]: unknown;
}

/** Parses pino JSON lines, ignoring anything else the process printed. */
export function parseLogLines(text: string): LogRecord[] {
  const out: LogRecord[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as LogRecord);
    } catch {
      // partial line
    }
  }
  return out;
}

/** Resolves with the first log record matching `predicate`, or rejects after the timeout or when the process exits. */
export function waitForLog(child: ChildProcess, predicate: (r: LogRecord) => boolean, timeoutMs = 20_000): Promise<LogRecord> {
  return new Promise((resolvePromise, reject) => {
    let buffer = '';
    let seen = '';
    const onData = (d: Buffer): void => {
      buffer += d.toString();
      seen += d.toString();
      const lines = buffer.split('\n');
      buffer = lines.pop() ?? '';
      for (const r of parseLogLines(lines.join('\n'))) {
        if (predicate(r)) {
          cleanup();
          resolvePromise(r);
          return;
        }
      }
    };
    const onExit = (code: number | null): void => {
      cleanup();
      reject(new Error(`process exited (code ${code}) before the expected log line\n${seen}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`expected log line not seen within ${timeoutMs} ms\n${seen}`));
    }, timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
    };
    child.stdout?.on('data', onData);
    child.on('exit', onExit);
  });
}

/** Whether a process with this pid exists (signal 0 checks without sending anything). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** `ps` lines (pid first) of every process, to find QEMUs a test started. */
export function psLines(): string[] {
  return execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' }).split('\n').slice(1);
}

/** Kills test nodes and every process started under their data dirs (detached QEMUs), then removes the dirs. */
export function killNodesAndRemove(procs: ReadonlyArray<{ child: ChildProcess; dataDir: string }>): void {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
  for (const p of procs) {
    try {
      for (const line of psLines()) if (line.includes(p.dataDir)) process.kill(Number(line.trim().split(/\s+/)[0]), 'SIGKILL');
    } catch {
      // best effort: a process may be gone already
    }
    rmSync(p.dataDir, { recursive: true, force: true });
  }
}
