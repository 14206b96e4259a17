// The source half of a migration. Disks first: each disk is mirrored (blockdev-mirror, write-blocking once in sync)
// to the target's NBD export through the tunnel. Then RAM: QEMU migrates to a local unix socket the tunnel carries
// to the target, with pause-before-switchover so the node decides the switch-over: at that point the guest is
// paused, the mirrors are completed (every disk write is on the target), and only then does QEMU send the device
// state. The ownership move is committed through Raft (commit()) before the target may run the guest; if it cannot
// be, the source guest resumes. Until that commit, any failure, cancel or deadline leaves the guest on the source.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { RateLimiter } from '../bandwidth/index.js';
import type { QmpClient, QmpEvent } from '../node/hypervisor/qmp.js';
import type { EngineProgress, EstimateOptions, SourceRunOptions, SourceRunResult } from '../node/migration/engine.js';
import type { ChannelKind } from '../node/migration/protocol.js';
import { predictConvergence, qemuDowntimeLimitMs, qemuMaxBandwidthBytesPerSec, switchoverBandwidthUpdate } from './convergence.js';
import { MigrationEngineError } from './errors.js';
import { nextEventOrTimeout, qmpPollMs, sleep } from './qmp-util.js';
import { Tunnel, TunnelListener } from './tunnel.js';

/** Progress is read from QEMU and the tunnels this often (the service writes it to Raft at most once a second). */
export const progressIntervalMs = 500;
/** Cancelling: how long QEMU may take to leave an active migration or block job. */
export const cancelSettleTimeoutMs = 10_000;
/** Completing the in-sync mirrors at switch-over (the guest is paused meanwhile: this bounds the added downtime). */
export const mirrorCompleteTimeoutMs = 60_000;
/**
 * After QEMU completed: how long the RAM tunnel may take to deliver the stream's tail (what it read ahead, what is
 * being compressed, the channel's buffer) before the move is given up and the guest resumes here. The tail is a
 * few MB at most (bandwidth/encoder.ts bounds it by time at the current rate), so this only trips on a dead link.
 */
export const ramDeliverTimeoutMs = 60_000;
/** Post-copy (opt-in) starts only after this many pre-copy passes that did not converge. */
export const postcopyAfterPasses = 4;
/**
 * How long QEMU samples the guest's dirty pages before the transfer (calc-dirty-rate). Every ms of it delays the
 * migration; a quarter second sees a workload that would defeat pre-copy (the bench measured a second as ~25 % of a
 * whole 100 Mbit/s migration).
 */
export const dirtyRateSampleMs = 250;
export const dirtyRateWaitSlackMs = 2_000;
/** Compression gain assumed for the prediction before any chunk was compressed (mixed guest memory, measured ~2.6). */
export const expectedGainBeforeStart = 2;
/** After post-copy started, the rest of the pages may take this long. */
export const postcopyFinishTimeoutMs = 10 * 60_000;

interface QueryMigrate {
  status?: string;
  'error-desc'?: string;
  'expected-downtime'?: number;
  'downtime'?: number;
  'cpu-throttle-percentage'?: number;
  ram?: {
    transferred?: number;
    remaining?: number;
    total?: number;
    'dirty-pages-rate'?: number;
    'page-size'?: number;
    'dirty-sync-count'?: number;
  };
}

interface BlockJob {
  device: string;
  type: string;
  len: number;
  offset: number;
  ready: boolean;
  status?: string;
}

const jobId = (i: number): string => `mig-mirror-${i}`;
const nbdNode = (i: number): string => `mig-nbd-${i}`;

export async function runSource(opts: SourceRunOptions): Promise<SourceRunResult> {
  return new SourceRun(opts).run();
}

/**
 * The prediction shown before anything moves: QEMU samples the guest's dirty rate (calc-dirty-rate, page sampling,
 * works under KVM and TCG) and the link model gives the rate; a first look at whether pre-copy will converge. The
 * node runs it while the target prepares, so it costs the migration nothing. Null when the guest is not running
 * (it dirties nothing) or QEMU cannot measure: only the estimate is lost.
 */
