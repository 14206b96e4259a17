// In-memory RaftStorage for unit tests and the deterministic simulator. Same rules as LevelDB (BaseRaftStorage);
// its "disk" is a MemoryDisk object that outlives a storage instance, so a simulated node can crash (drop the
// instance, `disk.crash()`) and reopen with exactly what was durably saved.

import type { Entry, HardState, Snapshot, SnapshotMeta } from '../types.js';
import { StorageCorruptError } from '../types.js';
import { BaseRaftStorage, checkLogAgainstSnapshot, EMPTY_HARD_STATE, type AppliedState, type LoadedState, type WritePlan } from './base.js';
import { StorageLockedError } from './errors.js';

function copyEntry(e: Entry): Entry {
  return { index: e.index, term: e.term, type: e.type, data: e.data.slice() };
}

function copySnapshot(s: Snapshot): Snapshot {
  const { conf } = s.meta;
  return {
    meta: { index: s.meta.index, term: s.meta.term, conf: { voters: [...conf.voters], learners: [...conf.learners], votersOutgoing: [...conf.votersOutgoing] } },
    data: s.data.slice(),
  };
}

/** The durable state of one simulated node. Survives storage instances; one open instance at a time. */
export class MemoryDisk {
  hardState: HardState = EMPTY_HARD_STATE;
  snapshot: Snapshot | null = null;
  readonly log = new Map<number, Entry>();
  applied: AppliedState | null = null;
  /** The instance holding the lock, like LevelDB's LOCK file. */
  holder: object | null = null;

  /** The process died: the lock is released; everything saved stays. */
  crash(): void {
    this.holder = null;
  }
}

export class MemoryRaftStorage extends BaseRaftStorage {
  private constructor(
    private readonly disk: MemoryDisk,
    loaded: LoadedState,
  ) {
    super(loaded);
  }

  /** Opens (or creates, with a fresh disk) an in-memory store. Throws StorageLockedError if the disk is held. */
  static async open(disk: MemoryDisk = new MemoryDisk()): Promise<MemoryRaftStorage> {
    if (disk.holder !== null) throw new StorageLockedError('memory raft disk is already open');
    let firstIndex = Infinity;
    let lastIndex = 0;
    for (const i of disk.log.keys()) {
      if (i < firstIndex) firstIndex = i;
      if (i > lastIndex) lastIndex = i;
    }
    const snapMeta: SnapshotMeta | null = disk.snapshot?.meta ?? null;
    let lastTerm = snapMeta?.term ?? 0;
    if (disk.log.size === 0) {
      firstIndex = (snapMeta?.index ?? 0) + 1;
      lastIndex = firstIndex - 1;
    } else {
      if (disk.log.size !== lastIndex - firstIndex + 1) throw new StorageCorruptError(`memory log has holes in [${firstIndex}, ${lastIndex}]`, firstIndex);
      lastTerm = disk.log.get(lastIndex)!.term;
    }
    checkLogAgainstSnapshot(snapMeta, firstIndex, lastIndex, snapMeta ? disk.log.get(snapMeta.index)?.term : undefined);
    const storage = new MemoryRaftStorage(disk, { hardState: disk.hardState, snapshot: snapMeta, firstIndex, lastIndex, lastTerm });
    disk.holder = storage;
    return storage;
  }

  protected async readRange(lo: number, hi: number, maxBytes: number): Promise<Entry[]> {
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.disk.log.get(i);
      if (e === undefined) throw new StorageCorruptError(`entry ${i} missing`, i);
      const prev = out[out.length - 1];
      if (prev && e.term < prev.term) throw new StorageCorruptError(`entry ${i} has term ${e.term} below ${prev.term}`, i);
      bytes += e.data.byteLength;
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(copyEntry(e));
    }
    return out;
  }

  protected async readSnapshot(): Promise<Snapshot | null> {
    return this.disk.snapshot && copySnapshot(this.disk.snapshot);
  }

  protected async readApplied(): Promise<AppliedState | null> {
    const a = this.disk.applied;
    return a && { index: a.index, data: a.data.slice() };
  }

  protected async commit(plan: WritePlan): Promise<void> {
    const d = this.disk;
    if (d.holder !== this) throw new StorageLockedError('memory raft disk was taken over by another instance');
    if (plan.hardState) d.hardState = plan.hardState;
    for (let i = plan.deleteFrom; i <= plan.deleteTo; i++) d.log.delete(i);
    for (const e of plan.put) d.log.set(e.index, copyEntry(e));
    if (plan.snapshot) d.snapshot = copySnapshot(plan.snapshot);
    if (plan.applied) d.applied = { index: plan.applied.index, data: plan.applied.data.slice() };
  }

  protected async release(): Promise<void> {
    if (this.disk.holder === this) this.disk.holder = null;
  }
}
