// QEMU driver: starts each VM as a detached QEMU (own session, stdio to files) so it outlives the node,
// keeps a runtime record per VM in the run dir so a restarted node re-attaches, and runs the lifecycle
// over QMP. The driver holds no desired state; the agent decides, the driver does and reports.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, open, readFile, readdir, readlink, rename, rm, writeFile } from 'node:fs/promises';
import { ConflictError, NotFoundError, NovaError, errorMessage, type ErrorOptions } from '../errors.js';
import type { Logger } from '../log.js';
import type { Accel } from './accel.js';
import { buildQemuArgs, vmPaths, type QemuVmConfig, type QemuVmPaths } from './qemu-args.js';
import { QmpClient, type QmpEvent } from './qmp.js';

/** From spawn until QMP answers; QEMU 10 under TCG needs ~100 ms on an idle host. */
export const qemuStartTimeoutMs = 15_000;
/** Default deadline for the guest to power off after ACPI system_powerdown. */
export const stopTimeoutMsDefault = 30_000;
/** After `quit`, how long QEMU may take to exit before SIGKILL. */
export const quitTimeoutMs = 3_000;
export const killWaitTimeoutMs = 5_000;
export const qmpTimeoutMsDefault = 5_000;
export const processPollIntervalMs = 50;
/** How much of qemu.log is quoted in an exit reason. */
export const stderrTailBytes = 2_048;
/** Listeners of VM exits and events; the agent and the migration code need a few. */
export const driverListenersMax = 16;
/** USER_HZ of /proc/<pid>/stat on Linux (a fixed ABI value, not the kernel's HZ). */
export const clockTicksPerSecond = 100;
export const runtimeRecordVersion = 1;

export class QemuStartError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('qemu_start_failed', message, options);
  }
}

export class VmNotRunningError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('vm_not_running', message, options);
  }
}

/** What a restarted node needs to find its QEMU again. */
export interface RuntimeRecord {
  version: number;
  vmId: string;
  name: string;
  pid: number;
  binary: string;
  accel: Accel;
  args: string[];
  config: QemuVmConfig;
  paths: QemuVmPaths;
  startedAtMs: number;
}

export type VmState = 'running' | 'paused' | 'shutdown' | 'migrating' | 'starting' | 'error' | 'exited';

export interface VmStatus {
  vmId: string;
  state: VmState;
  pid: number;
  /** QEMU's own run state from query-status, when QEMU answered. */
  qemuStatus?: string;
  /** Why the VM is exited or in error. */
  reason?: string;
}

export interface BlockCounters {
  device: string;
  rdBytes: number;
  wrBytes: number;
  rdOps: number;
  wrOps: number;
}

export interface NetCounters {
  nic: string;
  mode: 'user' | 'bridge';
  /** Host tap device (bridge mode). */
  ifname?: string;
  /** Null when QEMU exposes no counters (user-mode networking: QMP has none). */
  rxBytes: number | null;
  txBytes: number | null;
  rxPackets: number | null;
  txPackets: number | null;
}

export interface VmStats {
  vmId: string;
  atMs: number;
  /** User + system CPU time of the QEMU process (all vCPU and I/O threads). */
  cpuTimeMs: number;
  memory: { configuredBytes: number; rssBytes: number };
  block: BlockCounters[];
  net: NetCounters[];
}

export interface AttachResult {
  vmId: string;
  name: string;
  pid: number;
  attached: boolean;
  reason?: string;
}

export interface StopResult {
  /** How QEMU ended: the guest powered off (acpi), QEMU quit on request, or it was killed. */
  how: 'acpi' | 'quit' | 'kill' | 'already-exited';
  elapsedMs: number;
}

export type VmExitListener = (vmId: string, reason: string) => void;
export type VmEventListener = (vmId: string, event: QmpEvent) => void;

export interface QemuDriverOptions {
  runDir: string;
  qemuBinary: string;
  accel: Accel;
  logger: Logger;
  qmpTimeoutMs?: number;
  cpuModel?: string;
}