export async function estimateBeforeStart(opts: EstimateOptions): Promise<EngineProgress | null> {
  const { qmp, signal } = opts;
  try {
    const st = await qmp.execute<{ running: boolean }>('query-status');
    if (!st.running) return null;
    await qmp.execute('calc-dirty-rate', { 'calc-time': dirtyRateSampleMs, 'calc-time-unit': 'millisecond' });
    const deadline = opts.nowMs() + dirtyRateSampleMs + dirtyRateWaitSlackMs;
    let info: { status?: string; 'dirty-rate'?: number } = {};
    for (;;) {
      if (signal.aborted) return null;
      info = await qmp.execute<{ status?: string; 'dirty-rate'?: number }>('query-dirty-rate');
      if (info.status === 'measured' || opts.nowMs() > deadline) break;
      await sleep(qmpPollMs);
    }
    if (info.status !== 'measured' || typeof info['dirty-rate'] !== 'number') return null;
    const dirtyRateBytesPerSec = info['dirty-rate'] * 1024 * 1024;
    const ram = await qmp.execute<{ 'base-memory'?: number }>('query-memory-size-summary');
    const link = opts.link().throughputBytesPerSec;
    const p: EngineProgress = { step: 'estimating the dirty rate', dirtyRateBytesPerSec, bytesTotal: ram['base-memory'] ?? 0 };
    if (link !== null && link > 0) {
      // Before anything is measured on this transfer: the link's rate times a typical compression gain.
      const prediction = predictConvergence({ remainingBytes: ram['base-memory'] ?? 0, rateBytesPerSec: link * expectedGainBeforeStart, dirtyRateBytesPerSec, downtimeLimitMs: opts.downtimeLimitMs });
      p.converging = prediction.converging;
      if (prediction.predictedRemainingMs !== null) p.predictedRemainingMs = prediction.predictedRemainingMs;
      if (prediction.expectedDowntimeMs !== null) p.expectedDowntimeMs = prediction.expectedDowntimeMs;
    }
    opts.logger.info({ dirtyRateBytesPerSec, linkBytesPerSec: link, converging: p.converging ?? null }, 'dirty rate before the migration');
    return p;
  } catch (err) {
    opts.logger.debug({ err: err instanceof Error ? err.message : String(err) }, 'no dirty-rate estimate before the migration');
    return null;
  }
}

class SourceRun {
  private readonly abort = new AbortController();
  private readonly tunnels: Tunnel[] = [];
  /** The tunnel of QEMU's (latest) RAM connection: the move commits only after it delivered everything. */
  private ramTunnel: Tunnel | null = null;
  /** The avail-switchover-bandwidth last given to QEMU (bytes/s); null: QEMU's own estimate. */
  private switchoverBandwidth: number | null = null;
  private readonly listeners: TunnelListener[] = [];
  private readonly jobEvents = new Map<string, QmpEvent>();
  private readonly limiters: RateLimiter[];
  private readonly qmp: QmpClient;
  private readonly startedAtMs: number;
  private nbdNodesAdded = 0;
  private jobsStarted = 0;
  private migrateStarted = false;
  private committed = false;
  private wasRunning = true;
  private last: { atMs: number; raw: number; wire: number } | null = null;
  private progress: EngineProgress = {};

  constructor(private readonly opts: SourceRunOptions) {
    this.qmp = opts.qmp;
    this.startedAtMs = opts.nowMs();
    this.progress = { ...opts.initialProgress };
    const own = opts.options.maxBandwidthBytesPerSec === null ? [] : [new RateLimiter({ bytesPerSec: opts.options.maxBandwidthBytesPerSec, nowMs: () => performance.now() })];
    this.limiters = [...own, ...(opts.limiters ?? [])];
  }

