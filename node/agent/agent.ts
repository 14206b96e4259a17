// The VM agent: every node runs one. It reconciles the VMs this node OWNS (vm.owner === this node) toward their
// desired power state with the QEMU driver, and writes what it observes back through Raft. It never runs a VM it
// does not own: a local QEMU of a VM owned elsewhere (or by nobody) is stopped, and the files of a VM that left the
// cluster state are deleted. A QEMU that dies on its own is reported as `error` with the reason and is NOT started
// again until the desired state is set again (any vm.setDesired bumps the VM's version); a restart policy is future
// work. After a node restart the agent re-attaches to the QEMUs that kept running instead of starting new ones.
// While a VM migrates (node/migration/), its QEMU belongs to the migration: the agent neither resumes, stops nor
// restarts it, and leaves alone the incoming QEMU of a VM this node is about to own.
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, rm } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { isImageRef, type ChangeEvent, type ClusterCommand, type ObservedState, type Vm } from '../../consensus/cluster/index.js';
import { ConflictError, NovaError, errorMessage, isCodedError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ImageSource } from '../hypervisor/image-types.js';
import { VmNotRunningError, type QemuDriver, type VmState, type VmStats } from '../hypervisor/qemu.js';
import { configFromSpec, vmPaths, type QemuVmConfig } from '../hypervisor/qemu-args.js';

/** Periodic reconcile, besides the one each state change and each QEMU exit triggers. */
export const agentReconcileIntervalMs = 2_000;
/** Attempts to write one observed state through Raft before giving up until the next reconcile. */
export const reportAttemptsMax = 5;
export const reportBackoffMsInitial = 200;
export const reportBackoffMsMax = 2_000;
/** ACPI shutdown deadline when the desired state becomes stopped; then QEMU quits, then it is killed. */
export const agentStopTimeoutMs = 15_000;
/** How long node shutdown waits for a reconcile in flight before it disconnects from QEMU anyway. */
export const agentShutdownWaitMs = 5_000;
/** A local VM absent from the cluster state is deleted only after this many consecutive reconciles saw it absent. */
export const orphanPassesMin = 2;
/** The observed reason is bounded by the command schema (1024 characters). */
export const observedReasonCharsMax = 1_000;
/** Console tail bounds: lines per request and bytes read from the end of the log. */
export const consoleTailLinesMax = 1_000;
export const consoleTailBytesMax = 256 * 1024;

export type AgentDriver = Pick<QemuDriver, 'start' | 'attachAll' | 'status' | 'stop' | 'pause' | 'resume' | 'reboot' | 'delete' | 'stats' | 'onVmExit' | 'list' | 'close'>;

export interface VmAgentOptions {
  nodeId: string;
  state: {
    listVms(): readonly Vm[];
    getVm(id: string): Vm | null;
    onChange(listener: (event: ChangeEvent) => void): () => void;
  };
  propose(cmd: ClusterCommand): Promise<unknown>;
  /** True once the local state is trustworthy (cluster initialised, a leader known, the committed log applied). */
  ready(): boolean;
  /** Builds the driver once the accelerator is known (the KVM probe can take seconds). */
  createDriver(): Promise<AgentDriver>;
  images: ImageSource;
  /** <dataDir>/vms: one folder of disks per VM. */
  vmsDir: string;
  /** The driver's run dir: one folder per VM with sockets, runtime record and logs. */
  runDir: string;
  logger: Logger;
  /** Set when this node cannot run VMs (QEMU missing or too old): owned VMs that should run are reported as error. */
  unusableReason?: string | null;
  reconcileIntervalMs?: number;
  reportBackoffMs?: number;
  /**
   * Live migrations in progress on this node (node/migration/service.ts): while a VM migrates out ('source') or in
   * ('target') its QEMU belongs to the migration, and the agent neither resumes, stops nor restarts it.
   */
  migrations?: { role(vmId: string): 'source' | 'target' | null };
}

export interface AgentCounts {
  running: number;
  total: number;
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function uuidDirs(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((n) => uuidPattern.test(n));
  } catch {
    return [];
  }
}

