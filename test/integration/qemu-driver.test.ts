// Proves the QEMU driver against real QEMU (TCG): probe falls back to TCG, a busybox guest boots and its heartbeat stops on pause and resumes, reset reboots it, stats are numbers, a refused start reports QEMU's message, a new driver re-attaches to the same QEMU, stop forces a guest without acpid and cleans up, and an externally killed QEMU is reported as exited with a reason.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { chooseAccel, clearAccelCache, probeKvm } from '../../node/hypervisor/accel.js';
import { QemuDriver, isVmProcess } from '../../node/hypervisor/qemu.js';
import type { QemuVmConfig } from '../../node/hypervisor/qemu-args.js';
import { commandWorks, describeIf } from '../support/prereq.js';
import { pidAlive } from '../support/proc.js';

const qemu = 'qemu-system-x86_64';
const kernel = existsSync('/boot') ? readdirSync('/boot').find((f) => f.startsWith('vmlinuz-')) : undefined;
const busybox = '/usr/bin/busybox';
const logger = pino({ level: 'silent' });

const init = `#!/bin/busybox sh
/bin/busybox mkdir -p /dev /proc
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/ttyS0 >/dev/ttyS0 2>&1
i=0
while true; do echo "heartbeat $i"; i=$((i+1)); /bin/busybox usleep 200000; done
`;

function buildInitramfs(dir: string): string {
  const root = join(dir, 'root');
  mkdirSync(join(root, 'bin'), { recursive: true });
  execFileSync('cp', [busybox, join(root, 'bin', 'busybox')]);
  writeFileSync(join(root, 'init'), init);
  chmodSync(join(root, 'init'), 0o755);
  const out = join(dir, 'initramfs.cpio');
  execFileSync('sh', ['-c', `cd '${root}' && find . | cpio -o -H newc --quiet > '${out}'`]);
  return out;
}

function heartbeats(consoleLog: string): number {
  if (!existsSync(consoleLog)) return 0;
  return (readFileSync(consoleLog, 'utf8').match(/heartbeat \d+/g) ?? []).length;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean | Promise<boolean>, { timeoutMs, intervalMs }: { timeoutMs: number; intervalMs: number }): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