interface Entry {
  record: RuntimeRecord;
  qmp: QmpClient | null;
  exitReason: string | null;
  /** Set while stop/delete runs, so the resulting exit is not reported as a failure. */
  stopping: boolean;
  lastShutdown: { guest: boolean; reason: string } | null;
  child: ChildProcess | null;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function readProcState(pid: number): Promise<string | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? null;
  } catch {
    return null;
  }
}

/** True if pid is a live (not zombie) QEMU started with this VM's -uuid: pids are reused after a reboot. */
export async function isVmProcess(pid: number, vmId: string): Promise<boolean> {
  let cmdline: string;
  try {
    cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return false;
  }
  const argv = cmdline.split('\0');
  const i = argv.indexOf('-uuid');
  if (i < 0 || argv[i + 1]?.toLowerCase() !== vmId.toLowerCase() || !(argv[0] ?? '').includes('qemu')) return false;
  const state = await readProcState(pid);
  return state !== null && state !== 'Z' && state !== 'X';
}

async function tail(file: string, bytes: number): Promise<string> {
  try {
    const fh = await open(file, 'r');
    try {
      const { size } = await fh.stat();
      const length = Math.min(size, bytes);
      const buf = Buffer.alloc(length);
      await fh.read(buf, 0, length, size - length);
      return buf.toString('utf8').trim();
    } finally {
      await fh.close();
    }
  } catch {
    return '';
  }
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : 0;
}

export class QemuDriver {
  private readonly options: QemuDriverOptions;
  private readonly log: Logger;
  private readonly entries = new Map<string, Entry>();
  private readonly exitListeners = new Set<VmExitListener>();
  private readonly eventListeners = new Set<VmEventListener>();

  constructor(options: QemuDriverOptions) {
    this.options = options;
    this.log = options.logger.child({ component: 'hypervisor' });
  }

  get runDir(): string {
    return this.options.runDir;
  }

  onVmExit(listener: VmExitListener): () => void {
    if (this.exitListeners.size >= driverListenersMax) throw new ConflictError(`more than ${driverListenersMax} VM exit listeners`);
    this.exitListeners.add(listener);
    return () => this.exitListeners.delete(listener);
  }

