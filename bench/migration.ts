// Migration benchmark (root, Linux): the target side lives in a network namespace joined to the bench's by a veth
// pair shaped with `tc tbf` at 10 Mbit/s, 100 Mbit/s and 1 Gbit/s. The same running guest (the demo guest with its
// memory filled like a workload: random data, text, binaries, and zero pages) is migrated over that link by
//   - plain QEMU migration over TCP,
//   - QEMU multifd (2 channels) with zstd,
//   - NovaCron's engine (its tunnel through the bandwidth codec) with the adaptive controller, without compression,
//     and at each fixed zstd level of the controller's ladder,
// each run from the same source guest (resumed after every run), measuring the total time (from `migrate` until the
// target QEMU has loaded everything: its incoming status `completed`, for every variant), the bytes that crossed
// the veth (its tx counter) and QEMU's downtime. RAM only: plain QEMU has no disk path to compare against.
// The last line printed is one JSON object with the figures and the ratios the issue's goals are about.
//
//   npm run bench:migration [-- --speeds 10,100,1000] [--variants qemu,novacron-adaptive,novacron-zstd3,...]
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { migrationOptionsDefault } from '../consensus/cluster/commands.js';
import { ensureDemoGuest } from '../node/hypervisor/demo-guest.js';
import { QemuDriver } from '../node/hypervisor/qemu.js';
import type { QemuVmConfig } from '../node/hypervisor/qemu-args.js';
import type { QmpClient } from '../node/hypervisor/qmp.js';
import { estimateBeforeStart, runSource } from '../migration/index.js';
import { socketChannel } from './socket-channel.js';

const ns = 'ncbench-t';
const vethHost = 'ncb0';
const vethNs = 'ncb1';
const hostIp = '10.77.0.1';
const nsIp = '10.77.0.2';
const qemuPort = 4444;
const targetPort = 5555;
const runTimeoutMs = 15 * 60_000;
/** Polling QEMU's status; finer than the differences measured at 1 Gbit/s. */
const pollMs = 20;
const fillTimeoutMs = 120_000;
const bootTimeoutMs = 60_000;
/** What the guest's memory holds besides zero pages (MiB). */
const fill = { randomMiB: 16, textLines: 2_500_000, binaryCopies: 6 };
const fixedLevels = [1, 3, 6, 9] as const;
const logger = pino({ level: process.env.NOVACRON_BENCH_LOG ?? 'silent' });

