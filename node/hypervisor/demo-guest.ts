// The demo guest that tests, benchmarks and `make demo` boot: built by packaging/guest/build.sh from Debian
// packages, and the parser for the lines it prints on its serial console.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { NovaError, errorMessage, type ErrorOptions } from '../errors.js';

/** A first build compiles memtouch and packs the initramfs in seconds; the bound covers a loaded machine. */
export const demoGuestBuildTimeoutMs = 5 * 60_000;
/** After a timeout, how long the build gets to clean up after SIGTERM before SIGKILL. */
const buildKillGraceMs = 2_000;
/** How much of the build script's output a failure keeps (its tail, where the reason is). */
export const demoGuestBuildOutputMaxBytes = 64 * 1024;
/** The console line parser ignores anything longer: no line the guest prints comes close. */
export const consoleLineMaxBytes = 4096;
/** How far up from this file to look for packaging/guest/build.sh (source tree and dist/ both fit). */
const repoSearchDepth = 5;

export const demoGuestFiles = ['vmlinuz', 'initrd.img', 'data.qcow2'] as const;
export type DemoGuestFile = (typeof demoGuestFiles)[number];

export interface DemoGuestManifest {
  format: number;
  /** sha256 of everything the build depends on (script, sources, kernel, busybox); a change rebuilds. */
  inputHash: string;
  kernelVersion: string;
  /** The kernel command line the guest needs (serial console); add `novacron.*` options to it. */
  cmdline: string;
  memoryMiB: number;
  dataDiskMiB: number;
  builtAt: string;
  modules: string[];
  files: Record<DemoGuestFile, { sha256: string; bytes: number }>;
}

export interface DemoGuest {
  kernel: string;
  initrd: string;
  /** The base data disk (qcow2, ext4). Boot a VM on an overlay of it, never on the file itself. */
  dataDisk: string;
  cmdline: string;
  memoryMiB: number;
  manifest: DemoGuestManifest;
}

export interface DemoGuestOptions {
  /** Where the outputs go; default `<repo>/.cache/demo-guest`. */
  outDir?: string;
  /** The build script; default packaging/guest/build.sh of this checkout. */
  buildScript?: string;
  timeoutMs?: number;
}

export class DemoGuestBuildError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('demo_guest_build_failed', message, options);
  }
}

export class DemoGuestInvalidError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('demo_guest_invalid', message, options);
  }
}

/** packaging/guest/build.sh of the checkout this file belongs to, or null when it is not there (a bundle). */
export function findDemoGuestBuildScript(from: string = import.meta.dirname): string | null {
  let dir = from;
  for (let i = 0; i < repoSearchDepth; i++) {
    const candidate = join(dir, 'packaging', 'guest', 'build.sh');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  return null;
}

// One build per output directory at a time within this process; build.sh also takes a file lock for
// concurrent processes (parallel test files).
const pending = new Map<string, Promise<DemoGuest>>();

/**
 * Builds the demo guest if its outputs are missing or stale, then returns where they are. build.sh decides
 * staleness itself (input hash and output hashes in the manifest) and returns at once when up to date.
 */
export function ensureDemoGuest(options: DemoGuestOptions = {}): Promise<DemoGuest> {
  const script = options.buildScript ?? findDemoGuestBuildScript();
  if (script === null) {
    return Promise.reject(new DemoGuestBuildError('packaging/guest/build.sh was not found next to this installation'));
  }
  const outDir = resolve(options.outDir ?? join(dirname(script), '..', '..', '.cache', 'demo-guest'));
  const running = pending.get(outDir);
  if (running !== undefined) return running;
  const job = (async () => {
    await runBuild(script, outDir, options.timeoutMs ?? demoGuestBuildTimeoutMs);
    return loadDemoGuest(outDir);
  })().finally(() => pending.delete(outDir));
  pending.set(outDir, job);
  return job;
}

function runBuild(script: string, outDir: string, timeoutMs: number): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    // Its own process group, so a timeout ends the script's children too (they hold its pipes open).
    const child = spawn('bash', [script, outDir], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const killGroup = (signal: NodeJS.Signals): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, signal);
      } catch {
        // Already gone.
      }
    };
    const output = new TailBuffer(demoGuestBuildOutputMaxBytes);
    child.stdout.on('data', (d: Buffer) => output.push(d));
    child.stderr.on('data', (d: Buffer) => output.push(d));
    let timedOut = false;
    let killTimer: NodeJS.Timeout | undefined;
    // SIGTERM first so the script's exit trap removes its half-built work directory.
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), buildKillGraceMs);
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new DemoGuestBuildError(`cannot run ${script}: ${errorMessage(err)}`, { cause: err, details: { script, outDir } }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      if (code === 0) {
        resolvePromise();
        return;
      }
      const text = output.text();
      const why = timedOut ? `did not finish within ${timeoutMs} ms` : signal !== null ? `was killed by ${signal}` : `exited with ${code}`;
      const lastLine = text.trimEnd().split('\n').pop() ?? '';
      reject(
        new DemoGuestBuildError(`building the demo guest failed: ${script} ${why}${lastLine === '' ? '' : `: ${lastLine}`}`, {
          details: { script, outDir, exitCode: code, signal, timedOut, output: text },
        }),
      );
    });
  });
}

