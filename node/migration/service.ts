// The node side of live migration: one MigrationService per node watches the applied cluster state for migration
// records naming this node as source or target and carries them out with the engine (migration/), the mesh and the
// QEMU driver. Raft is the only place ownership changes: the source proposes every phase, the target goes live only
// once its own applied state shows the migration completed with itself as owner, and the source resumes its guest
// only while the record cannot complete any more. Decisions are in decide.ts; this file does the I/O.
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isMigrationActive, type ChangeEvent, type ClusterCommand, type Member, type Migration, type MigrationPhase, type MigrationProgress, type Vm } from '../../consensus/cluster/index.js';
import { NovaError, errorMessage, isCodedError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RateLimiter } from '../../bandwidth/index.js';
import type { ImageSource } from '../hypervisor/image-types.js';
import { prepareVmConfig } from '../agent/agent.js';
import { decideSource, decideTarget, downtimeMs, progressDue, type SourceAction, type TargetAction } from './decide.js';
import { diskNodeName, type EngineProgress, type EngineTargetSession, type MigrationDriver, type MigrationEngine } from './engine.js';
import {
  dataHeaderTimeoutMs,
  encodeDataHeader,
  goLiveTimeoutMs,
  loadedTimeoutMs,
  migrateDataInboundStreamsMax,
  migrateDataProtocol,
  migrateInboundStreamsMax,
  migrateProtocol,
  prepareTimeoutMs,
  readDataHeader,
  validateGoLiveAnswer,
  validateLoadedAnswer,
  validateMigrateRequest,
  validatePrepareAnswer,
  type ByteChannel,
  type ChannelKind,
  type GoLiveAnswer,
  type LoadedAnswer,
  type MigrateRequest,
  type PrepareAnswer,
} from './protocol.js';

/** Attempts of one phase proposal that failed without a definite answer (no quorum, outcome unknown). */
export const proposeAttemptsMax = 5;
export const proposeBackoffMsInitial = 200;
export const proposeBackoffMsMax = 2_000;
/** The commit (ownership move) is retried until the record is final; after this long the source also proposes `failed`. */
export const commitUndecidedMs = 60_000;
/** The target waits this long for its applied state to catch up with a go-live request. */
export const goLiveStateWaitMs = 10_000;
export const stateWaitPollMs = 50;
/** Graceful end of the source's paused QEMU after the move: it is paused, so QEMU quits at once (then SIGKILL). */
export const sourceQuitTimeoutMs = 5_000;
/** Periodic look at the records besides each state change (a waiting migration, a state that became ready). */
export const migrationScanIntervalMs = 1_000;

export class MigrationRefusedError extends NovaError {
  constructor(message: string) {
    super('migration_refused', message);
  }
}

export interface MigrationStateView {
  getMigration(id: string): Migration | null;
  listMigrations(): readonly Migration[];
  getVm(id: string): Vm | null;
  getMember(id: string): Member | null;
  onChange(listener: (event: ChangeEvent) => void): () => void;
}

/** The slice of the mesh's protocol layer used here (a fake in unit tests). */
export interface MigrationMeshHost {
  handleRequest<Req, Res>(
    protocol: string,
    handler: (request: Req, ctx: { peer: string }) => Promise<Res>,
    options: { validate: (v: unknown) => Req; maxInboundStreams?: number; timeoutMs?: number },
  ): Promise<void>;
  request<Res>(peer: string, protocol: string, body: unknown, options: { validate: (v: unknown) => Res; timeoutMs?: number; signal?: AbortSignal }): Promise<Res>;
  openBulk(peer: string, protocol: string, options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<ByteChannel>;
  handleBulk(protocol: string, handler: (bulk: ByteChannel, ctx: { peer: string }) => Promise<void>, options?: { maxInboundStreams?: number }): Promise<void>;
  unhandle(protocol: string): Promise<void>;
}

export interface MigrationServiceOptions {
  nodeId: string;
  state: MigrationStateView;
  propose(cmd: ClusterCommand): Promise<unknown>;
  ready(): boolean;
  /** The agent's driver, once it exists (null before the agent started). */
  driver(): MigrationDriver | null;
  engine: MigrationEngine;
  images: ImageSource;
  mesh: MigrationMeshHost;
  /** Link figures for the engine's controller (mesh link model). */
  link(peer: string): { rttMs: number | null; throughputBytesPerSec: number | null };
  /** True while this node has a mesh connection to the peer. */
  connected(peer: string): boolean;
  vmsDir: string;
  /** Per-migration work dirs (unix sockets of the tunnel) go under here. */
  workDir: string;
  /** Node-wide limiters shared by all migrations of this node. */
  limiters: RateLimiter[];
  /** Migrations driven as source at once; further ones stay `requested` until a slot frees (the scan retries). */
  maxConcurrent: number;
  logger: Logger;
  nowMs?: () => number;
  /** Called when a run or a target session ends, so the agent looks at the VM again at once (not at its next tick). */
  onIdle?: () => void;
  /** Default goLiveStateWaitMs (tests shorten it). */
  goLiveStateWaitMs?: number;
}

interface SourceRun {
  migrationId: string;
  vmId: string;
  abort: AbortController;
  done: Promise<void>;
}

interface TargetEntry {
  migrationId: string;
  vmId: string;
  session: EngineTargetSession | null;
  status: 'preparing' | 'ready' | 'live';
  preparing: Promise<PrepareAnswer> | null;
  live: Promise<{ resumedAtMs: number; resumedNow: boolean; localResumedAtMs: number }> | null;
  channels: Set<ByteChannel>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class MigrationService {
  private readonly log: Logger;
  private readonly nowMs: () => number;
  private readonly runs = new Map<string, SourceRun>();
  private readonly targets = new Map<string, TargetEntry>();
  /** Migrations active when this process started: their local half, if any, died with the old process. */
  private readonly inherited = new Set<string>();
  /** Records this process finished with (so a state change does not redo a cleanup). */
  private readonly handled = new Set<string>();
  /** Actions in progress per migration: one at a time. */
  private readonly busy = new Set<string>();
  /** Prepare and cleanup of one VM on the target, in order (see withVmLock). */
  private readonly vmLocks = new Map<string, Promise<void>>();
  private unsubscribe: (() => void) | null = null;
  private stopped = false;
  private started = false;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: MigrationServiceOptions) {
    this.log = options.logger.child({ component: 'migration' });
    this.nowMs = options.nowMs ?? Date.now;
  }

