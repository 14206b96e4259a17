// Proves the migration engine against two real QEMUs (TCG) joined by an in-memory channel: the demo guest running memtouch moves with its disk (mirrored over NBD through the tunnel) and its memory pattern, heartbeat and boot id intact; a guest dirtying memory faster than pre-copy converges through auto-converge or is cancelled at its deadline (and without auto-converge is cancelled), opt-in post-copy moves it, never reported complete with a corrupt guest; a cancel mid-transfer and a refused commit each leave the guest running on the source with no migration, block job or NBD node left behind.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { demoGuestCmdline, ensureDemoGuest, type DemoGuest } from '../../node/hypervisor/demo-guest.js';
import { QemuDriver } from '../../node/hypervisor/qemu.js';
import { diskNodeName, type QemuVmConfig } from '../../node/hypervisor/qemu-args.js';
import type { EngineProgress, EngineTargetSession } from '../../node/migration/engine.js';
import { migrationOptionsDefault, type MigrationOptions } from '../../consensus/cluster/commands.js';
import { estimateBeforeStart, prepareTarget, runSource } from '../../migration/index.js';
import { channelPair } from '../support/channel-pair.js';
import { commandWorks, describeIf } from '../support/prereq.js';
import { pollFor } from '../support/cluster-http.js';
import { lastBootId, lastHeartbeat, lastMemtouchPass, memtouchCorrupt } from '../support/guest-console.js';

const logger = pino({ level: process.env.NOVACRON_TEST_LOG ?? 'silent' });
const bootBoundMs = 60_000;
const migrationBoundMs = 120_000;
/** Paced so pre-copy converges under TCG without help (packaging/guest/README.md). */
const memtouch = { mib: 16, pagesPerSecond: 2_000 };

const haveQemu = commandWorks('qemu-system-x86_64') && commandWorks('qemu-img', ['--version']);

function consoleLines(driver: QemuDriver, vmId: string): string[] {
  const log = driver.record(vmId).paths.consoleLog;
  return existsSync(log) ? readFileSync(log, 'latin1').split('\n').map((l) => l.replace(/\r/g, '')) : [];
}


/** Types a command into the guest's root shell on its serial console. */
async function shell(driver: QemuDriver, vmId: string, command: string): Promise<void> {
  const sock = driver.record(vmId).paths.consoleSocket;
  await new Promise<void>((resolve, reject) => {
    const c = createConnection(sock, () => c.write(`${command}\n`, () => setTimeout(() => (c.end(), resolve()), 300)));
    c.on('error', reject);
  });
}

