// The RaftStorage rules shared by every engine: range checks, the append/overwrite/compaction arithmetic,
// validation and call serialization. An engine (memory, LevelDB) only loads, reads and commits a WritePlan
// atomically, so both implementations have one set of semantics by construction.

import type { Entry, HardState, RaftStorage, Snapshot, SnapshotMeta } from '../types.js';
import { StorageCorruptError } from '../types.js';
import {
  StorageClosedError,
  StorageCompactedError,
  StorageInvalidArgumentError,
  StorageIoError,
  StorageSnapshotOutOfDateError,
  StorageUnavailableError,
} from './errors.js';
import type { AppliedState } from './records.js';

export type { AppliedState } from './records.js';

export const EMPTY_HARD_STATE: HardState = { term: 0, vote: null, commit: 0 };

/** What an engine holds when opened. `lastTerm` is the term at lastIndex (snapshot term, or 0, when empty). */
export interface LoadedState {
  hardState: HardState;
  snapshot: SnapshotMeta | null;
  firstIndex: number;
  lastIndex: number;
  lastTerm: number;
}

/** One atomic, durable change. Entries in [deleteFrom, deleteTo] are removed, then `put` entries written. */
export interface WritePlan {
  hardState: HardState | null;
  deleteFrom: number;
  deleteTo: number;
  put: readonly Entry[];
  snapshot: Snapshot | null;
  applied: AppliedState | null;
}

/** The state machine's applied-state area: its state and applied index, written together atomically and synced. */
export interface AppliedStore {
  /**
   * Store the state machine's state after applying the entry at `index`. On restart, if the loaded index is
   * below the snapshot index (a crash between applySnapshot and saveApplied), restore from the snapshot.
   */
  saveApplied(index: number, data: Uint8Array): Promise<void>;
  loadApplied(): Promise<AppliedState | null>;
}

function emptyPlan(): WritePlan {
  return { hardState: null, deleteFrom: 1, deleteTo: 0, put: [], snapshot: null, applied: null };
}

function checkIndex(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new StorageInvalidArgumentError(`${what} must be a non-negative safe integer, got ${n}`);
}

export abstract class BaseRaftStorage implements RaftStorage, AppliedStore {
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private failure: Error | null = null;

  protected constructor(private state: LoadedState) {}

  /** Entries [lo, hi) known to be inside [firstIndex, lastIndex]; verify each record and stop at maxBytes. */
  protected abstract readRange(lo: number, hi: number, maxBytes: number): Promise<Entry[]>;
  protected abstract readSnapshot(): Promise<Snapshot | null>;
  protected abstract readApplied(): Promise<AppliedState | null>;
  /** Apply the plan atomically and durably, or not at all. */
  protected abstract commit(plan: WritePlan): Promise<void>;
  protected abstract release(): Promise<void>;