  onVmEvent(listener: VmEventListener): () => void {
    if (this.eventListeners.size >= driverListenersMax) throw new ConflictError(`more than ${driverListenersMax} VM event listeners`);
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  /** VM ids this driver knows (running, paused or exited but not yet stopped/deleted). */
  list(): string[] {
    return [...this.entries.keys()];
  }

  record(vmId: string): RuntimeRecord {
    return this.entry(vmId).record;
  }

  /** Starts QEMU paused (-S) waiting for a live migration (-incoming defer); the migration engine drives it over QMP. */
  startIncoming(config: QemuVmConfig): Promise<RuntimeRecord> {
    return this.start(config, { incoming: true });
  }

  /** The VM's QMP connection (reconnected if it dropped), for the migration engine. */
  async qmp(vmId: string): Promise<QmpClient> {
    const entry = this.entry(vmId);
    if (entry.exitReason !== null) throw new VmNotRunningError(`VM ${vmId} is not running: ${entry.exitReason}`);
    return this.qmpOf(entry);
  }

  /** Starts QEMU for a VM; resolves once its QMP socket answers. */
  async start(config: QemuVmConfig, startOptions: { incoming?: boolean } = {}): Promise<RuntimeRecord> {
    const existing = this.entries.get(config.id);
    if (existing !== undefined && existing.exitReason === null) throw new ConflictError(`VM ${config.id} is already running (pid ${existing.record.pid})`);
    if (existing !== undefined) await this.cleanupRuntime(existing, false);
    const paths = vmPaths(this.options.runDir, config.id);
    const args = buildQemuArgs(config, {
      accel: this.options.accel,
      paths,
      incoming: startOptions.incoming === true,
      ...(this.options.cpuModel === undefined ? {} : { cpuModel: this.options.cpuModel }),
    });
    await mkdir(paths.dir, { recursive: true, mode: 0o700 });
    await Promise.all([paths.qmpSocket, paths.consoleSocket, paths.pidFile, paths.record].map((p) => rm(p, { force: true })));
    const out = openSync(paths.stderrLog, 'a', 0o600);
    let child: ChildProcess;
    try {
      // detached: its own session and process group, so a signal to the node's group does not reach it.
      child = spawn(this.options.qemuBinary, args, { detached: true, stdio: ['ignore', out, out] });
    } finally {
      closeSync(out);
    }
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(signal !== null ? `killed by ${signal}` : `exited with code ${code}`)));
    child.unref();
    const pid = child.pid;
    if (pid === undefined) throw new QemuStartError(`could not start ${this.options.qemuBinary}: ${errorMessage(await spawnError)}`);
    const record: RuntimeRecord = {
      version: runtimeRecordVersion,
      vmId: config.id,
      name: config.name,
      pid,
      binary: this.options.qemuBinary,
      accel: this.options.accel,
      args,
      config,
      paths,
      startedAtMs: Date.now(),
    };
    // Written before QMP is up: a node that crashes now still finds (and can clean up) this QEMU.
    await this.writeRecord(record);
    const entry: Entry = { record, qmp: null, exitReason: null, stopping: false, lastShutdown: null, child };
    this.entries.set(config.id, entry);
    const deadline = Date.now() + qemuStartTimeoutMs;
    let early: string | null = null;
    void exited.then((how) => {
      early = how;
    });
    for (;;) {
      if (early !== null) break;
      try {
        entry.qmp = await this.connect(entry, Math.max(100, deadline - Date.now()));
        break;
      } catch (err) {
        if (Date.now() >= deadline) {
          early = `QMP did not answer within ${qemuStartTimeoutMs} ms (${errorMessage(err)})`;
          break;
        }
        await sleep(processPollIntervalMs);
      }
    }
    if (early !== null) {
      const stderr = await tail(paths.stderrLog, stderrTailBytes);
      entry.stopping = true;
      await this.killAndWait(entry);
      await this.cleanupRuntime(entry, false);
      this.entries.delete(config.id);
      throw new QemuStartError(`QEMU for VM ${config.name} did not start: ${early}${stderr === '' ? '' : `: ${stderr}`}`, {
        details: { vmId: config.id, stderr },
      });
    }
    void exited.then((how) => this.onProcessGone(entry, `QEMU ${how}`));
    this.log.info({ vmId: config.id, name: config.name, pid, accel: this.options.accel }, 'VM started');
    return record;
  }

  /** Re-attaches to every VM with a runtime record in the run dir (after a node restart). */
  async attachAll(): Promise<AttachResult[]> {
    let names: string[];
    try {
      names = await readdir(this.options.runDir);
    } catch {
      return [];
    }
    const results: AttachResult[] = [];
    for (const name of names) {
      const result = await this.attach(name).catch(() => null);
      if (result !== null) results.push(result);
    }
    return results;
  }

  /** Re-attaches to one VM from its runtime record; a VM whose QEMU is gone is kept as exited with the reason. */
  async attach(vmId: string): Promise<AttachResult> {
    const known = this.entries.get(vmId);
    if (known !== undefined) return { vmId, name: known.record.name, pid: known.record.pid, attached: known.exitReason === null, ...(known.exitReason === null ? {} : { reason: known.exitReason }) };
    const paths = vmPaths(this.options.runDir, vmId);
    let record: RuntimeRecord;
    try {
      record = JSON.parse(await readFile(paths.record, 'utf8')) as RuntimeRecord;
    } catch (err) {
      throw new NotFoundError(`no runtime record for VM ${vmId}: ${errorMessage(err)}`);
    }
    if (record.version !== runtimeRecordVersion || record.vmId !== vmId) throw new NotFoundError(`runtime record of VM ${vmId} is not ours`);
    const entry: Entry = { record, qmp: null, exitReason: null, stopping: false, lastShutdown: null, child: null };
    this.entries.set(vmId, entry);
    if (!(await isVmProcess(record.pid, vmId))) {
      const stderr = await tail(paths.stderrLog, stderrTailBytes);
      entry.exitReason = `QEMU (pid ${record.pid}) exited while the node was not watching${stderr === '' ? '' : `: ${stderr}`}`;
      this.log.warn({ vmId, pid: record.pid, reason: entry.exitReason }, 'VM found exited');
      return { vmId, name: record.name, pid: record.pid, attached: false, reason: entry.exitReason };
    }
    try {
      entry.qmp = await this.connect(entry, this.options.qmpTimeoutMs ?? qmpTimeoutMsDefault);
      const { UUID } = await entry.qmp.execute<{ UUID: string }>('query-uuid');
      if (UUID.toLowerCase() !== vmId.toLowerCase()) throw new Error(`QMP socket belongs to VM ${UUID}`);
    } catch (err) {
      entry.qmp?.close();
      entry.qmp = null;
      const reason = `QEMU (pid ${record.pid}) runs but its QMP socket does not answer: ${errorMessage(err)}`;
      this.log.warn({ vmId, pid: record.pid, err }, 'VM not re-attached');
      return { vmId, name: record.name, pid: record.pid, attached: false, reason };
    }
    this.log.info({ vmId, name: record.name, pid: record.pid }, 'VM re-attached');
    return { vmId, name: record.name, pid: record.pid, attached: true };
  }

  async status(vmId: string): Promise<VmStatus> {
    const entry = this.entry(vmId);
    const pid = entry.record.pid;
    if (entry.exitReason !== null) return { vmId, state: 'exited', pid, reason: entry.exitReason };
    try {
      const qmp = await this.qmpOf(entry);
      const { status } = await qmp.execute<{ status: string; running: boolean }>('query-status', undefined, { timeoutMs: this.qmpTimeoutMs });
      return { vmId, state: mapRunState(status), pid, qemuStatus: status, ...(mapRunState(status) === 'error' ? { reason: `QEMU run state ${status}` } : {}) };
    } catch (err) {
      if (!(await isVmProcess(pid, vmId))) {
        await this.onProcessGone(entry, `QEMU (pid ${pid}) is gone`);
        return { vmId, state: 'exited', pid, reason: entry.exitReason ?? 'QEMU is gone' };
      }
      return { vmId, state: 'error', pid, reason: `QMP does not answer: ${errorMessage(err)}` };
    }
  }

  async pause(vmId: string): Promise<void> {
    await this.command(vmId, 'stop');
  }

  async resume(vmId: string): Promise<void> {
    await this.command(vmId, 'cont');
  }

  /** Hard reset of the guest (system_reset), like pressing the reset button. */
  async reboot(vmId: string): Promise<void> {
    await this.command(vmId, 'system_reset');
  }

  /**
   * ACPI power button, then `quit` after timeoutMs, then SIGKILL. Removes the runtime record and sockets
   * (the console and QEMU logs stay until delete).
   */
  async stop(vmId: string, options: { timeoutMs?: number } = {}): Promise<StopResult> {
    const entry = this.entry(vmId);
    const started = Date.now();
    entry.stopping = true;
    let how: StopResult['how'] = 'already-exited';
    try {
      if (entry.exitReason === null && (await isVmProcess(entry.record.pid, vmId))) {
        how = await this.shutdownProcess(entry, options.timeoutMs ?? stopTimeoutMsDefault);
      }
    } finally {
      await this.cleanupRuntime(entry, false);
      this.entries.delete(vmId);
    }
    const elapsedMs = Date.now() - started;
    this.log.info({ vmId, how, elapsedMs }, 'VM stopped');
    return { how, elapsedMs };
  }

  /** Kills QEMU at once and removes everything of the VM in the run dir, logs included. */
  async delete(vmId: string): Promise<void> {
    const entry = this.entries.get(vmId);
    if (entry !== undefined) {
      entry.stopping = true;
      await this.killAndWait(entry);
      await this.cleanupRuntime(entry, true);
      this.entries.delete(vmId);
    } else {
      await rm(vmPaths(this.options.runDir, vmId).dir, { recursive: true, force: true });
    }
    this.log.info({ vmId }, 'VM deleted');
  }

  /**
   * CPU time from /proc/<pid>/stat, memory from query-memory-size-summary and VmRSS, block counters from
   * query-blockstats. Network: QMP has no per-netdev counters; bridged NICs are read from their tap device
   * (found through /proc/<pid>/fdinfo of /dev/net/tun), user-mode NICs report null counters.
   */
  async stats(vmId: string): Promise<VmStats> {
    const entry = this.entry(vmId);
    if (entry.exitReason !== null) throw new VmNotRunningError(`VM ${vmId} is not running: ${entry.exitReason}`);
    const pid = entry.record.pid;
    const qmp = await this.qmpOf(entry);
    const timeoutMs = this.qmpTimeoutMs;
    const [memory, blockstats, proc, taps] = await Promise.all([
      qmp.execute<Record<string, unknown>>('query-memory-size-summary', undefined, { timeoutMs }),
      qmp.execute<Record<string, unknown>[]>('query-blockstats', undefined, { timeoutMs }),
      procFigures(pid),
      tapDevices(pid),
    ]);
    const block: BlockCounters[] = blockstats.map((b) => {
      const s = (b.stats ?? {}) as Record<string, unknown>;
      const device = typeof b.device === 'string' && b.device !== '' ? b.device : typeof b.qdev === 'string' ? b.qdev : '';
      return { device, rdBytes: num(s.rd_bytes), wrBytes: num(s.wr_bytes), rdOps: num(s.rd_operations), wrOps: num(s.wr_operations) };
    });
    const net: NetCounters[] = [];
    let tapIndex = 0;
    for (const [i, nic] of entry.record.config.nics.entries()) {
      const mode = nic.network?.mode ?? 'user';
      // Bridge NICs open their taps in order, so the n-th tun fd belongs to the n-th bridged NIC.
      const ifname = mode === 'bridge' ? taps[tapIndex++] : undefined;
      const counters = ifname === undefined ? null : await tapCounters(ifname);
      net.push({
        nic: `net${i}`,
        mode,
        ...(ifname === undefined ? {} : { ifname }),
        rxBytes: counters?.rxBytes ?? null,
        txBytes: counters?.txBytes ?? null,
        rxPackets: counters?.rxPackets ?? null,
        txPackets: counters?.txPackets ?? null,
      });
    }
    return {
      vmId,
      atMs: Date.now(),
      cpuTimeMs: proc.cpuTimeMs,
      memory: { configuredBytes: num(memory['base-memory']) + num(memory['plugged-memory']), rssBytes: proc.rssBytes },
      block,
      net,
    };
  }

  /** Disconnects from every VM without stopping any: what a node does when it shuts down. */
  close(): void {
    for (const entry of this.entries.values()) {
      entry.stopping = true; // nothing more to report for this driver instance
      detachChild(entry.child);
      entry.qmp?.close();
      entry.qmp = null;
    }
    this.entries.clear();
  }

  private get qmpTimeoutMs(): number {
    return this.options.qmpTimeoutMs ?? qmpTimeoutMsDefault;
  }

  private entry(vmId: string): Entry {
    const entry = this.entries.get(vmId);
    if (entry === undefined) throw new NotFoundError(`VM ${vmId} is not known to this node's hypervisor`);
    return entry;
  }

  private async command(vmId: string, command: string): Promise<void> {
    const entry = this.entry(vmId);
    if (entry.exitReason !== null) throw new VmNotRunningError(`VM ${vmId} is not running: ${entry.exitReason}`);
    const qmp = await this.qmpOf(entry);
    await qmp.execute(command, undefined, { timeoutMs: this.qmpTimeoutMs });
    this.log.info({ vmId, command }, 'VM command done');
  }

  /** The entry's QMP connection, reconnecting if it dropped while QEMU lives on. */
  private async qmpOf(entry: Entry): Promise<QmpClient> {
    if (entry.qmp !== null && !entry.qmp.closed) return entry.qmp;
    entry.qmp = await this.connect(entry, this.qmpTimeoutMs);
    return entry.qmp;
  }

  private async connect(entry: Entry, timeoutMs: number): Promise<QmpClient> {
    const vmId = entry.record.vmId;
    const client = await QmpClient.connect(entry.record.paths.qmpSocket, { timeoutMs, logger: this.log });
    client.onEvent((event) => {
      this.log.info({ vmId, event: event.event, data: event.data }, 'VM event');
      if (event.event === 'SHUTDOWN') entry.lastShutdown = { guest: event.data.guest === true, reason: typeof event.data.reason === 'string' ? event.data.reason : 'unknown' };
      for (const l of this.eventListeners) l(vmId, event);
    });
    client.onClose(() => {
      if (entry.qmp === client) entry.qmp = null;
      // QEMU closes QMP when it exits; confirm from /proc, since a QEMU restart of the monitor is possible.
      void (async () => {
        await sleep(processPollIntervalMs);
        if (!(await isVmProcess(entry.record.pid, vmId))) await this.onProcessGone(entry, `QEMU (pid ${entry.record.pid}) exited`);
      })();
    });
    return client;
  }

  private async onProcessGone(entry: Entry, how: string): Promise<void> {
    if (entry.exitReason !== null || entry.stopping) return;
    const shutdown = entry.lastShutdown;
    const stderr = await tail(entry.record.paths.stderrLog, stderrTailBytes);
    if (entry.exitReason !== null || entry.stopping) return;
    let reason = how;
    if (shutdown !== null) reason = `${how} after ${shutdown.guest ? 'the guest shut down' : 'a host request'} (${shutdown.reason})`;
    if (stderr !== '') reason += `: ${stderr.split('\n').slice(-3).join(' | ')}`;
    entry.exitReason = reason;
    entry.qmp?.close();
    entry.qmp = null;
    this.log.warn({ vmId: entry.record.vmId, pid: entry.record.pid, reason }, 'VM exited');
    for (const l of this.exitListeners) l(entry.record.vmId, reason);
  }

  private async shutdownProcess(entry: Entry, timeoutMs: number): Promise<StopResult['how']> {
    const { pid, vmId } = entry.record;
    let paused = false;
    try {
      const qmp = await this.qmpOf(entry);
      const { status } = await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: this.qmpTimeoutMs });
      paused = status !== 'running';
      // A paused guest cannot see the power button; go straight to quit.
      if (!paused) {
        await qmp.execute('system_powerdown', undefined, { timeoutMs: this.qmpTimeoutMs });
        if (await this.waitGone(pid, vmId, timeoutMs)) return 'acpi';
      }
    } catch (err) {
      this.log.warn({ vmId, err }, 'ACPI shutdown not possible');
    }
    try {
      const qmp = await this.qmpOf(entry);
      await qmp.execute('quit', undefined, { timeoutMs: quitTimeoutMs }).catch(() => undefined); // QEMU may drop QMP before replying
      if (await this.waitGone(pid, vmId, quitTimeoutMs)) return 'quit';
    } catch (err) {
      this.log.warn({ vmId, err }, 'QMP quit not possible');
    }
    await this.killAndWait(entry);
    return 'kill';
  }

  private async killAndWait(entry: Entry): Promise<void> {
    const { pid, vmId } = entry.record;
    entry.qmp?.close();
    entry.qmp = null;
    if (!(await isVmProcess(pid, vmId))) return;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      return; // gone between the check and the kill
    }
    if (!(await this.waitGone(pid, vmId, killWaitTimeoutMs))) throw new NovaError('qemu_kill_failed', `QEMU pid ${pid} survived SIGKILL for ${killWaitTimeoutMs} ms`);
  }

  private async waitGone(pid: number, vmId: string, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!(await isVmProcess(pid, vmId))) return true;
      await sleep(processPollIntervalMs);
    }
    return !(await isVmProcess(pid, vmId));
  }

  private async writeRecord(record: RuntimeRecord): Promise<void> {
    const tmp = `${record.paths.record}.tmp`;
    await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
    await rename(tmp, record.paths.record);
  }

  private async cleanupRuntime(entry: Entry, everything: boolean): Promise<void> {
    entry.qmp?.close();
    entry.qmp = null;
    detachChild(entry.child);
    const p = entry.record.paths;
    if (everything) {
      await rm(p.dir, { recursive: true, force: true });
      return;
    }
    await Promise.all([p.record, `${p.record}.tmp`, p.qmpSocket, p.consoleSocket, p.pidFile].map((f) => rm(f, { force: true })));
  }
}