  async run(): Promise<SourceRunResult> {
    const { opts } = this;
    const onAbort = (): void => this.abort.abort(opts.signal.reason);
    opts.signal.addEventListener('abort', onAbort, { once: true });
    const offEvents = this.qmp.onEvent((e) => {
      const device = typeof e.data.device === 'string' ? e.data.device : null;
      if (device !== null && e.event.startsWith('BLOCK_JOB_')) this.jobEvents.set(`${device}:${e.event}`, e);
    });
    try {
      const st = await this.qmp.execute<{ running: boolean }>('query-status');
      this.wasRunning = st.running;
      await this.openListeners();
      if (opts.disks.length > 0) await this.mirrorDisks();
      const pausedAtMs = await this.migrateRam();
      return { pausedAtMs, durationMs: opts.nowMs() - this.startedAtMs, progress: this.progress };
    } catch (err) {
      if (!this.committed) await this.rollback(err);
      throw err;
    } finally {
      opts.signal.removeEventListener('abort', onAbort);
      offEvents();
      this.abort.abort(new MigrationEngineError('migration_aborted', 'migration run ended'));
      await Promise.allSettled(this.listeners.map((l) => l.close()));
      await Promise.allSettled(this.tunnels.map((t) => t.done));
    }
  }

  // ---- the tunnel ----

  private async openListeners(): Promise<void> {
    const { workDir, logger } = this.opts;
    await mkdir(workDir, { recursive: true, mode: 0o700 });
    for (const kind of ['ram', 'nbd'] as const) {
      if (kind === 'nbd' && this.opts.disks.length === 0) continue;
      this.listeners.push(await TunnelListener.listen(join(workDir, `${kind}-out.sock`), (s) => this.onLocalConnection(kind, s), logger));
    }
  }

  private onLocalConnection(kind: ChannelKind, socket: Socket): void {
    void (async () => {
      try {
        const channel = await this.opts.openChannel(kind);
        const link = this.opts.link();
        const tunnel = new Tunnel(
          socket,
          channel,
          { compression: this.opts.options.compression, limiters: this.limiters, linkHint: { throughputBytesPerSec: link.throughputBytesPerSec, rttMs: link.rttMs }, logger: this.opts.logger, label: `${this.opts.migrationId}/${kind}/out` },
          this.abort.signal,
        );
        this.tunnels.push(tunnel);
        if (kind === 'ram') this.ramTunnel = tunnel;
      } catch (err) {
        // QEMU sees the closed socket and fails its side; that failure is what the run reports.
        this.opts.logger.warn({ kind, err: err instanceof Error ? err.message : String(err) }, 'opening a data channel to the target failed');
        socket.destroy();
      }
    })();
  }

  // ---- disks ----

  private async mirrorDisks(): Promise<void> {
    const nbdSocket = join(this.opts.workDir, 'nbd-out.sock');
    for (const [i, d] of this.opts.disks.entries()) {
      await this.qmp.execute('blockdev-add', { driver: 'nbd', 'node-name': nbdNode(i), server: { type: 'unix', path: nbdSocket }, export: d.exportName });
      this.nbdNodesAdded = i + 1;
      // `top`: the target's overlay sits on the same content-addressed base image, so only the overlay moves.
      await this.qmp.execute('blockdev-mirror', { 'job-id': jobId(i), device: d.nodeName, target: nbdNode(i), sync: 'top', 'copy-mode': 'write-blocking', 'auto-dismiss': false });
      this.jobsStarted = i + 1;
    }
    for (;;) {
      this.checkLive();
      const jobs = await this.mirrorJobs();
      this.report({ step: 'mirroring disks' }, null, jobs);
      if (jobs.length === this.jobsStarted && jobs.every((j) => j.ready)) break;
      await nextEventOrTimeout(this.qmp, ['BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_ERROR'], progressIntervalMs);
    }
    this.opts.logger.info({ disks: this.jobsStarted }, 'disks in sync on the target; mirrors keep them in sync while RAM moves');
  }