  /** Runs calls one at a time in call order; a failed write poisons the store (see StorageIoError). */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closed) throw new StorageClosedError('raft storage is closed');
      if (this.failure) throw new StorageIoError(`raft storage failed earlier: ${this.failure.message}`, { cause: this.failure });
      return fn();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async write(plan: WritePlan, next: LoadedState): Promise<void> {
    try {
      await this.commit(plan);
    } catch (err) {
      this.failure = err instanceof Error ? err : new Error(String(err));
      if (err instanceof StorageCorruptError || err instanceof StorageIoError) throw err;
      throw new StorageIoError(`raft storage write failed: ${this.failure.message}`, { cause: err });
    }
    this.state = next;
  }

  /** Term of the entry at `index`; undefined when it was compacted away (and is not the snapshot's). */
  private async termAt(index: number): Promise<number | undefined> {
    const s = this.state;
    if (index === s.lastIndex) return s.lastTerm;
    if (s.snapshot && index === s.snapshot.index) return s.snapshot.term;
    if (index === 0) return 0;
    if (index < s.firstIndex || index > s.lastIndex) return undefined;
    const [e] = await this.readRange(index, index + 1, Infinity);
    if (e === undefined) throw new StorageCorruptError(`entry ${index} missing`, index);
    return e.term;
  }

  initialState(): Promise<{ hardState: HardState; snapshot: SnapshotMeta | null; firstIndex: number; lastIndex: number }> {
    return this.exclusive(async () => {
      const { hardState, snapshot, firstIndex, lastIndex } = this.state;
      return { hardState, snapshot, firstIndex, lastIndex };
    });
  }

  entries(lo: number, hi: number, maxBytes = Infinity): Promise<Entry[]> {
    return this.exclusive(async () => {
      checkIndex(lo, 'lo');
      checkIndex(hi, 'hi');
      if (lo > hi) throw new StorageInvalidArgumentError(`entries(${lo}, ${hi}): lo > hi`);
      if (!(maxBytes >= 0)) throw new StorageInvalidArgumentError(`maxBytes must be >= 0, got ${maxBytes}`);
      const { firstIndex, lastIndex } = this.state;
      if (lo < firstIndex) throw new StorageCompactedError(`entries from ${lo} requested, log starts at ${firstIndex}`);
      if (hi > lastIndex + 1) throw new StorageUnavailableError(`entries up to ${hi - 1} requested, log ends at ${lastIndex}`);
      if (lo === hi) return [];
      return this.readRange(lo, hi, maxBytes);
    });
  }

  save(hardStateIn: HardState | null, entries: readonly Entry[]): Promise<void> {
    return this.exclusive(async () => {
      const s = this.state;
      // Copy: the cached hard state is returned by initialState and must not change under the caller's hands.
      const hardState = hardStateIn && { term: hardStateIn.term, vote: hardStateIn.vote, commit: hardStateIn.commit };
      if (hardState) {
        checkIndex(hardState.term, 'hard state term');
        checkIndex(hardState.commit, 'hard state commit');
        if (hardState.term < s.hardState.term) {
          throw new StorageInvalidArgumentError(`hard state term went back from ${s.hardState.term} to ${hardState.term}`);
        }
      }
      for (let i = 0; i < entries.length; i++) {
        const e = entries[i]!;
        checkIndex(e.index, 'entry index');
        checkIndex(e.term, 'entry term');
        const prev = entries[i - 1];
        if (prev && (e.index !== prev.index + 1 || e.term < prev.term)) {
          throw new StorageInvalidArgumentError(`entries not contiguous at ${e.index} (after ${prev.index}, term ${prev.term} -> ${e.term})`);
        }
      }
      // Entries up to the snapshot index (or below firstIndex) are committed, hence identical to what is held
      // (Log Matching); overwriting them could only be a bug, so they are skipped. The one at the snapshot
      // index is checked, as it costs no read.
      const snapIndex = s.snapshot?.index ?? 0;
      const atSnap = entries.find((e) => e.index === snapIndex);
      if (s.snapshot && atSnap && atSnap.term !== s.snapshot.term) {
        throw new StorageInvalidArgumentError(`entry ${snapIndex} has term ${atSnap.term}, the snapshot there has ${s.snapshot.term}`);
      }
      const fresh = entries.filter((e) => e.index >= s.firstIndex && e.index > snapIndex);
      const plan = emptyPlan();
      plan.hardState = hardState;
      const next: LoadedState = { ...s, hardState: hardState ?? s.hardState };
      const first = fresh[0];
      const last = fresh[fresh.length - 1];
      if (first && last) {
        if (first.index === 0) throw new StorageInvalidArgumentError('entry index 0 is reserved');
        if (first.index > s.lastIndex + 1) throw new StorageInvalidArgumentError(`append at ${first.index} leaves a gap after ${s.lastIndex}`);
        const prevTerm = await this.termAt(first.index - 1);
        if (prevTerm !== undefined && first.term < prevTerm) {
          throw new StorageInvalidArgumentError(`entry ${first.index} has term ${first.term}, below ${prevTerm} of the entry before it`);
        }
        plan.put = fresh;
        // The new entries overwrite [first, last]; anything after `last` is the rest of the conflicting suffix.
        plan.deleteFrom = last.index + 1;
        plan.deleteTo = s.lastIndex;
        next.lastIndex = last.index;
        next.lastTerm = last.term;
      }
      if (!plan.hardState && plan.put.length === 0) return;
      await this.write(plan, next);
    });
  }

  applySnapshot(snapshot: Snapshot): Promise<void> {
    return this.exclusive(async () => {
      const s = this.state;
      const { index, term } = snapshot.meta;
      checkIndex(index, 'snapshot index');
      checkIndex(term, 'snapshot term');
      if (index <= (s.snapshot?.index ?? 0)) {
        throw new StorageSnapshotOutOfDateError(`snapshot at ${index} is not newer than the one held at ${s.snapshot?.index ?? 0}`);
      }
      const plan = emptyPlan();
      plan.snapshot = snapshot;
      const next: LoadedState = { ...s, snapshot: snapshot.meta, firstIndex: index + 1 };
      const matches = index >= s.firstIndex && index <= s.lastIndex && (await this.termAt(index)) === term;
      if (matches) {
        // The log agrees with the snapshot at its index: the entries after it are still valid.
        plan.deleteFrom = s.firstIndex;
        plan.deleteTo = index;
      } else {
        plan.deleteFrom = s.firstIndex;
        plan.deleteTo = s.lastIndex;
        next.lastIndex = index;
        next.lastTerm = term;
      }
      if (s.hardState.commit < index) {
        plan.hardState = { ...s.hardState, commit: index };
        next.hardState = plan.hardState;
      }
      await this.write(plan, next);
    });
  }

  compact(snapshot: Snapshot, keepEntries: number): Promise<void> {
    return this.exclusive(async () => {
      const s = this.state;
      const { index, term } = snapshot.meta;
      checkIndex(index, 'snapshot index');
      checkIndex(keepEntries, 'keepEntries');
      if (index <= (s.snapshot?.index ?? 0)) {
        throw new StorageSnapshotOutOfDateError(`snapshot at ${index} is not newer than the one held at ${s.snapshot?.index ?? 0}`);
      }
      if (index > s.lastIndex) throw new StorageUnavailableError(`snapshot at ${index} is beyond the log's last index ${s.lastIndex}`);
      const actual = await this.termAt(index);
      if (actual !== term) throw new StorageInvalidArgumentError(`snapshot at ${index} says term ${term}, the log has ${actual}`);
      const plan = emptyPlan();
      plan.snapshot = snapshot;
      const dropTo = index - keepEntries;
      const next: LoadedState = { ...s, snapshot: snapshot.meta };
      if (dropTo >= s.firstIndex) {
        plan.deleteFrom = s.firstIndex;
        plan.deleteTo = dropTo;
        next.firstIndex = dropTo + 1;
      }
      await this.write(plan, next);
    });
  }

  snapshot(): Promise<Snapshot | null> {
    return this.exclusive(() => this.readSnapshot());
  }

  saveApplied(index: number, data: Uint8Array): Promise<void> {
    return this.exclusive(async () => {
      checkIndex(index, 'applied index');
      const plan = emptyPlan();
      plan.applied = { index, data };
      await this.write(plan, this.state);
    });
  }

  loadApplied(): Promise<AppliedState | null> {
    return this.exclusive(() => this.readApplied());
  }

  close(): Promise<void> {
    const run = this.queue.then(async () => {
      if (this.closed) return;
      this.closed = true;
      await this.release();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }
}

/**
 * Checks a loaded log against its snapshot: entries must start no later than right after the snapshot and,
 * when any are held, reach at least its index. A mismatch means a lost or torn write: refuse to start.
 */
export function checkLogAgainstSnapshot(snapshot: SnapshotMeta | null, firstIndex: number, lastIndex: number, termAtSnapshot: number | undefined): void {
  const snapIndex = snapshot?.index ?? 0;
  if (lastIndex < firstIndex) return;
  if (firstIndex > snapIndex + 1) throw new StorageCorruptError(`log starts at ${firstIndex}, after snapshot index ${snapIndex} + 1`, snapIndex + 1);
  if (lastIndex < snapIndex) throw new StorageCorruptError(`log ends at ${lastIndex}, before snapshot index ${snapIndex}`, lastIndex + 1);
  if (snapshot && termAtSnapshot !== undefined && termAtSnapshot !== snapshot.term) {
    throw new StorageCorruptError(`entry ${snapIndex} has term ${termAtSnapshot}, the snapshot says ${snapshot.term}`, snapIndex);
  }
}