  async start(): Promise<void> {
    const mesh = this.options.mesh;
    await mesh.handleRequest<MigrateRequest, unknown>(migrateProtocol, (req, ctx) => this.onRequest(req, ctx.peer), {
      validate: validateMigrateRequest,
      maxInboundStreams: migrateInboundStreamsMax,
      timeoutMs: prepareTimeoutMs,
    });
    await mesh.handleBulk(migrateDataProtocol, (bulk, ctx) => this.onData(bulk, ctx.peer), { maxInboundStreams: migrateDataInboundStreamsMax });
    this.unsubscribe = this.options.state.onChange((e) => {
      if (e.type.startsWith('migration.') || e.type === 'snapshot.restore') this.scan();
    });
    // State may not be ready yet (log replay): scan until it is, then on changes and now and then.
    this.timer = setInterval(() => this.scan(), migrationScanIntervalMs);
    this.timer.unref();
    this.scan();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.unsubscribe?.();
    await this.options.mesh.unhandle(migrateProtocol).catch(() => undefined);
    await this.options.mesh.unhandle(migrateDataProtocol).catch(() => undefined);
    // Runs are not aborted on shutdown: an abort would resume the guest while the record may still complete. The
    // next process finds the record and decides (decide.ts) from the state alone.
    for (const t of this.targets.values()) for (const c of t.channels) c.abort(new Error('node stopping'));
  }

  /** For the agent: whether this node is migrating the VM out (source) or in (target) right now, so it leaves QEMU alone. */
  role(vmId: string): 'source' | 'target' | null {
    for (const r of this.runs.values()) if (r.vmId === vmId) return 'source';
    for (const t of this.targets.values()) if (t.vmId === vmId && t.status !== 'live') return 'target';
    for (const m of this.options.state.listMigrations()) {
      if (m.vm !== vmId || !isMigrationActive(m)) continue;
      if (m.source === this.options.nodeId) return 'source';
      if (m.target === this.options.nodeId) return 'target';
    }
    return null;
  }

  /** Resolves when no run is in progress (tests). */
  async idle(): Promise<void> {
    while (this.runs.size > 0) await Promise.all([...this.runs.values()].map((r) => r.done));
  }

  // ---- watching the state ----

  private scan(): void {
    if (this.stopped || !this.options.ready() || this.options.driver() === null) return;
    const self = this.options.nodeId;
    const all = this.options.state.listMigrations();
    if (!this.started) {
      this.started = true;
      for (const m of all) if (isMigrationActive(m) && (m.source === self || m.target === self)) this.inherited.add(m.id);
      // Terminal records from before the restart: only the newest completed one per VM says where it lives now. A
      // failed or cancelled one as target stays unhandled: an incoming QEMU and overlays may have outlived the old process.
      for (const m of all) if (!isMigrationActive(m) && m.phase !== 'completed' && m.target !== self) this.handled.add(m.id);
      const newest = new Map<string, Migration>();
      for (const m of all) if (m.phase === 'completed' && (newest.get(m.vm)?.finishedAt ?? -1) < (m.finishedAt ?? 0)) newest.set(m.vm, m);
      for (const m of all) if (m.phase === 'completed' && newest.get(m.vm) !== m) this.handled.add(m.id);
      if (this.inherited.size > 0) this.log.warn({ migrations: [...this.inherited] }, 'active migrations found at start: resolving them from the state');
    }
    for (const m of all) {
      if (m.source === self) this.act(m.id, () => this.sourceStep(m.id));
      else if (m.target === self) this.act(m.id, () => this.targetStep(m.id));
    }
  }