describeIf({ qemu: commandWorks(qemu), kernel: kernel !== undefined, busybox: existsSync(busybox), cpio: commandWorks('cpio') })('QEMU driver (real QEMU)', () => {
  let dir: string;
  let runDir: string;
  let initramfs: string;
  const cleanup: QemuDriver[] = [];

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'nc-qemu-'));
    runDir = join(dir, 'run');
    initramfs = buildInitramfs(dir);
  });

  afterAll(async () => {
    for (const d of cleanup) for (const id of d.list()) await d.delete(id).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  function vm(name: string, withKernel = true): QemuVmConfig {
    return {
      id: randomUUID(),
      name,
      vcpus: 1,
      memoryMiB: 128,
      disks: [],
      nics: [{ model: 'virtio-net-pci', network: { mode: 'user', portForwards: [] } }],
      ...(withKernel ? { kernel: join('/boot', kernel ?? ''), initrd: initramfs, cmdline: 'console=ttyS0 quiet panic=-1' } : {}),
    };
  }

  it('probe picks TCG here, and the probe guest itself is right (exits 85 under TCG)', async () => {
    clearAccelCache();
    const tcgRun = await probeKvm(qemu, 10_000, 'tcg');
    expect(tcgRun.ok, tcgRun.reason).toBe(true);
    const started = Date.now();
    const choice = await chooseAccel(qemu, 'auto', logger);
    const elapsed = Date.now() - started;
    console.log(`accel probe: ${JSON.stringify(choice)} in ${elapsed} ms; TCG probe guest ran in ${tcgRun.elapsedMs} ms`);
    expect(choice.accel).toBe('tcg');
    expect(elapsed).toBeLessThan(6_000);
    expect(await chooseAccel(qemu, 'auto', logger)).toBe(choice); // cached per process
    expect((await chooseAccel(qemu, 'tcg')).reason).toBe('configured');
  });

  it('boots, pauses, resumes, reports stats, re-attaches after a node restart, and stops by force', async () => {
    const driver = new QemuDriver({ runDir, qemuBinary: qemu, accel: 'tcg', logger });
    cleanup.push(driver);
    const config = vm('heartbeat');
    const t0 = Date.now();
    const record = await driver.start(config);
    const consoleLog = record.paths.consoleLog;
    await waitFor(() => heartbeats(consoleLog) >= 2, { timeoutMs: 30_000, intervalMs: 100 });
    console.log(`boot to second heartbeat under TCG: ${Date.now() - t0} ms`);
    expect((await driver.status(config.id)).state).toBe('running');

    await driver.pause(config.id);
    expect((await driver.status(config.id)).state).toBe('paused');
    const paused = heartbeats(consoleLog);
    await sleep(1_000);
    expect(heartbeats(consoleLog)).toBeLessThanOrEqual(paused + 1); // one line may have been in flight
    const beforeResume = heartbeats(consoleLog);
    await driver.resume(config.id);
    await waitFor(() => heartbeats(consoleLog) >= beforeResume + 3, { timeoutMs: 10_000, intervalMs: 100 });

    // system_reset: the guest boots again, so its counter restarts at 0.
    await driver.reboot(config.id);
    await waitFor(() => (readFileSync(consoleLog, 'utf8').match(/heartbeat 0\b/g) ?? []).length >= 2, { timeoutMs: 30_000, intervalMs: 100 });

    const stats = await driver.stats(config.id);
    expect(stats.cpuTimeMs).toBeGreaterThan(0);
    expect(stats.memory.configuredBytes).toBe(128 * 1024 * 1024);
    expect(stats.memory.rssBytes).toBeGreaterThan(0);
    expect(Array.isArray(stats.block)).toBe(true);
    expect(stats.net).toEqual([{ nic: 'net0', mode: 'user', rxBytes: null, txBytes: null, rxPackets: null, txPackets: null }]);

    // "Node restart": drop the driver (QEMU keeps running), build a new one from the run dir.
    driver.close();
    const driver2 = new QemuDriver({ runDir, qemuBinary: qemu, accel: 'tcg', logger });
    cleanup.push(driver2);
    const attached = await driver2.attachAll();
    expect(attached).toEqual([{ vmId: config.id, name: 'heartbeat', pid: record.pid, attached: true }]);
    expect(await driver2.status(config.id)).toMatchObject({ state: 'running', pid: record.pid });
    const afterAttach = heartbeats(consoleLog);
    await waitFor(() => heartbeats(consoleLog) >= afterAttach + 2, { timeoutMs: 10_000, intervalMs: 100 });

    // busybox has no acpid, so the power button is ignored and stop must force.
    const stopped = await driver2.stop(config.id, { timeoutMs: 1_500 });
    console.log(`stop: ${JSON.stringify(stopped)}`);
    expect(['quit', 'kill']).toContain(stopped.how);
    expect(await isVmProcess(record.pid, config.id)).toBe(false);
    // The test process is QEMU's parent here, so the pid lingers as a zombie until Node reaps it.
    await waitFor(() => !pidAlive(record.pid), { timeoutMs: 2_000, intervalMs: 20 });
    expect(existsSync(record.paths.record)).toBe(false);
    expect(existsSync(record.paths.qmpSocket)).toBe(false);
    expect(existsSync(record.paths.pidFile)).toBe(false);
    expect(driver2.list()).toEqual([]);
    await driver2.delete(config.id);
    expect(existsSync(record.paths.dir)).toBe(false);
  });

  it('fails a start that QEMU refuses with its message, leaving no runtime record', async () => {
    const driver = new QemuDriver({ runDir, qemuBinary: qemu, accel: 'tcg', logger });
    cleanup.push(driver);
    const config = { ...vm('bad-disk', false), disks: [{ path: join(dir, 'missing.qcow2') }] };
    const err = await driver.start(config).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'qemu_start_failed' });
    expect(String((err as Error).message)).toMatch(/missing\.qcow2/);
    expect(existsSync(join(runDir, config.id, 'runtime.json'))).toBe(false);
    expect(driver.list()).toEqual([]);
  });

  it('reports a QEMU killed from outside as exited with a reason, attached or not', async () => {
    const driver = new QemuDriver({ runDir, qemuBinary: qemu, accel: 'tcg', logger });
    cleanup.push(driver);
    const a = vm('killed-live', false);
    const b = vm('killed-while-down', false);
    const recA = await driver.start(a);
    const recB = await driver.start(b);
    const exits: [string, string][] = [];
    driver.onVmExit((id, reason) => exits.push([id, reason]));

    process.kill(recA.pid, 'SIGKILL');
    await waitFor(() => exits.length > 0, { timeoutMs: 10_000, intervalMs: 50 });
    const statusA = await driver.status(a.id);
    expect(statusA.state).toBe('exited');
    expect(statusA.reason).toMatch(/SIGKILL|exited/);
    await expect(driver.pause(a.id)).rejects.toMatchObject({ code: 'vm_not_running' });

    driver.close();
    process.kill(recB.pid, 'SIGKILL');
    await waitFor(async () => !(await isVmProcess(recB.pid, b.id)), { timeoutMs: 5_000, intervalMs: 50 });
    const driver2 = new QemuDriver({ runDir, qemuBinary: qemu, accel: 'tcg', logger });
    cleanup.push(driver2);
    const attached = await driver2.attachAll();
    const resB = attached.find((r) => r.vmId === b.id);
    expect(resB).toMatchObject({ attached: false });
    expect(resB?.reason).toMatch(/exited while the node was not watching/);
    expect((await driver2.status(b.id)).state).toBe('exited');
    await driver2.stop(b.id);
    await driver2.delete(a.id); // a's record from the first driver: runtime files of a dead VM
    expect(existsSync(recB.paths.record)).toBe(false);
    expect(existsSync(recA.paths.dir)).toBe(false);
  });
});