  private async mirrorJobs(): Promise<BlockJob[]> {
    const all = await this.qmp.execute<BlockJob[]>('query-block-jobs');
    const ours = all.filter((j) => j.device.startsWith('mig-mirror-'));
    for (let i = 0; i < this.jobsStarted; i++) {
      const id = jobId(i);
      const job = ours.find((j) => j.device === id);
      const ended = job === undefined || job.status === 'concluded' || job.status === 'aborting' || job.status === 'null';
      const error = this.jobEvents.get(`${id}:BLOCK_JOB_ERROR`) ?? this.jobEvents.get(`${id}:BLOCK_JOB_CANCELLED`);
      if (error !== undefined || (ended && !this.mirrorsCompleting)) {
        throw new MigrationEngineError('migration_qemu_failed', `disk mirror ${id} stopped: ${jobEventText(this.jobEvents.get(`${id}:BLOCK_JOB_COMPLETED`) ?? error)}`);
      }
    }
    return ours;
  }

  private mirrorsCompleting = false;

  /** At switch-over (guest paused): each ready mirror writes what is left and ends; the target then holds every write. */
  private async completeMirrors(): Promise<void> {
    if (this.jobsStarted === 0) return;
    this.mirrorsCompleting = true;
    // block-job-cancel on a ready mirror is its "complete without pivoting": the source keeps its own disk.
    for (let i = 0; i < this.jobsStarted; i++) await this.qmp.execute('block-job-cancel', { device: jobId(i) });
    const deadline = this.opts.nowMs() + mirrorCompleteTimeoutMs;
    for (;;) {
      const jobs = (await this.qmp.execute<BlockJob[]>('query-block-jobs')).filter((j) => j.device.startsWith('mig-mirror-'));
      const pending = jobs.filter((j) => j.status !== 'concluded');
      if (pending.length === 0) break;
      if (this.opts.nowMs() > deadline) throw new MigrationEngineError('migration_qemu_failed', `disk mirrors did not finish within ${mirrorCompleteTimeoutMs} ms at switch-over`);
      await nextEventOrTimeout(this.qmp, ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_ERROR', 'JOB_STATUS_CHANGE'], progressIntervalMs);
    }
    for (let i = 0; i < this.jobsStarted; i++) {
      const done = this.jobEvents.get(`${jobId(i)}:BLOCK_JOB_COMPLETED`);
      if (done === undefined || typeof done.data.error === 'string') {
        throw new MigrationEngineError('migration_qemu_failed', `disk mirror ${jobId(i)} did not complete: ${jobEventText(done)}`);
      }
      await this.qmp.execute('job-dismiss', { id: jobId(i) });
    }
    this.jobsStarted = 0;
    // Nothing writes to the NBD nodes any more; drop them so the source QEMU holds no link to the target.
    await this.dropNbdNodes();
  }

  private async dropNbdNodes(): Promise<void> {
    for (let i = this.nbdNodesAdded - 1; i >= 0; i--) await this.qmp.execute('blockdev-del', { 'node-name': nbdNode(i) }).catch(() => undefined);
    this.nbdNodesAdded = 0;
  }

  // ---- RAM ----

  private async migrateRam(): Promise<number> {
    const { options } = this.opts;
    const capabilities = [
      { capability: 'events', state: true },
      { capability: 'pause-before-switchover', state: true },
      { capability: 'auto-converge', state: options.autoConverge },
      { capability: 'postcopy-ram', state: options.postcopy },
    ];
    await this.qmp.execute('migrate-set-capabilities', { capabilities });
    const downtimeLimit = qemuDowntimeLimitMs(options.downtimeLimitMs, this.opts.link().rttMs);
    // avail-switchover-bandwidth 0 (QEMU's own estimate) until the link is measured: the QEMU outlives a cancelled
    // migration, and with it the figure an earlier one set.
    await this.qmp.execute('migrate-set-parameters', { 'downtime-limit': downtimeLimit, 'max-bandwidth': qemuMaxBandwidthBytesPerSec(options.maxBandwidthBytesPerSec), 'avail-switchover-bandwidth': 0 });
    const transferStartMs = this.opts.nowMs();
    this.migrateStarted = true;
    await this.qmp.execute('migrate', { uri: `unix:${join(this.opts.workDir, 'ram-out.sock')}` });
    let postcopyStarted = false;
    let switchedAtMs: number | null = null;
    let lastReportMs = 0;
    for (;;) {
      const info = await this.qmp.execute<QueryMigrate>('query-migrate');
      const status = info.status ?? 'none';
      const now = this.opts.nowMs();
      if (now - lastReportMs >= progressIntervalMs || status === 'completed') {
        lastReportMs = now;
        this.report({ step: postcopyStarted ? 'post-copy' : `RAM pass ${info.ram?.['dirty-sync-count'] ?? 1}` }, info, []);
        if (status === 'active' && !postcopyStarted) await this.setSwitchoverBandwidth();
      }
      switch (status) {
        case 'failed':
        case 'cancelled':
          throw new MigrationEngineError('migration_qemu_failed', `QEMU migration ${status}${info['error-desc'] === undefined ? '' : `: ${info['error-desc']}`}`);
        case 'pre-switchover': {
          switchedAtMs = now;
          if (!(await this.opts.beforeSwitchover())) throw new MigrationEngineError('migration_switchover_refused', 'the switch-over was not accepted (the migration was cancelled or failed)');
          this.checkLive();
          await this.completeMirrors();
          await this.qmp.execute('migrate-continue', { state: 'pre-switchover' });
          break;
        }
        case 'postcopy-active':
          if (!this.committed) await this.commitOrResume(switchedAtMs ?? now);
          if (now - transferStartMs > options.deadlineMs + postcopyFinishTimeoutMs) throw new MigrationEngineError('migration_qemu_failed', 'post-copy did not finish in time');
          break;
        case 'completed':
          if (!this.committed) {
            // QEMU is done writing to the socket, not the tunnel to the target: until the target has loaded
            // everything, the guest's only complete copy is here, paused.
            await this.ramDelivered();
            const deliveredAtMs = this.opts.nowMs();
            if (!(await this.opts.targetLoaded())) throw new MigrationEngineError('migration_target_failed', 'the target did not load the migrated state; the VM resumes on the source');
            // Both are paid while the guest is paused: the tunnel's tail, then the target's QEMU finishing its load.
            this.opts.logger.info({ tailDeliveredMs: Math.round(deliveredAtMs - now), targetLoadedMs: Math.round(this.opts.nowMs() - deliveredAtMs) }, 'stream delivered and loaded on the target');
            await this.commitOrResume(switchedAtMs ?? now);
          }
          this.report({ step: 'completed', downtimeMs: info.downtime ?? 0 }, info, []);
          return switchedAtMs ?? now;
        default:
          // setup, active, device: the deadline and a cancel apply until the switch-over starts.
          if (switchedAtMs === null) {
            this.checkLive();
            if (now - transferStartMs > options.deadlineMs) {
              throw new MigrationEngineError('migration_deadline', `the migration did not converge within its deadline of ${options.deadlineMs} ms; the VM stays on the source`);
            }
            if (options.postcopy && !postcopyStarted && status === 'active' && this.progress.converging === false && (info.ram?.['dirty-sync-count'] ?? 0) >= postcopyAfterPasses) {
              this.opts.logger.warn({ passes: info.ram?.['dirty-sync-count'] }, 'pre-copy does not converge: switching to post-copy (opt-in)');
              await this.qmp.execute('migrate-start-postcopy');
              postcopyStarted = true;
            }
          }
      }
      await nextEventOrTimeout(this.qmp, ['MIGRATION'], qmpPollMs * 4);
    }
  }

  /** Waits (bounded) for the RAM tunnel to have put QEMU's last byte and its end frame on the channel. */
  private async ramDelivered(): Promise<void> {
    const tunnel = this.ramTunnel;
    if (tunnel === null) throw new MigrationEngineError('migration_tunnel_closed', 'QEMU completed without a RAM tunnel');
    const failed = tunnel.sent.catch((err: unknown) => {
      throw new MigrationEngineError('migration_tunnel_closed', `the RAM tunnel failed before delivering the stream's tail: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new MigrationEngineError('migration_tunnel_closed', `the RAM tunnel did not deliver the stream's tail within ${ramDeliverTimeoutMs} ms`)), ramDeliverTimeoutMs);
    });
    try {
      await Promise.race([failed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The guest is paused and QEMU sent everything but ownership: commit through Raft, or resume here. */
  private async commitOrResume(pausedAtMs: number): Promise<void> {
    if (await this.opts.commit()) {
      this.committed = true;
      return;
    }
    throw new MigrationEngineError('migration_switchover_refused', `the ownership move was not committed (paused ${this.opts.nowMs() - pausedAtMs} ms); the VM resumes on the source`);
  }

  private checkLive(): void {
    if (this.opts.signal.aborted) {
      const reason: unknown = this.opts.signal.reason;
      throw reason instanceof Error ? reason : new MigrationEngineError('migration_aborted', 'the migration was cancelled');
    }
  }

  // ---- failure ----

  /** Leaves the source as it was before the migration: no migration, no block job, no NBD node, the guest running. */
  private async rollback(cause: unknown): Promise<void> {
    const log = this.opts.logger;
    try {
      if (this.migrateStarted) {
        await this.qmp.execute('migrate_cancel').catch(() => undefined);
        const deadline = this.opts.nowMs() + cancelSettleTimeoutMs;
        for (;;) {
          const info = await this.qmp.execute<QueryMigrate>('query-migrate');
          const s = info.status ?? 'none';
          if (s === 'none' || s === 'cancelled' || s === 'failed' || s === 'completed' || this.opts.nowMs() > deadline) break;
          await sleep(qmpPollMs);
        }
      }
      const jobs = (await this.qmp.execute<BlockJob[]>('query-block-jobs')).filter((j) => j.device.startsWith('mig-mirror-'));
      for (const j of jobs) {
        if (j.status === 'concluded') await this.qmp.execute('job-dismiss', { id: j.device }).catch(() => undefined);
        else await this.qmp.execute('block-job-cancel', { device: j.device, force: true }).catch(() => undefined);
      }
      const deadline = this.opts.nowMs() + cancelSettleTimeoutMs;
      for (;;) {
        const left = (await this.qmp.execute<BlockJob[]>('query-block-jobs')).filter((j) => j.device.startsWith('mig-mirror-'));
        for (const j of left) if (j.status === 'concluded') await this.qmp.execute('job-dismiss', { id: j.device }).catch(() => undefined);
        if (left.length === 0 || this.opts.nowMs() > deadline) break;
        await sleep(qmpPollMs);
      }
      await this.dropNbdNodes();
      const st = await this.qmp.execute<{ running: boolean; status: string }>('query-status');
      // A migration that reached completion leaves the guest in postmigrate; a cancelled one may leave it paused.
      if (this.wasRunning && !st.running) await this.qmp.execute('cont');
      log.info({ cause: cause instanceof Error ? cause.message : String(cause), was: st.status }, 'source restored after the migration stopped: the guest runs here');
    } catch (err) {
      log.error({ err: err instanceof Error ? err.message : String(err) }, 'restoring the source after a failed migration did not finish; the agent takes over');
    }
  }

  /** Tells QEMU what the link can carry at switch-over (migration/convergence.ts says why it needs telling). */
  private async setSwitchoverBandwidth(): Promise<void> {
    const next = switchoverBandwidthUpdate(this.switchoverBandwidth, this.ramTunnel?.stats().wireThroughputBytesPerSec ?? null);
    if (next === null) return;
    await this.qmp.execute('migrate-set-parameters', { 'avail-switchover-bandwidth': next });
    this.opts.logger.debug({ availSwitchoverBandwidth: next, was: this.switchoverBandwidth }, 'switch-over bandwidth set from the link estimate');
    this.switchoverBandwidth = next;
  }

  // ---- progress ----

  private report(extra: EngineProgress, info: QueryMigrate | null, jobs: BlockJob[]): void {
    const now = performance.now();
    let raw = 0;
    let wire = 0;
    let level = 0;
    let levelRaw = -1;
    for (const t of this.tunnels) {
      const s = t.stats();
      raw += s.rawBytes;
      wire += s.wireBytes;
      if (s.rawBytes > levelRaw) {
        levelRaw = s.rawBytes;
        level = s.level;
      }
    }
    const p: EngineProgress = { ...extra, wireBytes: wire, ratio: wire === 0 ? 1 : raw / wire, compressionLevel: level };
    if (this.last !== null && now - this.last.atMs > 0) {
      const dt = (now - this.last.atMs) / 1000;
      p.rateBytesPerSec = (raw - this.last.raw) / dt;
      p.wireRateBytesPerSec = (wire - this.last.wire) / dt;
    }
    this.last = { atMs: now, raw, wire };
    if (jobs.length > 0) {
      p.diskBytesTotal = jobs.reduce((a, j) => a + j.len, 0);
      p.diskBytesTransferred = jobs.reduce((a, j) => a + Math.min(j.offset, j.len), 0);
    }
    if (info?.ram !== undefined) {
      const r = info.ram;
      const diskTotal = p.diskBytesTotal ?? this.progress.diskBytesTotal ?? 0;
      p.bytesTotal = (r.total ?? 0) + diskTotal;
      p.bytesTransferred = (r.transferred ?? 0) + diskTotal;
      p.bytesRemaining = r.remaining ?? 0;
      p.dirtyRateBytesPerSec = (r['dirty-pages-rate'] ?? 0) * (r['page-size'] ?? 4096);
      p.cpuThrottlePercent = info['cpu-throttle-percentage'] ?? 0;
      p.postcopy = info.status === 'postcopy-active';
      const rate = p.rateBytesPerSec ?? this.progress.rateBytesPerSec ?? 0;
      // The tunnel's raw rate counts QEMU's stream bytes; `remaining` counts guest RAM, whose zero pages cost that
      // stream next to nothing: the prediction errs on the cautious side.
      const prediction = predictConvergence({ remainingBytes: r.remaining ?? 0, rateBytesPerSec: rate, dirtyRateBytesPerSec: p.dirtyRateBytesPerSec, downtimeLimitMs: this.opts.options.downtimeLimitMs });
      p.converging = prediction.converging;
      if (prediction.predictedRemainingMs !== null) p.predictedRemainingMs = prediction.predictedRemainingMs;
      const qemuExpected = info['expected-downtime'];
      if (prediction.expectedDowntimeMs !== null) p.expectedDowntimeMs = qemuExpected ?? prediction.expectedDowntimeMs;
    } else if (p.diskBytesTotal !== undefined) {
      p.bytesTotal = p.diskBytesTotal;
      p.bytesTransferred = p.diskBytesTransferred ?? 0;
      p.bytesRemaining = p.diskBytesTotal - (p.diskBytesTransferred ?? 0);
    }
    this.progress = { ...this.progress, ...p };
    this.opts.onProgress(this.progress);
  }
}

function jobEventText(e: QmpEvent | undefined): string {
  if (e === undefined) return 'no completion event';
  const err = e.data.error;
  return typeof err === 'string' ? err : e.event;
}