  private act(id: string, fn: () => Promise<void>): void {
    if (this.busy.has(id)) return;
    this.busy.add(id);
    void fn()
      .catch((err: unknown) => this.log.error({ migrationId: id, err }, 'migration step failed'))
      .finally(() => this.busy.delete(id));
  }

  private async sourceStep(id: string): Promise<void> {
    const m = this.options.state.getMigration(id);
    if (m === null) return;
    const vm = this.options.state.getVm(m.vm);
    const action: SourceAction = decideSource(m, {
      running: this.runs.has(id),
      inherited: this.inherited.has(id),
      handled: this.handled.has(id),
      ownerIsSelf: vm?.owner === this.options.nodeId,
    });
    switch (action.kind) {
      case 'none':
        return;
      case 'start':
        if (this.runs.size >= this.options.maxConcurrent) {
          this.log.debug({ migrationId: id, running: this.runs.size }, 'migration waits for a free slot');
          return;
        }
        this.startRun(m);
        return;
      case 'abort': {
        const run = this.runs.get(id);
        this.log.info({ migrationId: id, phase: m.phase, reason: action.reason }, 'migration ended under its run: aborting it');
        run?.abort.abort(new MigrationRefusedError(`migration ${m.phase}: ${action.reason}`));
        return;
      }
      case 'fail': {
        this.handled.add(id);
        await this.advance(id, 'failed', { reason: action.reason });
        // Once the record is final (failed here or by the target), the QEMU left mid-migration is cleaned.
        const now = this.options.state.getMigration(id);
        if (now !== null && (now.phase === 'failed' || now.phase === 'cancelled')) await this.recoverSource(now);
        return;
      }
      case 'recover':
        this.handled.add(id);
        await this.recoverSource(m);
        return;
      case 'cleanupMovedAway':
        this.handled.add(id);
        await this.removeLocalCopy(m.vm, 'it moved to the target');
        return;
    }
  }

  private async targetStep(id: string): Promise<void> {
    const m = this.options.state.getMigration(id);
    if (m === null) return;
    const vm = this.options.state.getVm(m.vm);
    const entry = this.targets.get(id);
    const driver = this.options.driver();
    // A QEMU of the VM that belongs to a newer migration to this node is not this record's leftover.
    const newer =
      [...this.targets.values()].some((t) => t.vmId === m.vm && t.migrationId !== id) ||
      this.options.state.listMigrations().some((o) => o.id !== id && o.vm === m.vm && o.target === this.options.nodeId && isMigrationActive(o));
    const action: TargetAction = decideTarget(m, {
      session: entry === undefined ? 'none' : entry.status,
      inherited: this.inherited.has(id),
      handled: this.handled.has(id),
      ownerIsSelf: vm?.owner === this.options.nodeId,
      // The QEMU (re-attached by the agent after a restart) or the overlay folder of an incoming copy.
      leftovers: !newer && (driver?.list().includes(m.vm) === true || (!isMigrationActive(m) && vm?.owner !== this.options.nodeId && existsSync(join(this.options.vmsDir, m.vm)))),
    });
    switch (action.kind) {
      case 'none':
        if (m.phase === 'completed' && entry?.status === 'live') this.targets.delete(id);
        return;
      case 'goLive':
        await this.goLive(m);
        return;
      case 'cleanup':
        this.handled.add(id);
        await this.cleanupTarget(m, action.fail === null ? (m.reason ?? m.phase) : action.fail);
        if (action.fail !== null) await this.advance(id, 'failed', { reason: action.fail });
        return;
    }
  }

  // ---- source ----

  private startRun(m: Migration): void {
    const abort = new AbortController();
    const run: SourceRun = { migrationId: m.id, vmId: m.vm, abort, done: Promise.resolve() };
    this.runs.set(m.id, run);
    run.done = this.runSource(m, abort.signal)
      .catch((err: unknown) => this.log.error({ migrationId: m.id, err }, 'migration run failed unexpectedly'))
      .finally(() => {
        this.runs.delete(m.id);
        this.handled.add(m.id);
        // Let the agent look at the VM again now that nothing drives it.
        this.scan();
        this.options.onIdle?.();
      });
  }

