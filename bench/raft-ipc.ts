// Shared pieces of the Raft benchmark: IPC messages, the bench state machine, an fsync-counting storage wrapper, percentiles.
import type { RaftCounters, RaftStatus, StateMachine } from '../consensus/driver.js';
import type { Entry, HardState, RaftStorage, Snapshot } from '../consensus/types.js';

export interface PeerInfo {
  peerId: string;
  addrs: string[];
}

/** Parent → child: one request, answered by exactly one ChildReply with the same id. */
export type ChildRequest =
  | { id: number; op: 'peers'; peers: PeerInfo[] }
  | { id: number; op: 'open'; voters: string[]; dial: PeerInfo[]; seed: number; tickIntervalMs: number }
  | { id: number; op: 'status' }
  | { id: number; op: 'load-start'; proposers: number; commandBytes: number }
  | { id: number; op: 'sample'; window: boolean }
  | { id: number; op: 'load-stop' }
  | { id: number; op: 'latency'; count: number; commandBytes: number }
  | { id: number; op: 'stop' };

export type ChildReply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

/** Child → parent, unsolicited, once its mesh listens. */
export interface ChildHello {
  hello: PeerInfo;
}

export interface StatusResult {
  status: RaftStatus;
  checksum: number;
}

export interface StorageStats {
  /** Synced batches written by `save` (hard state and/or entries): one fsync each. */
  saves: number;
  /** Of those, saves with no entries: a hard state change alone (usually just the commit index) cost an fsync. */
  hardStateOnlySaves: number;
  saveMs: number;
  entries: number;
}

/** A snapshot of a node's cumulative figures; the parent subtracts two of them to get a window. */
export interface SampleResult {
  atMs: number;
  completed: number;
  failed: Record<string, number>;
  /** Commit latencies of proposals completed since the previous sample (the list is cleared on each sample). */
  latenciesMs: number[];
  counters: RaftCounters;
  storage: StorageStats;
  cpuUserUs: number;
  cpuSystemUs: number;
  /** Event-loop delay since the previous `window` sample: time a ready callback (an fsync done, a message in) waited for the CPU. */
  eventLoopDelayMs: { mean: number; p99: number };
}

export interface LatencyResult {
  latenciesMs: number[];
  failed: Record<string, number>;
}

/**
 * The replicated state: a count and a running FNV-1a checksum over every applied command in order. Cheap to apply
 * (so the figures measure Raft, not the state machine), and equal checksums on all nodes prove they applied the
 * same commands in the same order.
 */
export class BenchMachine implements StateMachine {
  count = 0;
  checksum = 0x811c9dc5;

  apply(command: Uint8Array, index: number): unknown {
    let h = this.checksum;
    for (let i = 0; i < command.length; i++) h = Math.imul(h ^ (command[i] as number), 0x01000193);
    this.checksum = h >>> 0;
    this.count++;
    return index;
  }

  snapshot(): Uint8Array {
    const out = new Uint8Array(12);
    const v = new DataView(out.buffer);
    v.setFloat64(0, this.count);
    v.setUint32(8, this.checksum);
    return out;
  }

  restore(data: Uint8Array, _index: number): void {
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.count = v.getFloat64(0);
    this.checksum = v.getUint32(8);
  }
}

/** Delegates to real storage and counts `save` calls: each is one synced LevelDB batch, so this is fsyncs. */
export class CountingStorage implements RaftStorage {
  readonly stats: StorageStats = { saves: 0, hardStateOnlySaves: 0, saveMs: 0, entries: 0 };

  constructor(private readonly inner: RaftStorage) {}

  initialState(): ReturnType<RaftStorage['initialState']> {
    return this.inner.initialState();
  }

  entries(lo: number, hi: number, maxBytes?: number): Promise<Entry[]> {
    return this.inner.entries(lo, hi, maxBytes);
  }

  async save(hardState: HardState | null, entries: readonly Entry[]): Promise<void> {
    const start = performance.now();
    await this.inner.save(hardState, entries);
    this.stats.saveMs += performance.now() - start;
    this.stats.saves++;
    if (entries.length === 0) this.stats.hardStateOnlySaves++;
    this.stats.entries += entries.length;
  }

  applySnapshot(snapshot: Snapshot): Promise<void> {
    return this.inner.applySnapshot(snapshot);
  }

  compact(snapshot: Snapshot, keepEntries: number): Promise<void> {
    return this.inner.compact(snapshot, keepEntries);
  }

  snapshot(): Promise<Snapshot | null> {
    return this.inner.snapshot();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Nearest-rank percentile of an ascending list. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;
}

export function summarize(latenciesMs: readonly number[]): { count: number; p50: number; p99: number; mean: number; max: number } {
  const sorted = [...latenciesMs].sort((a, b) => a - b);
  const mean = sorted.length === 0 ? NaN : sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return { count: sorted.length, p50: round(percentile(sorted, 50)), p99: round(percentile(sorted, 99)), mean: round(mean), max: round(sorted[sorted.length - 1] ?? NaN) };
}

export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function addFailure(failed: Record<string, number>, err: unknown): string {
  const name = err instanceof Error ? err.name : 'Error';
  failed[name] = (failed[name] ?? 0) + 1;
  return name;
}
