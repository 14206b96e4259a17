// Proves the demo guest boots under real QEMU (TCG): boot id and heartbeats on the serial console, data on its disk survives a guest reboot and a QEMU restart on the same overlay, the power button shuts it down, and memtouch reports clean passes.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import {
  ConsoleLineSplitter,
  demoGuestCmdline,
  ensureDemoGuest,
  parseConsoleLine,
  type ConsoleEvent,
  type DemoGuest,
} from '../../node/hypervisor/demo-guest.js';
import { commandWorks, describeIf } from '../support/prereq.js';

const qemuBinary = 'qemu-system-x86_64';
/** Building from scratch takes seconds; a loaded shared machine gets more. */
const buildTimeoutMs = 5 * 60_000;
/** Measured ~5 s to the first heartbeat under TCG; generous for two shared cores. */
const bootTimeoutMs = 90_000;
const commandTimeoutMs = 30_000;
/** Three heartbeats, a second apart. */
const heartbeatsTimeoutMs = 20_000;
/** memtouch reports at most every 3 s (guest time). */
const memtouchReportTimeoutMs = 30_000;
const powerdownTimeoutMs = 60_000;
const socketConnectTimeoutMs = 10_000;
const socketRetryMs = 50;
/** Console text kept for diagnostics when a wait fails. */
const consoleTailChars = 8_000;
const testTimeoutMs = 5 * 60_000;

interface Seen {
  atMs: number;
  event: ConsoleEvent;
}

/** One QEMU process running the demo guest, with its serial console on a unix socket. */
class GuestVm {
  readonly events: Seen[] = [];
  readonly lines: string[] = [];
  readonly startedAtMs = Date.now();
  private readonly splitter = new ConsoleLineSplitter();
  private tail = '';
  private serial: Socket | undefined;
  private exited: Promise<number | null>;
  private stderr = '';