/** The last `lines` lines of a file, reading at most `maxBytes` from its end. */
export async function tailLines(file: string, lines: number, maxBytes = consoleTailBytesMax): Promise<string[]> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch {
    return [];
  }
  try {
    const { size } = await fh.stat();
    const length = Math.min(size, maxBytes);
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, size - length);
    const all = buf.toString('utf8').replace(/\r/g, '').split('\n');
    if (all.at(-1) === '') all.pop();
    // The first line may be cut by the byte bound; drop it unless the whole file was read.
    if (length < size) all.shift();
    return all.slice(-lines);
  } finally {
    await fh.close();
  }
}

/**
 * A VM's QEMU configuration with node-local paths: disks (qcow2 overlays over their base images, or blank, created in
 * <vmsDir>/<id> when missing) and boot files (fetched from peers when this node lacks them). The agent uses it to
 * start owned VMs; the migration target to start the incoming QEMU of the same VM.
 */
export async function prepareVmConfig(vm: Vm, images: ImageSource, vmsDir: string): Promise<QemuVmConfig> {
  const dir = join(vmsDir, vm.id);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const diskPaths: string[] = [];
  for (const [i, d] of vm.spec.disks.entries()) {
    const path = join(dir, `disk${i}.qcow2`);
    if (!existsSync(path)) {
      if (d.imageId !== undefined) await images.ensure(d.imageId);
      try {
        await images.createDisk(path, d.imageId ?? null, d.sizeGiB);
      } catch (err) {
        await rm(path, { force: true });
        throw err;
      }
    }
    diskPaths.push(path);
  }
  const resolveBoot = async (ref: string | undefined, what: string): Promise<string | undefined> => {
    if (ref === undefined) return undefined;
    if (isImageRef(ref)) return (await images.ensure(ref)).path;
    if (!isAbsolute(ref)) throw new ConflictError(`${what} ${ref} is neither an image id nor an absolute path`);
    if (!existsSync(ref)) throw new ConflictError(`${what} ${ref} does not exist on this node`);
    return ref;
  };
  const kernel = await resolveBoot(vm.spec.kernel, 'kernel');
  const initrd = await resolveBoot(vm.spec.initrd, 'initrd');
  return configFromSpec(vm.id, vm.name, vm.spec, { diskPaths, ...(kernel === undefined ? {} : { kernel }), ...(initrd === undefined ? {} : { initrd }) });
}

export class NotOwnerError extends NovaError {
  constructor(message: string) {
    super('conflict', message);
  }
}

export class VmAgent {
  private readonly log: Logger;
  private driver: AgentDriver | null = null;
  private timer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private unsubscribeExit: (() => void) | null = null;
  private inFlight: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  /** VM id → the VM version at which its QEMU failed: not started again until the version changes. */
  private readonly failedAt = new Map<string, { version: number; reason: string }>();
  /** VMs whose QEMU this agent found running at start (re-attached), not started itself. */
  private readonly reattached = new Set<string>();
  /** VMs this agent has handled at least once (the first time, a failure recorded in the state is honoured). */
  private readonly seen = new Set<string>();
  private readonly absentPasses = new Map<string, number>();
  private readonly localState = new Map<string, VmState>();

  constructor(private readonly options: VmAgentOptions) {
    this.log = options.logger.child({ component: 'agent' });
  }

  get nodeId(): string {
    return this.options.nodeId;
  }

  async start(): Promise<void> {
    const driver = await this.options.createDriver();
    this.driver = driver;
    this.unsubscribeExit = driver.onVmExit((vmId, reason) => {
      this.log.warn({ vmId, reason }, 'QEMU exited');
      this.schedule();
    });
    const started = Date.now();
    const attached = await driver.attachAll();
    for (const a of attached) if (a.attached) this.reattached.add(a.vmId);
    if (attached.length > 0) this.log.info({ attached: attached.map((a) => ({ vmId: a.vmId, pid: a.pid, attached: a.attached })), elapsedMs: Date.now() - started }, 're-attached to local VMs');
    this.unsubscribe = this.options.state.onChange((e) => {
      if (e.type.startsWith('vm.') || e.type === 'snapshot.restore' || e.type.startsWith('member.') || e.type.startsWith('migration.')) this.schedule();
    });
    this.timer = setInterval(() => this.schedule(), this.options.reconcileIntervalMs ?? agentReconcileIntervalMs);
    this.timer.unref();
    this.schedule();
  }

