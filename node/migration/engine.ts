// The slice of the migration engine (migration/: QEMU, NBD, the tunnel codec) the node's orchestration drives, and of
// the hypervisor driver it needs. Declared here so the service is unit-tested against fakes; node.ts binds the real
// engine (migration/source.ts runSource, migration/target.ts TargetSession) and the QEMU driver.
import type { MigrationProgress } from '../../consensus/cluster/index.js';
import type { QmpClient } from '../hypervisor/qmp.js';
import type { QemuVmConfig } from '../hypervisor/qemu-args.js';
import type { VmStatus } from '../hypervisor/qemu.js';
import type { ByteChannel, ChannelKind } from './protocol.js';
import type { RateLimiter } from '../../bandwidth/index.js';

export interface EngineLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

export interface EngineMigrationOptions {
  downtimeLimitMs: number;
  deadlineMs: number;
  autoConverge: boolean;
  postcopy: boolean;
  maxBandwidthBytesPerSec: number | null;
  compression: 'adaptive' | 'off' | number;
}

export type EngineProgress = MigrationProgress;

export interface EngineTargetSession {
  readonly exports: string[];
  acceptChannel(kind: ChannelKind, channel: ByteChannel): Promise<void>;
  /** Resolves once the incoming QEMU has loaded the whole stream (it stays paused); rejects when loading failed. */
  loaded(): Promise<void>;
  goLive(): Promise<number>;
  abort(reason: string): Promise<void>;
}

export interface SourceRunOptions {
  migrationId: string;
  qmp: QmpClient;
  disks: Array<{ nodeName: string; exportName: string }>;
  workDir: string;
  openChannel(kind: ChannelKind): Promise<ByteChannel>;
  options: EngineMigrationOptions;
  link(): { rttMs: number | null; throughputBytesPerSec: number | null };
  /** Node-wide limiters shared by every migration of this node (bandwidth/ RateLimiter). */
  limiters?: readonly RateLimiter[];
  beforeSwitchover(): Promise<boolean>;
  /**
   * Pre-copy only, after QEMU completed and the RAM tunnel delivered the stream's last byte, before commit: whether
   * the target loaded everything. False (or a failure) resumes the guest on the source: nothing was committed.
   */
  targetLoaded(): Promise<boolean>;
  commit(): Promise<boolean>;
  onProgress(p: EngineProgress): void;
  /** Figures known before the run (estimateBeforeStart's): later progress updates build on them. */
  initialProgress?: EngineProgress;
  signal: AbortSignal;
  nowMs: () => number;
  logger: EngineLogger;
}

export interface EstimateOptions {
  qmp: QmpClient;
  downtimeLimitMs: number;
  link(): { rttMs: number | null; throughputBytesPerSec: number | null };
  signal: AbortSignal;
  nowMs: () => number;
  logger: EngineLogger;
}

export interface SourceRunResult {
  pausedAtMs: number;
  durationMs: number;
  progress: EngineProgress;
}

export interface MigrationEngine {
  prepareTarget(opts: { migrationId: string; qmp: QmpClient; disks: Array<{ nodeName: string }>; workDir: string; postcopy: boolean; logger: EngineLogger; nowMs: () => number }): Promise<EngineTargetSession>;
  runSource(opts: SourceRunOptions): Promise<SourceRunResult>;
  /** The dirty rate and a first convergence prediction, taken while the target prepares; null if not measurable. */
  estimateBeforeStart(opts: EstimateOptions): Promise<EngineProgress | null>;
}

/** What the orchestration needs of the QEMU driver (the agent's instance: one driver per node). */
export interface MigrationDriver {
  list(): string[];
  status(vmId: string): Promise<VmStatus>;
  /** Starts QEMU paused (-S) waiting for an incoming migration (-incoming defer). */
  startIncoming(config: QemuVmConfig): Promise<{ pid: number }>;
  qmp(vmId: string): Promise<QmpClient>;
  stop(vmId: string, options?: { timeoutMs?: number }): Promise<unknown>;
  delete(vmId: string): Promise<void>;
}

export { diskNodeName } from '../hypervisor/qemu-args.js';