  private constructor(
    readonly child: ChildProcess,
    private readonly monitorPath: string,
  ) {
    child.stderr?.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-consoleTailChars)));
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  }

  static async start(guest: DemoGuest, dir: string, name: string, overlay: string, cmdline: string): Promise<GuestVm> {
    const serialPath = join(dir, `${name}.serial.sock`);
    const monitorPath = join(dir, `${name}.monitor.sock`);
    const args = [
      '-accel', 'tcg',
      '-nodefaults', '-display', 'none',
      '-m', String(guest.memoryMiB),
      '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', cmdline,
      '-drive', `file=${overlay},if=none,id=data0,format=qcow2`, '-device', 'virtio-blk-pci,drive=data0',
      '-netdev', 'user,id=net0', '-device', 'virtio-net-pci,netdev=net0',
      // wait=on: QEMU holds the guest until we are connected, so no console line is missed.
      '-chardev', `socket,id=ser0,path=${serialPath},server=on,wait=on,logfile=${join(dir, `${name}.console.log`)}`,
      '-serial', 'chardev:ser0',
      '-monitor', `unix:${monitorPath},server=on,wait=off`,
    ];
    const child = spawn(qemuBinary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const vm = new GuestVm(child, monitorPath);
    vm.serial = await connectWhenListening(serialPath);
    vm.serial.on('data', (d: Buffer) => vm.onConsole(d));
    return vm;
  }

  private onConsole(chunk: Buffer): void {
    this.tail = (this.tail + chunk.toString('latin1')).slice(-consoleTailChars);
    for (const line of this.splitter.push(chunk)) {
      this.lines.push(line);
      const event = parseConsoleLine(line);
      if (event !== null) this.events.push({ atMs: Date.now(), event });
    }
  }

  /** Waits for the first event at or after index `from` that satisfies `pred`. */
  async waitFor<K extends ConsoleEvent['kind']>(
    kind: K,
    pred: (e: Extract<ConsoleEvent, { kind: K }>) => boolean,
    timeoutMs: number,
    from = 0,
  ): Promise<Extract<ConsoleEvent, { kind: K }> & { atMs: number; index: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = from; i < this.events.length; i++) {
        const seen = this.events[i];
        if (seen === undefined || seen.event.kind !== kind) continue;
        const e = seen.event as Extract<ConsoleEvent, { kind: K }>;
        if (pred(e)) return { ...e, atMs: seen.atMs, index: i };
      }
      if (Date.now() > deadline) throw new Error(`no ${kind} event within ${timeoutMs} ms; console tail:\n${this.tail}\nqemu stderr:\n${this.stderr}`);
      await sleep(socketRetryMs);
    }
  }

  send(text: string): void {
    this.serial?.write(text);
  }

  /**
   * Types a command into the console shell and waits until it has run: the marker is computed by the shell
   * ($((...))), so the echo of what we typed never matches it.
   */
  async run(command: string): Promise<string[]> {
    const a = randomBytes(2).readUInt16BE() + 1000;
    const from = this.lines.length;
    this.serial?.write(`${command}; echo CMD-DONE-$((${a}+1))\n`);
    const marker = `CMD-DONE-${a + 1}`;
    const deadline = Date.now() + commandTimeoutMs;
    for (;;) {
      const at = this.lines.findIndex((l, i) => i >= from && l.endsWith(marker) && !l.includes('$(('));
      if (at >= 0) return this.lines.slice(from, at);
      if (Date.now() > deadline) throw new Error(`\`${command}\` did not finish within ${commandTimeoutMs} ms; console tail:\n${this.tail}`);
      await sleep(socketRetryMs);
    }
  }

  /** The QEMU human monitor: enough for system_powerdown without a QMP client. */
  async monitor(command: string): Promise<void> {
    const sock = await connectWhenListening(this.monitorPath);
    sock.write(`${command}\n`);
    await sleep(500);
    sock.destroy();
  }

  async waitExit(timeoutMs: number): Promise<number | null> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`QEMU did not exit within ${timeoutMs} ms; console tail:\n${this.tail}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async kill(): Promise<void> {
    this.serial?.destroy();
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}

async function connectWhenListening(path: string): Promise<Socket> {
  const deadline = Date.now() + socketConnectTimeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(path);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(socketRetryMs);
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

const haveQemu = commandWorks(qemuBinary) && commandWorks('qemu-img');
// What packaging/guest/build.sh needs besides QEMU (setup-host.sh --qemu installs it).
const canBuildGuest = commandWorks('gcc') && commandWorks('cpio') && existsSync('/bin/busybox') && readdirSync('/boot').some((f) => f.startsWith('vmlinuz-'));

describeIf({ qemu: haveQemu, 'demo guest build tools': canBuildGuest })('demo guest under QEMU (TCG)', () => {
  let guest: DemoGuest;
  let dir = '';
  const vms: GuestVm[] = [];
  const start = async (name: string, overlay: string, cmdline: string): Promise<GuestVm> => {
    const vm = await GuestVm.start(guest, dir, name, overlay, cmdline);
    vms.push(vm);
    return vm;
  };
  const overlay = (name: string): string => {
    const path = join(dir, `${name}.qcow2`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', guest.dataDisk, path]);
    return path;
  };

  beforeAll(async () => {
    const t0 = Date.now();
    guest = await ensureDemoGuest({ timeoutMs: buildTimeoutMs });
    console.log(`demo guest ready in ${Date.now() - t0} ms (kernel ${guest.manifest.kernelVersion})`);
    dir = mkdtempSync(join(tmpdir(), 'novacron-demo-guest-'));
  }, buildTimeoutMs);

  afterEach(async () => {
    await Promise.all(vms.splice(0).map((vm) => vm.kill()));
  });

  afterAll(() => {
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it(
    'reports a boot id, then heartbeats that count up once a second',
    async () => {
      const vm = await start('boot', overlay('boot'), guest.cmdline);
      const bootId = await vm.waitFor('boot-id', () => true, bootTimeoutMs);
      const first = await vm.waitFor('heartbeat', () => true, bootTimeoutMs);
      console.log(`TCG boot: boot id after ${bootId.atMs - vm.startedAtMs} ms, first heartbeat after ${first.atMs - vm.startedAtMs} ms`);
      const later = await vm.waitFor('heartbeat', (h) => h.count >= first.count + 3, heartbeatsTimeoutMs);
      expect(later.count).toBe(first.count + 3);
      // Three beats take about three seconds; TCG on a shared machine may stretch them a little.
      expect(later.atMs - first.atMs).toBeGreaterThan(2_000);
      expect(later.atMs - first.atMs).toBeLessThan(15_000);
      const counts = vm.events.filter((s) => s.event.kind === 'heartbeat').map((s) => (s.event.kind === 'heartbeat' ? s.event.count : 0));
      expect(counts).toEqual(counts.map((_, i) => counts[0]! + i));
    },
    testTimeoutMs,
  );

  it(
    'keeps data written through the console across a guest reboot and a QEMU restart, with a new boot id each time',
    async () => {
      const disk = overlay('persist');
      const word = `hello-${randomBytes(4).toString('hex')}`;
      let vm = await start('persist-1', disk, guest.cmdline);
      const boot1 = await vm.waitFor('boot-id', () => true, bootTimeoutMs);
      await vm.waitFor('heartbeat', () => true, bootTimeoutMs);
      await vm.run(`echo ${word} > /data/x; sync`);

      // A reboot inside the guest: same QEMU process, a fresh kernel.
      const mark = vm.events.length;
      vm.send('reboot\n');
      const boot2 = await vm.waitFor('boot-id', () => true, bootTimeoutMs, mark);
      expect(boot2.bootId).not.toBe(boot1.bootId);
      await vm.waitFor('heartbeat', () => true, bootTimeoutMs, boot2.index);
      expect(await vm.run('cat /data/x')).toContain(word);

      // The ACPI power button shuts the guest down cleanly and QEMU exits.
      await vm.monitor('system_powerdown');
      expect(await vm.waitExit(powerdownTimeoutMs)).toBe(0);

      vm = await start('persist-2', disk, guest.cmdline);
      const boot3 = await vm.waitFor('boot-id', () => true, bootTimeoutMs);
      expect([boot1.bootId, boot2.bootId]).not.toContain(boot3.bootId);
      await vm.waitFor('heartbeat', () => true, bootTimeoutMs);
      expect(await vm.run('cat /data/x')).toContain(word);
      await vm.kill();

      // Everything went to the overlay: the base image is still the one the manifest describes.
      expect(sha256(guest.dataDisk)).toBe(guest.manifest.files['data.qcow2'].sha256);
    },
    testTimeoutMs,
  );

  it(
    'formats a blank data disk, and runs memtouch from the kernel command line and by hand, reporting clean passes',
    async () => {
      const blank = join(dir, 'blank.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', blank, '16M']);
      const vm = await start('memtouch', blank, demoGuestCmdline(guest.cmdline, { memtouch: { mib: 32 } }));
      const started = await vm.waitFor('memtouch-start', () => true, bootTimeoutMs);
      expect(started).toMatchObject({ mib: 32, pages: 8192, pagesPerSecond: 0, locked: true });
      const ok1 = await vm.waitFor('memtouch-ok', () => true, memtouchReportTimeoutMs, started.index);
      await vm.waitFor('memtouch-ok', (e) => e.pass > ok1.pass, memtouchReportTimeoutMs, ok1.index + 1);

      await vm.run('memtouch-stop');
      await vm.run('memtouch-start 8 4000');
      const paced = await vm.waitFor('memtouch-start', (e) => e.mib === 8, commandTimeoutMs);
      expect(paced).toMatchObject({ pages: 2048, pagesPerSecond: 4000 });
      const okPaced = await vm.waitFor('memtouch-ok', () => true, memtouchReportTimeoutMs, paced.index);
      // 2048 pages at 4000 pages/s: about two passes a second, so a few passes by the first report.
      expect(okPaced.pass).toBeLessThan(20);
      expect(vm.events.some((s) => s.event.kind === 'memtouch-corrupt')).toBe(false);

      expect(vm.lines.some((l) => l.includes('novacron: formatting blank /dev/vda'))).toBe(true);
      expect(await vm.run('echo data > /data/y && cat /data/y && echo WRITABLE')).toContain('WRITABLE');
    },
    testTimeoutMs,
  );
});
