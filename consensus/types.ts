// Shared Raft types: the vocabulary of the pure core, its storage and its driver.
// Node ids are strings (the libp2p peer id in production); indexes and terms are plain integers.

export type NodeId = string;

export interface Entry {
  readonly term: number;
  readonly index: number;
  /** `normal` carries a state-machine command; `conf` carries an encoded ConfChange; `empty` is the leader's no-op. */
  readonly type: 'normal' | 'conf' | 'empty';
  readonly data: Uint8Array;
}

export interface HardState {
  readonly term: number;
  readonly vote: NodeId | null;
  readonly commit: number;
}

export interface ConfState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
  /** During joint consensus: the outgoing voter set; empty when not joint. */
  readonly votersOutgoing: readonly NodeId[];
}

export interface SnapshotMeta {
  readonly index: number;
  readonly term: number;
  readonly conf: ConfState;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  readonly data: Uint8Array;
}

/** A storage failure that must stop the node: a torn or corrupt record, never applied. */
export class StorageCorruptError extends Error {
  override readonly name = 'StorageCorruptError';
  readonly code = 'storage_corrupt';
  /** The log index of the bad entry record, when the corruption is in the log. */
  readonly index: number | undefined;
  constructor(message: string, index?: number, options?: ErrorOptions) {
    super(message, options);
    this.index = index;
  }
}

/**
 * Durable Raft storage. Every mutating call is atomic and durable (synced) when its promise resolves:
 * a crash after the resolve never loses it, a crash before leaves the old state or the new, never a mix.
 * Calls are serialized in the order they are made. Implementations: consensus/storage/{memory,leveldb}.ts;
 * the errors they throw for misuse (compacted / unavailable range, out-of-date snapshot, non-contiguous
 * append, closed) live in consensus/storage/errors.ts.
 *
 * Index range: entries held are [firstIndex, lastIndex]. A fresh store has firstIndex 1, lastIndex 0, hard
 * state { term 0, vote null, commit 0 }. With a snapshot at index s and no entries left, firstIndex is s + 1
 * and lastIndex s; `compact` may keep some entries at or below s, so firstIndex <= s + 1 always.
 */
export interface RaftStorage {
  /** State on open: hard state, conf state and snapshot meta (if any), and the index range of entries held. */
  initialState(): Promise<{ hardState: HardState; snapshot: SnapshotMeta | null; firstIndex: number; lastIndex: number }>;
  /**
   * Entries [lo, hi), at most `maxBytes` of entry data (sum of `data.byteLength`) but always at least one
   * when lo < hi. Checksums verified: a torn or corrupt record throws StorageCorruptError, never returned.
   * lo < firstIndex throws StorageCompactedError; hi > lastIndex + 1 throws StorageUnavailableError.
   */
  entries(lo: number, hi: number, maxBytes?: number): Promise<Entry[]>;
  /**
   * Persist hard state (null: unchanged) and append entries in one atomic synced batch; entries at or after
   * entries[0].index are replaced (the conflicting suffix is deleted). Entries must be contiguous and
   * entries[0].index <= lastIndex + 1; entries at or below the snapshot index, or below firstIndex,
   * are ignored (committed, so identical by Log Matching; an entry at the snapshot index must carry its term).
   */
  save(hardState: HardState | null, entries: readonly Entry[]): Promise<void>;
  /**
   * Install a snapshot received from the leader: store it, drop all entries up to its index, and keep the
   * entries after it only when the log holds an entry at the snapshot's index with the snapshot's term
   * (otherwise the whole log is dropped). The stored commit is raised to the snapshot index if lower.
   * A snapshot not newer than the current one throws StorageSnapshotOutOfDateError.
   */
  applySnapshot(snapshot: Snapshot): Promise<void>;
  /**
   * Create a snapshot at `snapshot.meta.index` (already applied; must be <= lastIndex and newer than the
   * current snapshot) with state-machine data, and drop entries with index <= index - keepEntries, i.e.
   * keep the last `keepEntries` entries up to the snapshot so slightly lagging followers need no snapshot.
   */
  compact(snapshot: Snapshot, keepEntries: number): Promise<void>;
  snapshot(): Promise<Snapshot | null>;
  /** Idempotent. Any other call after close throws StorageClosedError. */
  close(): Promise<void>;
}