  private async runSource(m: Migration, signal: AbortSignal): Promise<void> {
    const log = this.log.child({ migrationId: m.id, vmId: m.vm, target: m.target });
    const startedAt = this.nowMs();
    const refusal = await this.preCheck(m);
    if (refusal !== null) {
      log.warn({ reason: refusal }, 'migration refused by the source pre-checks');
      await this.advance(m.id, 'failed', { reason: refusal });
      return;
    }
    if (!(await this.advance(m.id, 'preparing', { progress: { step: 'preparing the target' } }))) return;
    log.info({ phase: 'preparing' }, 'migration phase');
    const driver = this.options.driver();
    if (driver === null) throw new NovaError('not_ready', 'the hypervisor driver is not running');
    // The dirty-rate sample runs while the target starts its QEMU: the prediction costs the migration no time.
    const estimate = driver
      .qmp(m.vm)
      .then((qmp) => this.options.engine.estimateBeforeStart({ qmp, downtimeLimitMs: m.options.downtimeLimitMs, link: () => this.options.link(m.target), signal, nowMs: this.nowMs, logger: log }))
      .catch(() => null);
    let exports: string[];
    try {
      const answer = await this.options.mesh.request(m.target, migrateProtocol, { op: 'prepare', migrationId: m.id } satisfies MigrateRequest, {
        validate: validatePrepareAnswer,
        timeoutMs: prepareTimeoutMs,
        signal,
      });
      exports = answer.exports;
      const vm = this.options.state.getVm(m.vm);
      if (vm === null || exports.length !== vm.spec.disks.length) throw new MigrationRefusedError(`the target answered ${exports.length} exports for ${vm?.spec.disks.length ?? 0} disks`);
    } catch (err) {
      await this.failUnlessFinal(m.id, `the target could not prepare: ${errorMessage(err)}`, log);
      return;
    }
    const estimated = await estimate;
    if (!(await this.advance(m.id, 'transferring', { progress: { ...estimated, step: 'transferring' } }))) return;
    log.info({ phase: 'transferring', exports }, 'migration phase');
    const workDir = join(this.options.workDir, m.id);
    await mkdir(workDir, { recursive: true, mode: 0o700 });
    let lastProgressAt: number | null = null;
    let progressInFlight = false;
    let lastWrittenStep: string | undefined;
    let latest: EngineProgress = { ...estimated };
    let commitFigures: { downtimeMs: number; errorBoundMs: number } | null = null;
    let pausedAtMs: number | null = null;
    try {
      const qmp = await driver.qmp(m.vm);
      const result = await this.options.engine.runSource({
        migrationId: m.id,
        qmp,
        disks: exports.map((exportName, i) => ({ nodeName: diskNodeName(i), exportName })),
        workDir,
        openChannel: (kind) => this.openChannel(m, kind, signal),
        options: { ...m.options },
        link: () => this.options.link(m.target),
        limiters: this.options.limiters,
        ...(estimated === null ? {} : { initialProgress: estimated }),
        beforeSwitchover: async () => {
          const ok = await this.advance(m.id, 'switching', { progress: { ...latest, step: 'switching over' } });
          pausedAtMs = this.nowMs();
          log.info({ phase: 'switching', accepted: ok }, 'migration phase');
          return ok;
        },
        targetLoaded: () => this.askLoaded(m, log),
        commit: async () => {
          const pauseStart = pausedAtMs ?? this.nowMs();
          const completed = await this.commit(m, { ...latest, step: 'completed', durationMs: this.nowMs() - startedAt, downtimeMs: this.nowMs() - pauseStart }, log);
          if (!completed) return false;
          commitFigures = await this.askGoLive(m, pauseStart, log);
          return true;
        },
        onProgress: (p) => {
          latest = { ...latest, ...p };
          const now = this.nowMs();
          // A new step (estimating, mirroring, RAM pass N) is written as soon as nothing is in flight, not a second later.
          const stepChanged = latest.step !== undefined && latest.step !== lastWrittenStep;
          if (progressInFlight || (!stepChanged && !progressDue(now, lastProgressAt, progressInFlight))) return;
          const cur = this.options.state.getMigration(m.id);
          if (cur?.phase !== 'transferring') return;
          lastProgressAt = now;
          lastWrittenStep = latest.step;
          progressInFlight = true;
          void this.options
            .propose(this.cmd(m.id, 'transferring', { progress: latest }))
            .catch((err: unknown) => log.debug({ err: errorMessage(err) }, 'progress update not written'))
            .finally(() => {
              progressInFlight = false;
            });
        },
        signal,
        nowMs: this.nowMs,
        logger: log,
      });
      const figures = commitFigures as { downtimeMs: number; errorBoundMs: number } | null;
      log.info(
        {
          phase: 'completed',
          durationMs: result.durationMs,
          downtimeMeasuredMs: figures?.downtimeMs ?? null,
          downtimeErrorBoundMs: figures?.errorBoundMs ?? null,
          wireBytes: result.progress.wireBytes ?? null,
          bytesTransferred: result.progress.bytesTransferred ?? null,
        },
        'migration completed',
      );
      await this.removeLocalCopy(m.vm, 'it moved to the target');
    } catch (err) {
      const cur = this.options.state.getMigration(m.id);
      if (cur?.phase === 'completed') {
        // The move is durable: whatever the engine says now, the VM lives on the target.
        log.warn({ err: errorMessage(err) }, 'engine error after the ownership move; the target owns the VM');
        await this.removeLocalCopy(m.vm, 'it moved to the target');
        return;
      }
      await this.failUnlessFinal(m.id, errorMessage(err), log);
    } finally {
      await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /** The source's own checks at `requested`: what may have changed since the API accepted the request. */
  private async preCheck(m: Migration): Promise<string | null> {
    const vm = this.options.state.getVm(m.vm);
    if (vm === null) return 'the VM no longer exists';
    if (vm.owner !== this.options.nodeId) return 'the VM is not owned by the source any more';
    if (this.options.state.getMember(m.target) === null) return `target ${m.target} is not a member of the cluster`;
    if (!this.options.connected(m.target)) return `target ${m.target} is not reachable from the source`;
    const driver = this.options.driver();
    if (driver === null || !driver.list().includes(m.vm)) return 'the VM is not running on the source';
    const st = await driver.status(m.vm);
    if (st.state !== 'running' && st.state !== 'paused') return `the VM is ${st.state} on the source, not running`;
    return null;
  }

  private async openChannel(m: Migration, kind: ChannelKind, signal: AbortSignal): Promise<ByteChannel> {
    const bulk = await this.options.mesh.openBulk(m.target, migrateDataProtocol, { signal });
    await bulk.write(encodeDataHeader({ migrationId: m.id, kind }), signal);
    return bulk;
  }

  /**
   * Makes the ownership move durable. Returns true once the state shows `completed`, false once it shows the record
   * failed; while undecided (no quorum) it keeps the guest paused and retries: resuming then could make two copies.
   */
  private async commit(m: Migration, progress: MigrationProgress, log: Logger): Promise<boolean> {
    const started = this.nowMs();
    let backoff = proposeBackoffMsInitial;
    let failProposed = false;
    for (;;) {
      const cur = this.options.state.getMigration(m.id);
      if (cur?.phase === 'completed') return true;
      if (cur === null || cur.phase === 'failed' || cur.phase === 'cancelled') return false;
      if (this.stopped) await new Promise<never>(() => undefined); // the next process decides from the state
      try {
        await this.options.propose(this.cmd(m.id, 'completed', { progress }));
        log.info({ phase: 'completed' }, 'ownership moved to the target');
        continue;
      } catch (err) {
        if (isCodedError(err) && err.code === 'migration_transition_invalid') continue; // the state says what happened
        log.warn({ err: errorMessage(err) }, 'commit not confirmed yet: the guest stays paused until the record is final');
      }
      if (!failProposed && this.nowMs() - started > commitUndecidedMs) {
        failProposed = true;
        // Whichever of completed/failed Raft orders first wins; both ends act on that.
        await this.options.propose(this.cmd(m.id, 'failed', { reason: 'the ownership move could not be committed in time' })).catch(() => undefined);
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, proposeBackoffMsMax);
    }
  }

  /**
   * Before the move is committed: whether the target's QEMU loaded the whole stream. Anything but a yes (an answer
   * that it failed, no answer) keeps the guest on the source, where its only complete copy is.
   */
  private async askLoaded(m: Migration, log: Logger): Promise<boolean> {
    try {
      const answer = await this.options.mesh.request(m.target, migrateProtocol, { op: 'loaded', migrationId: m.id } satisfies MigrateRequest, { validate: validateLoadedAnswer, timeoutMs: loadedTimeoutMs });
      // The engine logs the whole wait; this is the target's share of it (the rest is the round trip).
      log.debug({ targetHandledMs: answer.handledMs }, 'target confirmed it loaded the migrated state');
      return true;
    } catch (err) {
      log.warn({ err: errorMessage(err) }, 'the target did not confirm it loaded the migrated state; the guest stays on the source');
      return false;
    }
  }

  /** Tells the target to resume now (it also does on its own from the state) and measures the downtime. */
  private async askGoLive(m: Migration, pausedAtMs: number, log: Logger): Promise<{ downtimeMs: number; errorBoundMs: number } | null> {
    const sentAt = this.nowMs();
    let answer: GoLiveAnswer;
    try {
      answer = await this.options.mesh.request(m.target, migrateProtocol, { op: 'goLive', migrationId: m.id } satisfies MigrateRequest, { validate: validateGoLiveAnswer, timeoutMs: goLiveTimeoutMs });
    } catch (err) {
      // The move is committed; the target resumes on its own when it applies it. Only the figure is lost.
      log.warn({ err: errorMessage(err) }, 'go-live request failed; the target resumes from its state');
      return null;
    }
    const figures = downtimeMs(pausedAtMs, sentAt, this.nowMs(), answer.handledMs, answer.resumedAgoMs);
    log.info({ ...figures, resumedNow: answer.resumedNow }, 'target resumed the guest');
    return figures;
  }

  /** After a failure with no run here (restart): no migration or block job may stay in the source QEMU; the agent resumes the guest. */
  private async recoverSource(m: Migration): Promise<void> {
    const driver = this.options.driver();
    const vm = this.options.state.getVm(m.vm);
    if (driver === null || vm?.owner !== this.options.nodeId || !driver.list().includes(m.vm)) return;
    try {
      const qmp = await driver.qmp(m.vm);
      await qmp.execute('migrate_cancel').catch(() => undefined);
      const jobs = await qmp.execute<Array<{ device: string }>>('query-block-jobs');
      for (const j of jobs) await qmp.execute('block-job-cancel', { device: j.device, force: true }).catch(() => undefined);
      this.log.info({ migrationId: m.id, vmId: m.vm, jobs: jobs.length }, 'source QEMU cleaned after an interrupted migration');
    } catch (err) {
      this.log.warn({ migrationId: m.id, vmId: m.vm, err: errorMessage(err) }, 'cleaning the source QEMU after an interrupted migration failed');
    }
  }

  /** The VM lives elsewhere now: quit the local QEMU (paused after the switch-over) and delete the overlays. */
  private async removeLocalCopy(vmId: string, why: string): Promise<void> {
    const vm = this.options.state.getVm(vmId);
    if (vm !== null && vm.owner === this.options.nodeId) return; // never remove what this node owns
    if (this.role(vmId) === 'target') return;
    const driver = this.options.driver();
    if (driver?.list().includes(vmId) === true) await driver.stop(vmId, { timeoutMs: sourceQuitTimeoutMs }).catch((err: unknown) => this.log.warn({ vmId, err: errorMessage(err) }, 'stopping the old copy failed'));
    await rm(join(this.options.vmsDir, vmId), { recursive: true, force: true });
    this.log.info({ vmId, why }, 'local copy of the VM removed');
  }

  // ---- target ----

  private async onRequest(req: MigrateRequest, peer: string): Promise<unknown> {
    const m = this.options.state.getMigration(req.migrationId);
    if (m === null) throw new NovaError('not_found', `no migration ${req.migrationId} in this node's state`);
    if (m.target !== this.options.nodeId || m.source !== peer) throw new NovaError('forbidden', `migration ${m.id} is not from ${peer} to this node`);
    if (req.op === 'prepare') return this.prepare(m);
    if (req.op === 'loaded') return this.loadedRequest(m);
    return this.goLiveRequest(m);
  }

  private async prepare(m: Migration): Promise<PrepareAnswer> {
    if (m.phase !== 'preparing') throw new NovaError('conflict', `migration ${m.id} is ${m.phase}, not preparing`);
    if (this.inherited.has(m.id) || this.handled.has(m.id)) throw new NovaError('conflict', `migration ${m.id} was interrupted on this node`);
    const existing = this.targets.get(m.id);
    if (existing?.preparing != null) return existing.preparing;
    const entry: TargetEntry = { migrationId: m.id, vmId: m.vm, session: null, status: 'preparing', preparing: null, live: null, channels: new Set() };
    this.targets.set(m.id, entry);
    entry.preparing = this.withVmLock(m.vm, () => this.doPrepare(m, entry));
    entry.preparing.catch(async (err: unknown) => {
      this.log.warn({ migrationId: m.id, err: errorMessage(err) }, 'preparing the target failed');
      await this.cleanupTarget(m, `prepare failed: ${errorMessage(err)}`);
    });
    return entry.preparing;
  }

  private async doPrepare(m: Migration, entry: TargetEntry): Promise<PrepareAnswer> {
    const log = this.log.child({ migrationId: m.id, vmId: m.vm, source: m.source });
    const driver = this.options.driver();
    if (driver === null) throw new NovaError('not_ready', 'the hypervisor driver of the target is not running');
    const vm = this.options.state.getVm(m.vm);
    if (vm === null) throw new NovaError('not_found', `no VM ${m.vm}`);
    if (vm.owner === this.options.nodeId) throw new NovaError('conflict', `this node already owns VM ${vm.name}`);
    const stillActive = (): void => {
      const cur = this.options.state.getMigration(m.id);
      if (cur === null || !isMigrationActive(cur) || this.targets.get(m.id) !== entry) throw new MigrationRefusedError(`migration ${m.id} ended while the target prepared (${cur?.phase ?? 'gone'})`);
    };
    // A stale copy (e.g. the VM lived here before) would be the wrong disks: start from nothing.
    if (driver.list().includes(m.vm)) await driver.delete(m.vm);
    await rm(join(this.options.vmsDir, m.vm), { recursive: true, force: true });
    const t0 = this.nowMs();
    const config = await prepareVmConfig(vm, this.options.images, this.options.vmsDir);
    stillActive();
    const { pid } = await driver.startIncoming(config);
    stillActive();
    const session = await this.options.engine.prepareTarget({
      migrationId: m.id,
      qmp: await driver.qmp(m.vm),
      disks: vm.spec.disks.map((_, i) => ({ nodeName: diskNodeName(i) })),
      workDir: join(this.options.workDir, m.id),
      postcopy: m.options.postcopy,
      logger: log,
      nowMs: this.nowMs,
    });
    entry.session = session;
    entry.status = 'ready';
    stillActive();
    log.info({ pid, exports: session.exports, elapsedMs: this.nowMs() - t0 }, 'target prepared: incoming QEMU waits for the stream');
    return { exports: [...session.exports] };
  }

  private async onData(bulk: ByteChannel, peer: string): Promise<void> {
    const { header, channel } = await readDataHeader(bulk, AbortSignal.timeout(dataHeaderTimeoutMs));
    const m = this.options.state.getMigration(header.migrationId);
    const entry = this.targets.get(header.migrationId);
    if (m === null || m.target !== this.options.nodeId || m.source !== peer || !isMigrationActive(m) || entry?.session == null || entry.status !== 'ready') {
      const err = new MigrationRefusedError(`no migration ${header.migrationId} from ${peer} is waiting for data here`);
      this.log.warn({ migrationId: header.migrationId, peer, kind: header.kind }, err.message);
      bulk.abort(err);
      return;
    }
    entry.channels.add(channel);
    try {
      await entry.session.acceptChannel(header.kind, channel);
    } finally {
      entry.channels.delete(channel);
    }
  }

  private async loadedRequest(m: Migration): Promise<LoadedAnswer> {
    const received = this.nowMs();
    // The source asks while the record is still active (it commits only after the answer).
    if (!isMigrationActive(m)) throw new NovaError('conflict', `migration ${m.id} is ${m.phase}`);
    const entry = this.targets.get(m.id);
    if (entry?.session == null) throw new NovaError('conflict', `no prepared session for migration ${m.id} on this node`);
    await entry.session.loaded();
    return { handledMs: this.nowMs() - received };
  }

  private async goLiveRequest(m: Migration): Promise<GoLiveAnswer> {
    const received = this.nowMs();
    // The source applied `completed` before asking; this node may be a moment behind.
    const deadline = received + (this.options.goLiveStateWaitMs ?? goLiveStateWaitMs);
    for (;;) {
      const cur = this.options.state.getMigration(m.id);
      if (cur?.phase === 'completed') break;
      if (cur === null || !isMigrationActive(cur) || this.nowMs() > deadline) throw new NovaError('conflict', `migration ${m.id} is not completed in this node's state (${cur?.phase ?? 'gone'})`);
      await sleep(stateWaitPollMs);
    }
    const cur = this.options.state.getMigration(m.id);
    if (cur === null) throw new NovaError('not_found', `no migration ${m.id}`);
    const r = await this.goLive(cur);
    const now = this.nowMs();
    return { handledMs: now - received, resumedNow: r.resumedNow, resumedAtMs: r.resumedAtMs, resumedAgoMs: r.resumedNow ? 0 : Math.max(0, now - r.localResumedAtMs) };
  }

  /** Resumes the received guest once: only with the record completed and this node the owner in the applied state. */
  private goLive(m: Migration): Promise<{ resumedAtMs: number; resumedNow: boolean; localResumedAtMs: number }> {
    const entry = this.targets.get(m.id);
    if (entry?.session == null) return Promise.reject(new NovaError('conflict', `no prepared session for migration ${m.id} on this node`));
    if (entry.live !== null) return entry.live.then((r) => ({ ...r, resumedNow: false }));
    const vm = this.options.state.getVm(m.vm);
    if (m.phase !== 'completed' || vm?.owner !== this.options.nodeId) return Promise.reject(new NovaError('conflict', `migration ${m.id} has not moved VM ownership to this node`));
    const session = entry.session;
    entry.live = (async () => {
      const resumedAtMs = await session.goLive();
      entry.status = 'live';
      this.log.info({ migrationId: m.id, vmId: m.vm, resumedAtMs }, 'migrated guest resumed on the target');
      return { resumedAtMs, resumedNow: true, localResumedAtMs: this.nowMs() };
    })();
    entry.live.catch((err: unknown) => this.log.error({ migrationId: m.id, err: errorMessage(err) }, 'resuming the migrated guest failed; the agent takes over'));
    return entry.live;
  }

  /** Runs `fn` after every earlier prepare or cleanup of the same VM here: they share its QEMU and overlay folder. */
  private withVmLock<T>(vmId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.vmLocks.get(vmId) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.then(
      () => undefined,
      () => undefined,
    );
    this.vmLocks.set(vmId, tail);
    void tail.then(() => {
      if (this.vmLocks.get(vmId) === tail) this.vmLocks.delete(vmId);
    });
    return next;
  }

  /** Kills the incoming QEMU and deletes the new overlays; never for a VM this node owns. */
  private cleanupTarget(m: Migration, reason: string): Promise<void> {
    return this.withVmLock(m.vm, () => this.doCleanupTarget(m, reason));
  }

  private async doCleanupTarget(m: Migration, reason: string): Promise<void> {
    const entry = this.targets.get(m.id);
    this.targets.delete(m.id);
    if (entry !== undefined) {
      for (const c of entry.channels) c.abort(new MigrationRefusedError(reason));
      await entry.session?.abort(reason).catch((err: unknown) => this.log.warn({ migrationId: m.id, err: errorMessage(err) }, 'aborting the target session failed'));
    }
    const vm = this.options.state.getVm(m.vm);
    if (vm?.owner === this.options.nodeId) return;
    // A newer migration of the same VM to this node owns the QEMU and overlays now.
    if ([...this.targets.values()].some((t) => t.vmId === m.vm)) return;
    const driver = this.options.driver();
    if (driver?.list().includes(m.vm) === true) await driver.delete(m.vm);
    await rm(join(this.options.vmsDir, m.vm), { recursive: true, force: true });
    await rm(join(this.options.workDir, m.id), { recursive: true, force: true });
    this.log.info({ migrationId: m.id, vmId: m.vm, reason }, 'target side of the migration cleaned up');
  }

  // ---- Raft ----

  private cmd(id: string, phase: MigrationPhase, extra: { reason?: string; progress?: MigrationProgress } = {}): ClusterCommand {
    return {
      type: 'migration.advance',
      at: this.nowMs(),
      actor: { kind: 'node', id: this.options.nodeId },
      from: null,
      id,
      phase,
      ...(extra.reason === undefined ? {} : { reason: extra.reason.slice(0, 1000) }),
      ...(extra.progress === undefined ? {} : { progress: clean(extra.progress) }),
    };
  }

  /**
   * Proposes a phase; true once the state shows it. False when the state machine refused it (the record went
   * elsewhere, e.g. cancelled) or no definite answer came within the bounded retries.
   */
  private async advance(id: string, phase: MigrationPhase, extra: { reason?: string; progress?: MigrationProgress } = {}): Promise<boolean> {
    let backoff = proposeBackoffMsInitial;
    for (let attempt = 1; attempt <= proposeAttemptsMax; attempt++) {
      const cur = this.options.state.getMigration(id);
      if (cur === null) return false;
      if (cur.phase === phase && phase !== 'transferring') return true;
      if (!isMigrationActive(cur)) return false;
      try {
        await this.options.propose(this.cmd(id, phase, extra));
        this.log.info({ migrationId: id, phase, ...(extra.reason === undefined ? {} : { reason: extra.reason }) }, 'migration phase proposed');
        return true;
      } catch (err) {
        if (isCodedError(err) && (err.code === 'migration_transition_invalid' || err.code === 'not_found')) return this.options.state.getMigration(id)?.phase === phase;
        this.log.warn({ migrationId: id, phase, attempt, err: errorMessage(err) }, 'proposing a migration phase failed');
      }
      if (this.stopped) return false;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, proposeBackoffMsMax);
    }
    return this.options.state.getMigration(id)?.phase === phase;
  }

  private async failUnlessFinal(id: string, reason: string, log: Logger): Promise<void> {
    const cur = this.options.state.getMigration(id);
    if (cur === null || !isMigrationActive(cur)) {
      log.info({ phase: cur?.phase ?? null, reason: cur?.reason ?? reason }, 'migration ended; the VM stays on the source');
      return;
    }
    log.warn({ phase: 'failed', reason }, 'migration failed; the VM stays on the source');
    await this.advance(id, 'failed', { reason });
  }
}

/** Progress as the command schema takes it: integers where it wants integers, no non-finite or negative figures. */
export function clean(p: MigrationProgress): MigrationProgress {
  const ints = new Set(['bytesTotal', 'bytesTransferred', 'bytesRemaining', 'diskBytesTotal', 'diskBytesTransferred', 'wireBytes', 'compressionLevel', 'cpuThrottlePercent']);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(p)) {
    if (typeof v === 'number') {
      if (!Number.isFinite(v) || v < 0) continue;
      out[k] = ints.has(k) ? Math.round(v) : v;
    } else if (typeof v === 'string') {
      out[k] = v.slice(0, 256);
    } else if (typeof v === 'boolean') {
      out[k] = v;
    }
  }
  return out;
}