interface Run {
  variant: string;
  mbit: number;
  ms: number;
  wireBytes: number;
  downtimeMs: number | null;
  /** The guest's real pause: the source's STOP event until the target has loaded everything (polled, ±20 ms). */
  pauseMs: number | null;
  ok: boolean;
  error?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const sh = (cmd: string, args: string[]): string => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const txBytes = (): number => Number(readFileSync(`/sys/class/net/${vethHost}/statistics/tx_bytes`, 'utf8').trim());

function setupNetwork(): void {
  teardownNetwork();
  sh('ip', ['netns', 'add', ns]);
  sh('ip', ['link', 'add', vethHost, 'type', 'veth', 'peer', 'name', vethNs]);
  sh('ip', ['link', 'set', vethNs, 'netns', ns]);
  sh('ip', ['addr', 'add', `${hostIp}/24`, 'dev', vethHost]);
  sh('ip', ['link', 'set', vethHost, 'up']);
  sh('ip', ['-n', ns, 'addr', 'add', `${nsIp}/24`, 'dev', vethNs]);
  sh('ip', ['-n', ns, 'link', 'set', vethNs, 'up']);
  sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
}

function teardownNetwork(): void {
  try {
    sh('ip', ['netns', 'del', ns]);
  } catch {
    // not there
  }
  try {
    sh('ip', ['link', 'del', vethHost]);
  } catch {
    // went with the namespace
  }
}

/** tbf both ways; the burst holds a tick's worth of bytes at this rate (at least 32 KiB). */
function shape(mbit: number): void {
  const burst = Math.max(32 * 1024, Math.round((mbit * 1e6) / 8 / 100));
  const args = ['qdisc', 'replace', 'dev', '', 'root', 'tbf', 'rate', `${mbit}mbit`, 'burst', String(burst), 'latency', '50ms'];
  sh('tc', args.map((a, i) => (i === 3 ? vethHost : a)));
  sh('ip', ['netns', 'exec', ns, 'tc', ...args.map((a, i) => (i === 3 ? vethNs : a))]);
}

function connectTcp(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, allowHalfOpen: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

async function waitConsole(driver: QemuDriver, vmId: string, marker: string, timeoutMs: number): Promise<void> {
  const log = driver.record(vmId).paths.consoleLog;
  const deadline = Date.now() + timeoutMs;
  while (!(existsSync(log) && readFileSync(log, 'latin1').split('\n').some((l) => l.startsWith(marker)))) {
    if (Date.now() > deadline) throw new Error(`guest did not print ${marker} within ${timeoutMs} ms`);
    await sleep(200);
  }
}

async function shell(driver: QemuDriver, vmId: string, command: string): Promise<void> {
  const path = driver.record(vmId).paths.consoleSocket;
  await new Promise<void>((resolve, reject) => {
    const c = connect(path, () => c.write(`${command}\n`, () => setTimeout(() => (c.end(), resolve()), 300)));
    c.on('error', reject);
  });
}

async function waitMigration(qmp: QmpClient, timeoutMs: number): Promise<{ status: string; downtime: number | null; error: string | null }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<{ status?: string; downtime?: number; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') return { status: info.status, downtime: info.downtime ?? null, error: info['error-desc'] ?? null };
    if (Date.now() > deadline) throw new Error(`migration not done within ${timeoutMs} ms (${info.status ?? '?'})`);
    await sleep(pollMs);
  }
}

/** Watches for the source's STOP event, whose QEMU timestamp (host clock) is when the guest paused. */
function watchPause(qmp: QmpClient): { pauseUntil: (endMs: number) => number | null; off: () => void } {
  let at: number | null = null;
  const off = qmp.onEvent((e) => {
    if (e.event === 'STOP' && at === null) at = e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000;
  });
  return { pauseUntil: (endMs) => (at === null ? null : Math.round(endMs - at)), off };
}

async function main(): Promise<void> {
  const speedsArg = process.argv.indexOf('--speeds');
  const speeds = (speedsArg > 0 ? (process.argv[speedsArg + 1] ?? '') : '10,100,1000').split(',').map(Number).filter((n) => n > 0);
  const variantsArg = process.argv.indexOf('--variants');
  // For looking at a few variants; the figures in docs/benchmarks.md come from a run of all of them.
  const onlyVariants = variantsArg > 0 ? (process.argv[variantsArg + 1] ?? '').split(',') : null;
  if (process.getuid?.() !== 0) throw new Error('bench:migration needs root (network namespaces, tc)');
  const guest = await ensureDemoGuest();
  const dir = mkdtempSync('/tmp/ncbm-');
  const wrapper = join(dir, 'qemu-in-ns');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} qemu-system-x86_64 "$@"\n`);
  chmodSync(wrapper, 0o755);
  setupNetwork();
  const src = new QemuDriver({ runDir: join(dir, 's'), qemuBinary: 'qemu-system-x86_64', accel: 'tcg', logger });
  const dstNs = new QemuDriver({ runDir: join(dir, 'n'), qemuBinary: wrapper, accel: 'tcg', logger });
  let target: ChildProcess | null = null;
  const runs: Run[] = [];
  try {
    const id = randomUUID();
    const config: QemuVmConfig = { id, name: 'bench', vcpus: 1, memoryMiB: guest.memoryMiB, disks: [], nics: [], kernel: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline };
    await src.start(config);
    await waitConsole(src, id, 'NOVACRON-HEARTBEAT', bootTimeoutMs);
    // The guest's root file system is RAM: what is written there is guest memory.
    await shell(src, id, `dd if=/dev/urandom of=/rand bs=1M count=${fill.randomMiB} 2>/dev/null; seq 1 ${fill.textLines} > /text; for i in $(seq 1 ${fill.binaryCopies}); do cat /bin/busybox $(find /lib/modules -name '*.ko*') > /bin$i; done; echo FILL-$((40+2))`);
    await waitConsole(src, id, 'FILL-42', fillTimeoutMs);
    const srcQmp = await src.qmp(id);
    // NovaCron's target node: its own process in the namespace, fed over the shaped veth as a real target is.
    target = spawn('ip', ['netns', 'exec', ns, process.execPath, join(import.meta.dirname, 'migration-target.js'), nsIp, String(targetPort)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const targetReplies: Array<(m: { op: string; error?: string }) => void> = [];
    target.on('message', (m: { op: string; error?: string }) => targetReplies.shift()?.(m));
    const targetSays = (cmd: object | null): Promise<{ op: string; error?: string }> =>
      new Promise((resolve) => {
        targetReplies.push(resolve);
        if (cmd !== null) target?.send(cmd);
      });
    if ((await targetSays(null)).op !== 'listening') throw new Error('the target process did not start');

    const resume = async (): Promise<void> => {
      const st = await srcQmp.execute<{ running: boolean }>('query-status');
      if (!st.running) await srcQmp.execute('cont');
      await srcQmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: false }, { capability: 'pause-before-switchover', state: false }, { capability: 'auto-converge', state: false }] });
    };

    const qemuRun = async (mbit: number, variant: 'qemu' | 'qemu-multifd-zstd'): Promise<Run> => {
      const vm = { ...config };
      await dstNs.startIncoming(vm);
      const dq = await dstNs.qmp(id);
      try {
        const multifd = variant === 'qemu-multifd-zstd';
        const caps = { capabilities: [{ capability: 'events', state: true }, { capability: 'multifd', state: multifd }] };
        await dq.execute('migrate-set-capabilities', caps);
        await srcQmp.execute('migrate-set-capabilities', caps);
        const params = { 'max-bandwidth': 4 * 1024 ** 3, 'downtime-limit': migrationOptionsDefault.downtimeLimitMs, ...(multifd ? { 'multifd-channels': 2, 'multifd-compression': 'zstd' } : {}) };
        await dq.execute('migrate-set-parameters', multifd ? { 'multifd-channels': 2, 'multifd-compression': 'zstd' } : {});
        await srcQmp.execute('migrate-set-parameters', params);
        await dq.execute('migrate-incoming', { uri: `tcp:${nsIp}:${qemuPort}` });
        await sleep(200);
        const tx0 = txBytes();
        const t0 = performance.now();
        const pause = watchPause(srcQmp);
        try {
          await srcQmp.execute('migrate', { uri: `tcp:${nsIp}:${qemuPort}` });
          const r = await waitMigration(srcQmp, runTimeoutMs);
          // The source's `completed` means written to its socket: the clock stops when the target has it all, as
          // NovaCron's does (its source commits only then).
          if (r.status === 'completed') await waitMigration(dq, runTimeoutMs);
          const pauseMs = pause.pauseUntil(Date.now());
          return { variant, mbit, ms: performance.now() - t0, wireBytes: txBytes() - tx0, downtimeMs: r.downtime, pauseMs, ok: r.status === 'completed', ...(r.error === null ? {} : { error: r.error }) };
        } finally {
          pause.off();
        }
      } finally {
        await dstNs.delete(id).catch(() => undefined);
        await resume();
      }
    };

    const novacronRun = async (mbit: number, compression: 'adaptive' | 'off' | number): Promise<Run> => {
      const variant = `novacron-${compression === 'adaptive' || compression === 'off' ? compression : `zstd${compression}`}`;
      const link = () => ({ rttMs: null, throughputBytesPerSec: null });
      await srcQmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * 1024 ** 3 });
      // As the node does: the dirty-rate sample runs while the target prepares. The clock starts when the target is
      // ready, where plain QEMU's starts; whatever of the sample is left then counts.
      const pause = watchPause(srcQmp);
      const estimating = estimateBeforeStart({ qmp: srcQmp, downtimeLimitMs: migrationOptionsDefault.downtimeLimitMs, link, signal: new AbortController().signal, nowMs: Date.now, logger });
      try {
        const ready = await targetSays({ op: 'prepare', config, runDir: join(dir, 'd') });
        if (ready.op !== 'ready') throw new Error(`the target could not prepare: ${ready.error ?? ready.op}`);
        const tx0 = txBytes();
        const t0 = performance.now();
        const estimate = await estimating;
        let loadedAtMs: number | null = null;
        const result = await runSource({
          ...(estimate === null ? {} : { initialProgress: estimate }),
          migrationId: 'bench',
          qmp: srcQmp,
          disks: [],
          workDir: join(dir, 'ws'),
          openChannel: async () => socketChannel(await connectTcp(nsIp, targetPort)),
          options: { ...migrationOptionsDefault, compression, autoConverge: false, deadlineMs: runTimeoutMs },
          link,
          beforeSwitchover: async () => true,
          // As the node does: the move counts as done once the target loaded it all (the clock runs until then).
          targetLoaded: async () => {
            const loaded = (await targetSays({ op: 'loaded' })).op === 'loaded';
            loadedAtMs = Date.now();
            return loaded;
          },
          commit: async () => true,
          onProgress: () => undefined,
          signal: new AbortController().signal,
          nowMs: Date.now,
          logger,
        });
        const ms = performance.now() - t0;
        return { variant, mbit, ms, wireBytes: txBytes() - tx0, downtimeMs: result.progress.downtimeMs ?? null, pauseMs: loadedAtMs === null ? null : pause.pauseUntil(loadedAtMs), ok: true };
      } catch (err) {
        return { variant, mbit, ms: 0, wireBytes: 0, downtimeMs: null, pauseMs: null, ok: false, error: err instanceof Error ? err.message : String(err) };
      } finally {
        pause.off();
        await targetSays({ op: 'abort' });
        await resume();
      }
    };

    for (const mbit of speeds) {
      shape(mbit);
      const variants: Array<[string, () => Promise<Run>]> = [
        ['qemu', () => qemuRun(mbit, 'qemu')],
        ['qemu-multifd-zstd', () => qemuRun(mbit, 'qemu-multifd-zstd')],
        ['novacron-adaptive', () => novacronRun(mbit, 'adaptive')],
        ['novacron-off', () => novacronRun(mbit, 'off')],
        ...fixedLevels.map((l): [string, () => Promise<Run>] => [`novacron-zstd${l}`, () => novacronRun(mbit, l)]),
      ];
      // --variants runs them in the order given (to see whether a variant's place in the run matters).
      const chosen = onlyVariants === null ? variants : onlyVariants.flatMap((n) => variants.filter(([name]) => name === n));
      let warmedUp = false;
      for (const [name, v] of chosen) {
        if (name.startsWith('novacron-') && !warmedUp) {
          // The first NovaCron run after QEMU's ran 0.4–0.8 s slower at 1 Gbit/s whichever variant it was (zstd 1: 1.70
          // then 1.22 s), which is the place the adaptive run always had: one unrecorded run (fixed level 3) first.
          warmedUp = true;
          const w = await novacronRun(mbit, 3);
          console.log(`${String(mbit).padStart(5)} Mbit/s  ${'(warm-up, zstd3)'.padEnd(20)} ${w.ok ? `${(w.ms / 1000).toFixed(2).padStart(7)} s, not counted` : `FAILED: ${w.error ?? ''}`}`);
        }
        const r = await v();
        runs.push(r);
        console.log(`${String(mbit).padStart(5)} Mbit/s  ${r.variant.padEnd(20)} ${r.ok ? `${(r.ms / 1000).toFixed(2).padStart(7)} s  ${(r.wireBytes / 1e6).toFixed(1).padStart(7)} MB on the wire  downtime ${r.downtimeMs ?? '?'} ms  paused ${r.pauseMs ?? '?'} ms` : `FAILED: ${r.error ?? ''}`}`);
      }
    }
  } finally {
    // Closing the IPC channel makes the target process remove its QEMU and exit.
    target?.disconnect();
    for (const d of [src, dstNs]) for (const v of d.list()) await d.delete(v).catch(() => undefined);
    teardownNetwork();
    rmSync(dir, { recursive: true, force: true });
  }

  const summary: Record<string, unknown> = {};
  for (const mbit of speeds) {
    const at = runs.filter((r) => r.mbit === mbit && r.ok);
    const ms = (variant: string): number | null => at.find((r) => r.variant === variant)?.ms ?? null;
    const plain = ms('qemu');
    const adaptive = ms('novacron-adaptive');
    const fixed = at.filter((r) => r.variant.startsWith('novacron-') && r.variant !== 'novacron-adaptive');
    const best = fixed.reduce<Run | null>((b, r) => (b === null || r.ms < b.ms ? r : b), null);
    summary[String(mbit)] = {
      runs: Object.fromEntries(at.map((r) => [r.variant, { seconds: +(r.ms / 1000).toFixed(2), wireMB: +(r.wireBytes / 1e6).toFixed(1), downtimeMs: r.downtimeMs, pauseMs: r.pauseMs }])),
      speedupVsPlainQemu: plain !== null && adaptive !== null ? +(plain / adaptive).toFixed(2) : null,
      speedupVsMultifdZstd: ms('qemu-multifd-zstd') !== null && adaptive !== null ? +((ms('qemu-multifd-zstd') ?? 0) / adaptive).toFixed(2) : null,
      bestFixed: best?.variant ?? null,
      adaptiveVsBestFixed: best !== null && adaptive !== null ? +(adaptive / best.ms).toFixed(3) : null,
      failed: runs.filter((r) => r.mbit === mbit && !r.ok).map((r) => `${r.variant}: ${r.error ?? ''}`),
    };
  }
  console.log(JSON.stringify({ bench: 'migration', guestMiB: 256, fill, speedsMbit: speeds, results: summary }));
}

main().catch((err: unknown) => {
  console.error(err);
  teardownNetwork();
  process.exit(1);
});