/** Reads and checks the manifest of a built guest. The build script already verified the file hashes. */
export async function loadDemoGuest(outDir: string): Promise<DemoGuest> {
  const path = join(outDir, 'manifest.json');
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new DemoGuestInvalidError(`cannot read ${path}: ${errorMessage(err)}`, { cause: err });
  }
  const manifest = parseManifest(raw, path);
  return {
    kernel: join(outDir, 'vmlinuz'),
    initrd: join(outDir, 'initrd.img'),
    dataDisk: join(outDir, 'data.qcow2'),
    cmdline: manifest.cmdline,
    memoryMiB: manifest.memoryMiB,
    manifest,
  };
}

function parseManifest(raw: unknown, path: string): DemoGuestManifest {
  const bad = (what: string): DemoGuestInvalidError => new DemoGuestInvalidError(`${path}: ${what}`);
  if (!isRecord(raw)) throw bad('not a JSON object');
  const str = (key: string): string => {
    const v = raw[key];
    if (typeof v !== 'string' || v === '') throw bad(`${key} must be a non-empty string`);
    return v;
  };
  const int = (key: string): number => {
    const v = raw[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw bad(`${key} must be a positive integer`);
    return v;
  };
  const modules = raw.modules;
  if (!Array.isArray(modules) || !modules.every((m): m is string => typeof m === 'string')) throw bad('modules must be a list of names');
  const filesRaw = raw.files;
  if (!isRecord(filesRaw)) throw bad('files must be an object');
  const files = {} as Record<DemoGuestFile, { sha256: string; bytes: number }>;
  for (const name of demoGuestFiles) {
    const f = filesRaw[name];
    if (!isRecord(f) || typeof f.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(f.sha256) || typeof f.bytes !== 'number') {
      throw bad(`files.${name} must have a sha256 and a size`);
    }
    files[name] = { sha256: f.sha256, bytes: f.bytes };
  }
  return {
    format: int('format'),
    inputHash: str('inputHash'),
    kernelVersion: str('kernelVersion'),
    cmdline: str('cmdline'),
    memoryMiB: int('memoryMiB'),
    dataDiskMiB: int('dataDiskMiB'),
    builtAt: str('builtAt'),
    modules,
    files,
  };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export interface MemtouchOptions {
  mib: number;
  /** 0 or absent: as fast as the vCPU can go. */
  pagesPerSecond?: number;
}

/** The guest's kernel command line with the NovaCron options it understands. */
export function demoGuestCmdline(base: string, options: { memtouch?: MemtouchOptions } = {}): string {
  const parts = [base];
  if (options.memtouch !== undefined) {
    const { mib, pagesPerSecond = 0 } = options.memtouch;
    if (!Number.isInteger(mib) || mib <= 0 || !Number.isInteger(pagesPerSecond) || pagesPerSecond < 0) {
      throw new DemoGuestInvalidError(`memtouch needs a positive whole MiB and a whole pages-per-second >= 0 (got ${mib}, ${pagesPerSecond})`);
    }
    parts.push(`novacron.memtouch=${mib},${pagesPerSecond}`);
  }
  return parts.join(' ');
}

export type ConsoleEvent =
  | { kind: 'boot-id'; bootId: string }
  | { kind: 'heartbeat'; count: number }
  | { kind: 'memtouch-start'; mib: number; pages: number; pagesPerSecond: number; locked: boolean }
  | { kind: 'memtouch-ok'; pass: number }
  | { kind: 'memtouch-corrupt'; page: number; expected: number; got: number };

// The markers are found anywhere in a line, not only at its start: the shell's echo of typed input and
// terminal queries can share a line with them on the console.
const bootIdRe = /NOVACRON-BOOT-ID ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\s*$/;
const heartbeatRe = /NOVACRON-HEARTBEAT (\d{1,15})\s*$/;
const memtouchStartRe = /NOVACRON-MEMTOUCH start mib=(\d{1,15}) pages=(\d{1,15}) pagesPerSecond=(\d{1,15}) locked=([01])\s*$/;
const memtouchOkRe = /NOVACRON-MEMTOUCH pass=(\d{1,20}) ok\s*$/;
const memtouchCorruptRe = /NOVACRON-MEMTOUCH CORRUPT page=(\d{1,15}) expected=(\d{1,3}) got=(\d{1,3})\s*$/;

/** One console line → what the guest reported, or null for anything else (kernel messages, shell output). */
export function parseConsoleLine(line: string): ConsoleEvent | null {
  if (line.length > consoleLineMaxBytes || !line.includes('NOVACRON-')) return null;
  let m = bootIdRe.exec(line);
  if (m !== null) return { kind: 'boot-id', bootId: m[1] ?? '' };
  m = heartbeatRe.exec(line);
  if (m !== null) return { kind: 'heartbeat', count: Number(m[1]) };
  m = memtouchOkRe.exec(line);
  if (m !== null) return { kind: 'memtouch-ok', pass: Number(m[1]) };
  m = memtouchCorruptRe.exec(line);
  if (m !== null) return { kind: 'memtouch-corrupt', page: Number(m[1]), expected: Number(m[2]), got: Number(m[3]) };
  m = memtouchStartRe.exec(line);
  if (m !== null) {
    return { kind: 'memtouch-start', mib: Number(m[1]), pages: Number(m[2]), pagesPerSecond: Number(m[3]), locked: m[4] === '1' };
  }
  return null;
}

/**
 * Splits console output into lines (LF, with CR stripped) for parseConsoleLine. A line longer than
 * consoleLineMaxBytes is cut there so a guest that never prints a newline cannot grow the buffer.
 */
export class ConsoleLineSplitter {
  private partial = '';

  push(chunk: Buffer | string): string[] {
    const text = this.partial + (typeof chunk === 'string' ? chunk : chunk.toString('latin1'));
    const pieces = text.split('\n');
    this.partial = pieces.pop() ?? '';
    const lines = pieces.map((l) => l.replace(/\r/g, ''));
    while (this.partial.length > consoleLineMaxBytes) {
      lines.push(this.partial.slice(0, consoleLineMaxBytes).replace(/\r/g, ''));
      this.partial = this.partial.slice(consoleLineMaxBytes);
    }
    return lines;
  }

  /** What is left after the last newline (e.g. a shell prompt). */
  rest(): string {
    return this.partial.replace(/\r/g, '');
  }
}

/** Keeps the last maxBytes of a stream. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly maxBytes: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > this.maxBytes && this.chunks.length > 1) {
      this.size -= this.chunks.shift()?.length ?? 0;
    }
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.maxBytes)).toString('utf8');
  }
}
