// Child processes of the cluster benchmark (NovaCron nodes, the CLI, etcd members): spawn, keep a tail of their
// output, wait for a log line, CPU time from /proc, and one registry that stops them all and removes the temp dirs
// on every way out (normal end, failure, SIGINT/SIGTERM, process exit).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Output kept per process for error messages. */
const outputTailBytes = 16 * 1024;
/** SIGTERM first; SIGKILL what is still running after this. */
const stopTimeoutMs = 5000;
/** Linux clock ticks per second (USER_HZ) for /proc/<pid>/stat. */
const clockTicksPerSec = 100;

export class Proc {
  private tail = '';
  private lineBuffer = '';
  private readonly lineWaiters = new Set<(line: string) => void>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  running = true;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    const onData = (d: Buffer): void => {
      const s = d.toString();
      this.tail = (this.tail + s).slice(-outputTailBytes);
      this.lineBuffer += s;
      const lines = this.lineBuffer.split('\n');
      this.lineBuffer = (lines.pop() ?? '').slice(-outputTailBytes);
      if (this.lineWaiters.size === 0) return;
      for (const line of lines) for (const w of [...this.lineWaiters]) w(line);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    this.exited = new Promise((resolve) => {
      // 'close': the process has exited and its pipes are drained.
      child.on('close', (code, signal) => {
        this.running = false;
        resolve({ code, signal });
      });
    });
  }

  output(): string {
    return this.tail;
  }

  /** Resolves with the first output line for which `match` returns a value; rejects on exit or timeout. */
  waitForLine<T>(match: (line: string) => T | undefined, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.lineWaiters.delete(onLine);
      };
      const onLine = (line: string): void => {
        const v = match(line);
        if (v === undefined) return;
        done();
        resolve(v);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name}: expected output not seen within ${timeoutMs} ms\n${this.tail}`));
      }, timeoutMs);
      this.lineWaiters.add(onLine);
      void this.exited.then(({ code, signal }) => {
        if (!this.lineWaiters.has(onLine)) return;
        done();
        reject(new Error(`${this.name} exited (${signal ?? `code ${code}`}) before the expected output\n${this.tail}`));
      });
    });
  }

  /** User + system CPU seconds this process has used so far (Linux /proc). */
  cpuSeconds(): number {
    const pid = this.child.pid;
    if (pid === undefined || !this.running) return NaN;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return (Number(rest[11]) + Number(rest[12])) / clockTicksPerSec;
    } catch {
      return NaN;
    }
  }
}

/** Every process and temp dir of the run; `cleanup()` is idempotent and also runs synchronously at process exit. */
export class Registry {
  private readonly procs: Proc[] = [];
  private readonly dirs: string[] = [];
  private cleaning: Promise<void> | null = null;

  constructor() {
    // Last resort (e.g. process.exit while something still runs): no async work possible here.
    process.on('exit', () => {
      for (const p of this.procs) if (p.running) p.child.kill('SIGKILL');
      for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
    });
  }

  tempDir(prefix: string): string {
    const d = mkdtempSync(join(tmpdir(), prefix));
    this.dirs.push(d);
    return d;
  }

  spawn(name: string, command: string, args: string[], env: NodeJS.ProcessEnv): Proc {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const p = new Proc(name, child);
    this.procs.push(p);
    return p;
  }

  /** Stops the given processes (SIGTERM, then SIGKILL after a bound) and waits until they are gone. */
  async stop(procs: readonly Proc[]): Promise<void> {
    await Promise.all(
      procs.map(async (p) => {
        if (!p.running) return;
        p.child.kill('SIGTERM');
        const timer = setTimeout(() => p.child.kill('SIGKILL'), stopTimeoutMs);
        await p.exited;
        clearTimeout(timer);
      }),
    );
  }

  /** Removes temp dirs; call only once the processes using them are gone (LevelDB and bbolt hold files open). */
  removeDirs(dirs: readonly string[]): void {
    for (const d of dirs) {
      rmSync(d, { recursive: true, force: true });
      const i = this.dirs.indexOf(d);
      if (i >= 0) this.dirs.splice(i, 1);
    }
  }

  cleanup(): Promise<void> {
    return (this.cleaning ??= (async () => {
      await this.stop(this.procs);
      this.removeDirs([...this.dirs]);
    })());
  }
}

/** A TCP port free on 127.0.0.1 right now (the OS picks it; a small race with other processes remains). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}