  /** Stops reconciling and disconnects from every QEMU without stopping any: VMs outlive the node process. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.unsubscribe?.();
    this.unsubscribeExit?.();
    if (this.inFlight !== null) await Promise.race([this.inFlight.catch(() => undefined), sleep(agentShutdownWaitMs)]);
    this.driver?.close();
  }

  /** Figures for telemetry: running VMs on this node and VMs it owns. */
  counts(): AgentCounts {
    let running = 0;
    for (const s of this.localState.values()) if (s === 'running') running += 1;
    let total = 0;
    for (const v of this.options.state.listVms()) if (v.owner === this.options.nodeId) total += 1;
    return { running, total };
  }

  /** Runs a reconcile soon; concurrent triggers collapse into one more pass. */
  schedule(): void {
    if (this.stopped || this.driver === null) return;
    if (this.inFlight !== null) {
      this.again = true;
      return;
    }
    this.inFlight = (async () => {
      do {
        this.again = false;
        try {
          await this.reconcileOnce();
        } catch (err) {
          this.log.error({ err }, 'reconcile failed');
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.inFlight = null;
    });
  }

  /** Resolves once no reconcile is running or queued (tests). */
  async idle(): Promise<void> {
    while (this.inFlight !== null) await this.inFlight;
  }

  /** One pass over every VM this node has locally or owns. */
  async reconcileOnce(): Promise<void> {
    const driver = this.driver;
    if (driver === null || !this.options.ready()) return;
    const self = this.options.nodeId;
    const vms = this.options.state.listVms();
    const byId = new Map(vms.map((v) => [v.id, v]));
    const running = new Set(driver.list());
    const local = new Set([...running, ...(await uuidDirs(this.options.vmsDir)), ...(await uuidDirs(this.options.runDir))]);
    for (const id of local) {
      const vm = byId.get(id);
      if (vm === undefined) {
        const passes = (this.absentPasses.get(id) ?? 0) + 1;
        this.absentPasses.set(id, passes);
        if (passes >= orphanPassesMin) await this.guard(id, () => this.destroy(id));
      } else {
        this.absentPasses.delete(id);
        // An incoming QEMU of a migration to this node runs before this node owns the VM: leave it to the migration.
        if (vm.owner !== self && running.has(id) && this.migrationRole(id) === null) await this.guard(id, () => this.stopForeign(vm));
      }
    }
    for (const vm of vms) {
      if (vm.owner !== self || this.stopped) continue;
      const role = this.migrationRole(vm.id);
      if (role === 'source') {
        // The guest pauses at switch-over and QEMU reports inmigrate/postmigrate states: resuming it here could make
        // two running copies. Report the migration instead; the pass after it ends reconciles as usual.
        await this.guard(vm.id, () => this.report(vm.id, 'migrating', 'live migration to another node in progress'));
        continue;
      }
      // Completed but not yet resumed by the migration (it runs `cont` itself and measures the downtime).
      if (role === 'target') continue;
      await this.guard(vm.id, () => this.reconcileVm(vm));
    }
  }

  private migrationRole(vmId: string): 'source' | 'target' | null {
    return this.options.migrations?.role(vmId) ?? null;
  }

  private async guard(vmId: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      this.log.error({ vmId, err }, 'reconciling a VM failed');
    }
  }

  /** Deletes everything of a VM the cluster no longer has: its QEMU (killed), runtime dir and disks. */
  private async destroy(vmId: string): Promise<void> {
    await this.driver?.delete(vmId);
    await rm(join(this.options.vmsDir, vmId), { recursive: true, force: true });
    for (const m of [this.absentPasses, this.localState, this.failedAt]) m.delete(vmId);
    this.reattached.delete(vmId);
    this.seen.delete(vmId);
    this.log.info({ vmId }, 'deleted a VM that left the cluster state');
  }

  /** A VM another node (or nobody) owns must not run here: stop it, keep its disks (a migration may need them). */
  private async stopForeign(vm: Vm): Promise<void> {
    this.log.warn({ vmId: vm.id, owner: vm.owner }, 'a VM owned elsewhere runs here: stopping it');
    await this.driver?.stop(vm.id, { timeoutMs: agentStopTimeoutMs });
    this.localState.delete(vm.id);
    this.reattached.delete(vm.id);
  }

  private async reconcileVm(vm: Vm): Promise<void> {
    const driver = this.driver;
    if (driver === null) return;
    const id = vm.id;
    if (!this.seen.has(id)) {
      this.seen.add(id);
      // A failure reported before a node restart still stands unless the desired state was set again since.
      if (vm.observed?.state === 'error' && vm.observed.at >= vm.updatedAt && !driver.list().includes(id)) {
        this.failedAt.set(id, { version: vm.version, reason: vm.observed.reason });
      }
    }
    const failed = this.failedAt.get(id);
    if (failed !== undefined && failed.version !== vm.version) this.failedAt.delete(id);
    const st = driver.list().includes(id) ? await driver.status(id) : null;
    this.localState.set(id, st?.state ?? 'exited');

    if (vm.desired === 'stopped') {
      if (st !== null) {
        await driver.stop(id, { timeoutMs: agentStopTimeoutMs });
        this.reattached.delete(id);
      }
      this.failedAt.delete(id);
      this.localState.set(id, 'exited');
      await this.report(id, 'stopped', '');
      return;
    }

    if (st === null || st.state === 'exited' || st.state === 'shutdown') {
      if (st !== null) {
        // QEMU died (or the guest powered off) while it should run: report it and do not restart it blindly.
        const reason = `QEMU exited unexpectedly: ${st.reason ?? 'no reason known'}`;
        this.failedAt.set(id, { version: vm.version, reason });
        this.reattached.delete(id);
        await driver.stop(id).catch((err: unknown) => this.log.warn({ vmId: id, err }, 'cleaning up after a dead QEMU failed'));
        this.localState.set(id, 'exited');
        await this.report(id, 'error', reason);
        return;
      }
      const stillFailed = this.failedAt.get(id);
      if (stillFailed !== undefined) {
        await this.report(id, 'error', stillFailed.reason);
        return;
      }
      if (this.options.unusableReason != null) {
        await this.report(id, 'error', `this node cannot run VMs: ${this.options.unusableReason}`);
        return;
      }
      await this.startVm(vm);
      return;
    }

    const pidNote = this.reattached.has(id) ? `QEMU pid ${st.pid}, re-attached after a node restart` : `QEMU pid ${st.pid}`;
    if (st.state === 'running') {
      if (vm.desired === 'paused') {
        await driver.pause(id);
        this.localState.set(id, 'paused');
        await this.report(id, 'paused', pidNote);
      } else {
        await this.report(id, 'running', pidNote);
      }
    } else if (st.state === 'paused') {
      if (vm.desired === 'running') {
        await driver.resume(id);
        this.localState.set(id, 'running');
        await this.report(id, 'running', pidNote);
      } else {
        await this.report(id, 'paused', pidNote);
      }
    } else if (st.state === 'error') {
      await this.report(id, 'error', st.reason ?? `QEMU run state ${st.qemuStatus ?? 'unknown'}`);
    }
    // 'starting' and 'migrating' are transient: the next pass looks again.
  }

  private async startVm(vm: Vm): Promise<void> {
    const driver = this.driver;
    if (driver === null) return;
    const id = vm.id;
    await this.report(id, 'creating', 'preparing disks and boot files');
    let config: QemuVmConfig;
    try {
      config = await this.prepare(vm);
    } catch (err) {
      const reason = `cannot prepare the VM: ${errorMessage(err)}`;
      this.failedAt.set(id, { version: vm.version, reason });
      await this.report(id, 'error', reason);
      return;
    }
    // Images may take long to fetch: the VM may have moved, been stopped or deleted meanwhile.
    const now = this.options.state.getVm(id);
    if (now === null || now.owner !== this.options.nodeId || now.desired === 'stopped' || this.stopped) return;
    let pid: number;
    try {
      pid = (await driver.start(config)).pid;
    } catch (err) {
      const reason = `QEMU did not start: ${errorMessage(err)}`;
      this.failedAt.set(id, { version: vm.version, reason });
      await this.report(id, 'error', reason);
      return;
    }
    this.reattached.delete(id);
    if (now.desired === 'paused') {
      await driver.pause(id);
      this.localState.set(id, 'paused');
      await this.report(id, 'paused', `QEMU pid ${pid}`);
    } else {
      this.localState.set(id, 'running');
      await this.report(id, 'running', `QEMU pid ${pid}`);
    }
    // Ownership may have moved while QEMU started: never keep running a VM this node does not own.
    const after = this.options.state.getVm(id);
    if (after === null || after.owner !== this.options.nodeId) this.schedule();
  }

  /** Disks (qcow2 overlays over their base images, or blank) and boot files as local paths. */
  private prepare(vm: Vm): Promise<QemuVmConfig> {
    return prepareVmConfig(vm, this.options.images, this.options.vmsDir);
  }

  /** Writes the observed state through Raft when it differs from the replicated one; bounded retries with backoff. */
  private async report(vmId: string, state: ObservedState, reasonIn: string): Promise<void> {
    const reason = reasonIn.length > observedReasonCharsMax ? `${reasonIn.slice(0, observedReasonCharsMax - 1)}…` : reasonIn;
    let backoff = this.options.reportBackoffMs ?? reportBackoffMsInitial;
    for (let attempt = 1; attempt <= reportAttemptsMax; attempt++) {
      const vm = this.options.state.getVm(vmId);
      if (vm === null || vm.owner !== this.options.nodeId) return;
      if (vm.observed?.state === state && vm.observed.reason === reason) return;
      try {
        await this.options.propose({ type: 'vm.setObserved', at: Date.now(), actor: { kind: 'node', id: this.options.nodeId }, from: null, id: vmId, state, reason });
        this.log.info({ vmId, state, reason }, 'observed state reported');
        return;
      } catch (err) {
        // Not ours any more, or gone: nothing to report.
        if (isCodedError(err) && (err.code === 'forbidden' || err.code === 'not_found')) return;
        this.log.warn({ vmId, state, attempt, err: errorMessage(err) }, 'reporting the observed state failed');
        if (attempt === reportAttemptsMax || this.stopped) return;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, reportBackoffMsMax);
      }
    }
  }