/** Stops listening to a QEMU we spawned; a later 'error' must not become an uncaught exception. */
function detachChild(child: ChildProcess | null): void {
  if (child === null) return;
  child.removeAllListeners();
  child.on('error', () => undefined);
}

export function mapRunState(status: string): VmState {
  switch (status) {
    case 'running':
      return 'running';
    case 'paused':
    case 'suspended':
    case 'debug':
      return 'paused';
    case 'shutdown':
      return 'shutdown';
    case 'inmigrate':
    case 'postmigrate':
    case 'finish-migrate':
    case 'save-vm':
    case 'restore-vm':
    case 'colo':
      return 'migrating';
    case 'prelaunch':
      return 'starting';
    default:
      return 'error'; // internal-error, io-error, guest-panicked, watchdog, and anything newer
  }
}

async function procFigures(pid: number): Promise<{ cpuTimeMs: number; rssBytes: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after "(comm)": index 0 is field 3 (state), so utime (14) and stime (15) are 11 and 12.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? 0);
  return { cpuTimeMs: (ticks * 1000) / clockTicksPerSecond, rssBytes: rssKiB * 1024 };
}

/** Names of the tap devices QEMU holds open, in fd order. */
async function tapDevices(pid: number): Promise<string[]> {
  let fds: string[];
  try {
    fds = await readdir(`/proc/${pid}/fd`);
  } catch {
    return [];
  }
  const taps: { fd: number; name: string }[] = [];
  for (const fd of fds) {
    try {
      if ((await readlink(`/proc/${pid}/fd/${fd}`)) !== '/dev/net/tun') continue;
      const info = await readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      const name = /^iff:\s*(\S+)/m.exec(info)?.[1];
      if (name !== undefined) taps.push({ fd: Number(fd), name });
    } catch {
      // fd closed while we looked
    }
  }
  return taps.sort((a, b) => a.fd - b.fd).map((t) => t.name);
}

async function tapCounters(ifname: string): Promise<{ rxBytes: number; txBytes: number; rxPackets: number; txPackets: number } | null> {
  const read = async (name: string): Promise<number> => Number((await readFile(`/sys/class/net/${ifname}/statistics/${name}`, 'utf8')).trim());
  try {
    // A tap's rx is what the guest sent; report from the guest's point of view.
    const [rxBytes, txBytes, rxPackets, txPackets] = await Promise.all([read('tx_bytes'), read('rx_bytes'), read('tx_packets'), read('rx_packets')]);
    return { rxBytes, txBytes, rxPackets, txPackets };
  } catch {
    return null;
  }
}