describeIf({ qemu: haveQemu })('migration engine between two QEMUs', () => {
  let guest: DemoGuest;
  let dir = '';
  let src: QemuDriver;
  let dst: QemuDriver;

  beforeAll(async () => {
    guest = await ensureDemoGuest();
    dir = mkdtempSync('/tmp/nc-me-');
    src = new QemuDriver({ runDir: join(dir, 's'), qemuBinary: 'qemu-system-x86_64', accel: 'tcg', logger });
    dst = new QemuDriver({ runDir: join(dir, 'd'), qemuBinary: 'qemu-system-x86_64', accel: 'tcg', logger });
  }, 300_000);

  afterAll(async () => {
    for (const d of [src, dst]) for (const id of d?.list() ?? []) await d.delete(id).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  function config(id: string, side: string, touch: { mib: number; pagesPerSecond: number } = memtouch): QemuVmConfig {
    const disk = join(dir, `${side}-${id.slice(0, 8)}.qcow2`);
    if (!existsSync(disk)) execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.dataDisk, '-F', 'qcow2', disk]);
    return {
      id,
      name: 'mover',
      vcpus: 1,
      memoryMiB: guest.memoryMiB,
      disks: [{ path: disk }],
      nics: [{ model: 'virtio-net-pci' }],
      kernel: guest.kernel,
      initrd: guest.initrd,
      cmdline: demoGuestCmdline(guest.cmdline, { memtouch: touch }),
    };
  }

  async function bootSource(touch = memtouch): Promise<string> {
    const id = randomUUID();
    await src.start(config(id, 'src', touch));
    await pollFor('memtouch pass on the source', bootBoundMs, async () => lastMemtouchPass(consoleLines(src, id)) >= 1, 250);
    return id;
  }

  async function migrate(id: string, opts: { cancelAt?: (p: EngineProgress) => boolean; commit?: boolean; goLiveOnCommit?: boolean; options?: Partial<MigrationOptions> } = {}) {
    const target = config(id, 'dst');
    const link = () => ({ rttMs: 1, throughputBytesPerSec: 100_000_000 });
    // As the node does: the dirty-rate sample runs while the target starts its QEMU.
    const estimating = estimateBeforeStart({ qmp: await src.qmp(id), downtimeLimitMs: migrationOptionsDefault.downtimeLimitMs, link, signal: new AbortController().signal, nowMs: Date.now, logger });
    await dst.startIncoming(target);
    const workDir = join(dir, `w-${id.slice(0, 8)}`);
    const session: EngineTargetSession = await prepareTarget({ migrationId: 'm1', qmp: await dst.qmp(id), disks: [{ nodeName: diskNodeName(0) }], workDir: `${workDir}-t`, postcopy: opts.options?.postcopy ?? false, logger, nowMs: Date.now });
    const abort = new AbortController();
    const progress: EngineProgress[] = [];
    let channelBytes = 0;
    const pairs: Array<ReturnType<typeof channelPair>> = [];
    const estimate = await estimating;
    const run = runSource({
      migrationId: 'm1',
      ...(estimate === null ? {} : { initialProgress: estimate }),
      qmp: await src.qmp(id),
      disks: [{ nodeName: diskNodeName(0), exportName: session.exports[0] ?? '' }],
      workDir: `${workDir}-s`,
      openChannel: async (kind) => {
        const pair = channelPair();
        pairs.push(pair);
        void session.acceptChannel(kind, pair.b).catch(() => undefined);
        return pair.a;
      },
      options: { ...migrationOptionsDefault, deadlineMs: migrationBoundMs, ...opts.options },
      link,
      beforeSwitchover: async () => true,
      targetLoaded: () => session.loaded().then(
        () => true,
        () => false,
      ),
      commit: async () => {
        // As the node does: once committed, the target is told to run (in post-copy it must, to fault pages in).
        if ((opts.commit ?? true) && opts.goLiveOnCommit === true) void session.goLive().catch(() => undefined);
        return opts.commit ?? true;
      },
      onProgress: (p) => {
        progress.push({ ...p });
        if (opts.cancelAt?.(p) === true && !abort.signal.aborted) abort.abort(new Error('cancelled by the test'));
      },
      signal: abort.signal,
      nowMs: Date.now,
      logger,
    });
    const result = await run.then((r) => ({ ok: true as const, r }), (err: unknown) => ({ ok: false as const, err }));
    channelBytes = pairs.reduce((a, p) => a + p.bytes().aToB, 0);
    return { result, session, progress, channelBytes, estimate };
  }

  async function sourceIsClean(id: string): Promise<void> {
    const qmp = await src.qmp(id);
    const st = await qmp.execute<{ running: boolean; status: string }>('query-status');
    expect(st).toMatchObject({ running: true, status: 'running' });
    expect(await qmp.execute<unknown[]>('query-block-jobs')).toEqual([]);
    const nodes = await qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes');
    expect(nodes.filter((n) => n['node-name'].startsWith('mig-'))).toEqual([]);
    const beat = lastHeartbeat(consoleLines(src, id));
    await pollFor('heartbeat goes on on the source', 30_000, async () => lastHeartbeat(consoleLines(src, id)) > beat, 250);
  }

  it('moves the guest with its disk: memory pattern, heartbeat, boot id and disk data intact', async () => {
    const id = await bootSource();
    const mark = `NOVACRON-DISKMARK-${Date.now()}`;
    await shell(src, id, `printf '${mark}' | dd of=/dev/vda bs=512 seek=1 conv=notrunc,fsync 2>/dev/null; echo wrote-mark`);
    await pollFor('mark written', 30_000, async () => consoleLines(src, id).some((l) => l.startsWith('wrote-mark')), 200);
    const bootId = lastBootId(consoleLines(src, id));
    const beat0 = lastHeartbeat(consoleLines(src, id));
    const t0 = Date.now();
    const { result, session, progress, channelBytes, estimate } = await migrate(id);
    if (!result.ok) throw result.err;
    const resumedAt = await session.goLive();
    const final = result.r.progress;
    console.log(`[migration-engine] ${Date.now() - t0} ms, paused→resumed ${resumedAt - result.r.pausedAtMs} ms, wire ${channelBytes} B, ratio ${final.ratio?.toFixed(2)}, level ${final.compressionLevel}, qemu downtime ${final.downtimeMs} ms`);
    // The prediction before anything moved: QEMU's sampled dirty rate, and with the link figure, converging.
    expect(estimate).toMatchObject({ step: 'estimating the dirty rate', converging: true });
    expect(estimate?.dirtyRateBytesPerSec).toBeGreaterThanOrEqual(0);
    expect(progress[0]?.converging).toBe(true);
    expect(progress.some((p) => p.step === 'mirroring disks')).toBe(true);
    expect(progress.some((p) => (p.step ?? '').startsWith('RAM pass'))).toBe(true);
    expect(final.wireBytes).toBeGreaterThan(0);
    expect(final.ratio).toBeGreaterThan(1);
    const sst = await (await src.qmp(id)).execute<{ status: string }>('query-status');
    expect(sst.status).toBe('postmigrate');
    const dstQmp = await dst.qmp(id);
    expect(await dstQmp.execute<{ status: string }>('query-status')).toMatchObject({ status: 'running' });
    await pollFor('heartbeat carries on on the target', 30_000, async () => lastHeartbeat(consoleLines(dst, id)) > beat0, 250);
    const pass = lastMemtouchPass(consoleLines(dst, id));
    await pollFor('a memtouch pass on the target', 30_000, async () => lastMemtouchPass(consoleLines(dst, id)) > pass, 250);
    expect(memtouchCorrupt(consoleLines(dst, id))).toEqual([]);
    await shell(dst, id, 'novacron-bootid');
    await pollFor('boot id on the target', 30_000, async () => lastBootId(consoleLines(dst, id)) !== null, 250);
    expect(lastBootId(consoleLines(dst, id))).toBe(bootId);
    await shell(dst, id, `echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c ${mark.length}; echo ' read-mark'`);
    await pollFor('mark read back on the target', 30_000, async () => consoleLines(dst, id).some((l) => l.includes(`${mark} read-mark`)), 200);
    await src.delete(id);
    await dst.delete(id);
  }, 300_000);

  it('a cancel mid-transfer leaves the guest running on the source, nothing left behind', async () => {
    const id = await bootSource();
    const { result, session } = await migrate(id, { cancelAt: (p) => (p.step ?? '').startsWith('RAM pass') && (p.bytesTransferred ?? 0) > 8 * 1024 * 1024 });
    expect(result.ok).toBe(false);
    expect(String((result as { err: unknown }).err)).toMatch(/cancelled by the test/);
    await session.abort('test');
    await sourceIsClean(id);
    expect(memtouchCorrupt(consoleLines(src, id))).toEqual([]);
    await dst.delete(id);
    await src.delete(id);
  }, 300_000);

  it('a commit that is refused resumes the guest on the source', async () => {
    const id = await bootSource();
    const { result, session } = await migrate(id, { commit: false });
    expect(result.ok).toBe(false);
    expect(String((result as { err: unknown }).err)).toMatch(/not committed/);
    await session.abort('test');
    await sourceIsClean(id);
    await dst.delete(id);
    await src.delete(id);
  }, 300_000);

  // The measurement: 48 MB rewritten in a tight loop under TCG never converges without help.
  const fastDirty = { mib: 48, pagesPerSecond: 0 };

  it('a guest dirtying memory faster than pre-copy moves it converges with auto-converge or is cancelled at its deadline, never completes corrupt', async () => {
    const id = await bootSource(fastDirty);
    const t0 = Date.now();
    const { result, session, progress } = await migrate(id, { options: { autoConverge: true, compression: 'off', deadlineMs: 90_000 } });
    const throttle = Math.max(0, ...progress.map((p) => p.cpuThrottlePercent ?? 0));
    if (result.ok) {
      await session.goLive();
      console.log(`[migration-engine] fast-dirtying guest converged with auto-converge in ${Date.now() - t0} ms, throttle up to ${throttle}%, qemu downtime ${result.r.progress.downtimeMs} ms`);
      const pass = lastMemtouchPass(consoleLines(dst, id));
      await pollFor('a memtouch pass on the target', 60_000, async () => lastMemtouchPass(consoleLines(dst, id)) > pass, 250);
      // Whether QEMU had to throttle depends on how fast this host's TCG dirties memory against the tunnel's speed;
      // what must hold either way is an intact guest.
      expect(memtouchCorrupt(consoleLines(dst, id))).toEqual([]);
    } else {
      console.log(`[migration-engine] fast-dirtying guest with auto-converge: ${String(result.err)} after ${Date.now() - t0} ms, throttle up to ${throttle}%`);
      expect(String(result.err)).toMatch(/deadline/);
      await session.abort('test');
      await sourceIsClean(id);
      expect(memtouchCorrupt(consoleLines(src, id))).toEqual([]);
    }
    await dst.delete(id);
    await src.delete(id);
  }, 300_000);

  // A 16 MB/s link (uncompressed): a pass over 48 MB takes 3 s, and the loop dirties all of it again in far less.
  const linkCapBytesPerSec = 16_000_000;

  it('without auto-converge the same guest on a slow link is cancelled at the deadline and keeps running on the source', async () => {
    const id = await bootSource(fastDirty);
    const { result, session, progress } = await migrate(id, { options: { autoConverge: false, compression: 'off', deadlineMs: 20_000, maxBandwidthBytesPerSec: linkCapBytesPerSec } });
    expect(result.ok).toBe(false);
    expect(String((result as { err: unknown }).err)).toMatch(/did not converge within its deadline/);
    // The prediction said so while it ran.
    expect(progress.some((p) => p.converging === false)).toBe(true);
    await session.abort('test');
    await sourceIsClean(id);
    const pass = lastMemtouchPass(consoleLines(src, id));
    await pollFor('a memtouch pass on the source', 60_000, async () => lastMemtouchPass(consoleLines(src, id)) > pass, 250);
    expect(memtouchCorrupt(consoleLines(src, id))).toEqual([]);
    await dst.delete(id);
    await src.delete(id);
  }, 300_000);

  it('opt-in post-copy moves the guest that pre-copy cannot move over the slow link, memory intact', async () => {
    const id = await bootSource(fastDirty);
    const t0 = Date.now();
    const { result, progress } = await migrate(id, { goLiveOnCommit: true, options: { autoConverge: false, postcopy: true, compression: 'off', deadlineMs: 120_000, maxBandwidthBytesPerSec: linkCapBytesPerSec } });
    if (!result.ok) throw result.err;
    console.log(`[migration-engine] post-copy finished in ${Date.now() - t0} ms after ${progress.filter((p) => p.postcopy !== true).length} pre-copy progress reports`);
    expect(progress.some((p) => p.postcopy === true)).toBe(true);
    await pollFor('target running', 30_000, async () => (await (await dst.qmp(id)).execute<{ status: string }>('query-status')).status === 'running', 250);
    const pass = lastMemtouchPass(consoleLines(dst, id));
    await pollFor('a memtouch pass on the target', 60_000, async () => lastMemtouchPass(consoleLines(dst, id)) > pass, 250);
    expect(memtouchCorrupt(consoleLines(dst, id))).toEqual([]);
    await dst.delete(id);
    await src.delete(id);
  }, 300_000);
});