  private ownedVm(vmId: string): Vm {
    const vm = this.options.state.getVm(vmId);
    if (vm === null) throw new NovaError('not_found', `no VM ${vmId}`);
    if (vm.owner !== this.options.nodeId) throw new NotOwnerError(`VM ${vm.name} is not owned by this node`);
    return vm;
  }

  /** A hard reset of the guest (QMP system_reset), like the reset button; the VM keeps its QEMU. */
  async restart(vmId: string): Promise<void> {
    const vm = this.ownedVm(vmId);
    if (this.driver === null || !this.driver.list().includes(vm.id)) throw new VmNotRunningError(`VM ${vm.name} is not running`);
    await this.driver.reboot(vm.id);
  }

  /** The last `lines` lines of the VM's serial console log (kept after a stop; gone with the VM). */
  async console(vmId: string, lines: number): Promise<string[]> {
    const vm = this.ownedVm(vmId);
    return tailLines(vmPaths(this.options.runDir, vm.id).consoleLog, Math.min(Math.max(1, lines), consoleTailLinesMax));
  }

  async stats(vmId: string): Promise<VmStats> {
    const vm = this.ownedVm(vmId);
    if (this.driver === null || !this.driver.list().includes(vm.id)) throw new VmNotRunningError(`VM ${vm.name} is not running`);
    return this.driver.stats(vm.id);
  }
}
