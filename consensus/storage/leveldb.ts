// LevelDB RaftStorage on classic-level. One database per node (data dir `raft/`), raw byte keys:
//   0x01                     format record (magic + layout version)
//   0x02                     hard state
//   0x03 + u64 BE index      log entries (fixed-width big-endian so LevelDB's byte order is index order)
//   0x04                     snapshot (meta + state-machine data)
//   0x05                     applied state of the cluster state machine (+ its applied index)
// Every change is one `batch(..., { sync: true })`, so it is atomic and fsynced before its promise resolves.
// Records are self-checking (records.ts); a bad one is a StorageCorruptError naming the index, never data.

import { ClassicLevel } from 'classic-level';
import type { Entry, Snapshot, SnapshotMeta } from '../types.js';
import { StorageCorruptError } from '../types.js';
import { BaseRaftStorage, checkLogAgainstSnapshot, EMPTY_HARD_STATE, type AppliedState, type LoadedState, type WritePlan } from './base.js';
import { StorageIoError, StorageLockedError, StorageVersionError } from './errors.js';
import {
  decodeApplied,
  decodeEntry,
  decodeHardState,
  decodeMeta,
  decodeSnapshot,
  encodeApplied,
  encodeEntry,
  encodeHardState,
  encodeMeta,
  encodeSnapshot,
} from './records.js';

/** Layout version of the database (key scheme + record kinds); bump when either changes incompatibly. */
export const STORAGE_FORMAT_VERSION = 1;

const PREFIX_META = 0x01;
const PREFIX_HARD_STATE = 0x02;
const PREFIX_ENTRY = 0x03;
const PREFIX_SNAPSHOT = 0x04;
const PREFIX_APPLIED = 0x05;

function entryKey(index: number): Uint8Array {
  const k = new Uint8Array(9);
  const v = new DataView(k.buffer);
  k[0] = PREFIX_ENTRY;
  v.setUint32(1, Math.floor(index / 2 ** 32));
  v.setUint32(5, index >>> 0);
  return k;
}

function keyIndex(key: Uint8Array): number {
  if (key.byteLength !== 9 || key[0] !== PREFIX_ENTRY) throw new StorageCorruptError(`malformed entry key of ${key.byteLength} bytes`);
  const v = new DataView(key.buffer, key.byteOffset, key.byteLength);
  return v.getUint32(1) * 2 ** 32 + v.getUint32(5);
}

/** The key layout, exported so tests can reach under the API (e.g. to corrupt a record on purpose). */
export const LEVEL_KEYS = {
  meta: Uint8Array.of(PREFIX_META),
  hardState: Uint8Array.of(PREFIX_HARD_STATE),
  snapshot: Uint8Array.of(PREFIX_SNAPSHOT),
  applied: Uint8Array.of(PREFIX_APPLIED),
  entry: entryKey,
  entriesStart: Uint8Array.of(PREFIX_ENTRY),
  entriesEnd: Uint8Array.of(PREFIX_ENTRY + 1),
} as const;

type Db = ClassicLevel<Uint8Array, Uint8Array>;
type BatchOp = { type: 'put'; key: Uint8Array; value: Uint8Array } | { type: 'del'; key: Uint8Array };

export interface LevelOpenOptions {
  /**
   * Read and verify every entry record at open (checksum, key/index agreement, contiguity, term order).
   * Default true: a torn log is found before the node starts, not when a follower asks for that entry.
   * When false, open reads only the first and last records; holes and bad records surface on read.
   */
  verifyOnOpen?: boolean;
}

/** Records fetched per iterator call: one native round trip per record made full-log reads ~10 µs/entry. */
const SCAN_BATCH_RECORDS = 256;

/** Iterates [key, value] pairs in batches (nextv); closes the iterator when the consumer stops early. */
async function* scan(db: Db, range: { gte: Uint8Array; lt: Uint8Array }): AsyncGenerator<[Uint8Array, Uint8Array]> {
  const it = db.iterator(range);
  try {
    while (true) {
      const batch = await it.nextv(SCAN_BATCH_RECORDS);
      if (batch.length === 0) return;
      yield* batch;
    }
  } finally {
    await it.close();
  }
}

function isLocked(err: unknown): boolean {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  return e?.code === 'LEVEL_LOCKED' || e?.cause?.code === 'LEVEL_LOCKED';
}

export class LevelRaftStorage extends BaseRaftStorage {
  private constructor(
    private readonly db: Db,
    loaded: LoadedState,
  ) {
    super(loaded);
  }

  /** Opens or creates the store in `dir`. StorageLockedError if another process (or handle) has it open. */
  static async open(dir: string, options: LevelOpenOptions = {}): Promise<LevelRaftStorage> {
    const db: Db = new ClassicLevel<Uint8Array, Uint8Array>(dir, { keyEncoding: 'view', valueEncoding: 'view' });
    try {
      await db.open();
    } catch (err) {
      if (isLocked(err)) throw new StorageLockedError(`raft database ${dir} is already open in another process`, { cause: err });
      throw new StorageIoError(`cannot open raft database ${dir}: ${(err as Error).message}`, { cause: err });
    }
    try {
      return new LevelRaftStorage(db, await load(db, dir, options.verifyOnOpen ?? true));
    } catch (err) {
      await db.close();
      throw err;
    }
  }

  protected async readRange(lo: number, hi: number, maxBytes: number): Promise<Entry[]> {
    const out: Entry[] = [];
    let bytes = 0;
    let expected = lo;
    for await (const [key, value] of scan(this.db, { gte: entryKey(lo), lt: entryKey(hi) })) {
      const index = keyIndex(key);
      if (index !== expected) throw new StorageCorruptError(`entry ${expected} missing (next record is ${index})`, expected);
      const e = decodeEntry(value, index);
      const prev = out[out.length - 1];
      if (prev && e.term < prev.term) throw new StorageCorruptError(`entry ${index} has term ${e.term} below ${prev.term}`, index);
      bytes += e.data.byteLength;
      if (out.length > 0 && bytes > maxBytes) return out;
      out.push(e);
      expected++;
    }
    if (expected !== hi) throw new StorageCorruptError(`entry ${expected} missing`, expected);
    return out;
  }

  protected async readSnapshot(): Promise<Snapshot | null> {
    const v = await this.db.get(LEVEL_KEYS.snapshot);
    return v === undefined ? null : decodeSnapshot(v);
  }

  protected async readApplied(): Promise<AppliedState | null> {
    const v = await this.db.get(LEVEL_KEYS.applied);
    return v === undefined ? null : decodeApplied(v);
  }

  protected async commit(plan: WritePlan): Promise<void> {
    const ops: BatchOp[] = [];
    if (plan.hardState) ops.push({ type: 'put', key: LEVEL_KEYS.hardState, value: encodeHardState(plan.hardState) });
    // classic-level has no range delete inside a batch; the log is contiguous, so the keys are known exactly.
    for (let i = plan.deleteFrom; i <= plan.deleteTo; i++) ops.push({ type: 'del', key: entryKey(i) });
    for (const e of plan.put) ops.push({ type: 'put', key: entryKey(e.index), value: encodeEntry(e) });
    if (plan.snapshot) ops.push({ type: 'put', key: LEVEL_KEYS.snapshot, value: encodeSnapshot(plan.snapshot) });
    if (plan.applied) ops.push({ type: 'put', key: LEVEL_KEYS.applied, value: encodeApplied(plan.applied) });
    if (ops.length === 0) return;
    await this.db.batch(ops, { sync: true });
  }

  protected async release(): Promise<void> {
    await this.db.close();
  }
}

async function load(db: Db, dir: string, verify: boolean): Promise<LoadedState> {
  const metaValue = await db.get(LEVEL_KEYS.meta);
  if (metaValue === undefined) {
    for await (const _key of db.keys({ limit: 1 })) {
      throw new StorageVersionError(`${dir} holds data but no NovaCron raft format record`);
    }
    await db.put(LEVEL_KEYS.meta, encodeMeta(STORAGE_FORMAT_VERSION), { sync: true });
  } else {
    let formatVersion: number;
    try {
      ({ formatVersion } = decodeMeta(metaValue));
    } catch (err) {
      throw new StorageVersionError(`${dir} is not a NovaCron raft database (${(err as Error).message})`, { cause: err });
    }
    if (formatVersion !== STORAGE_FORMAT_VERSION) {
      throw new StorageVersionError(`${dir} has raft storage format ${formatVersion}; this build reads ${STORAGE_FORMAT_VERSION}`);
    }
  }

  const hsValue = await db.get(LEVEL_KEYS.hardState);
  const hardState = hsValue === undefined ? EMPTY_HARD_STATE : decodeHardState(hsValue);
  const snapValue = await db.get(LEVEL_KEYS.snapshot);
  // Decoding the whole snapshot verifies its checksum now rather than when a follower needs it.
  const snapshot: SnapshotMeta | null = snapValue === undefined ? null : decodeSnapshot(snapValue).meta;

  let firstIndex = 0;
  let lastIndex = 0;
  let lastTerm = snapshot?.term ?? 0;
  let termAtSnapshot: number | undefined;
  const range = { gte: LEVEL_KEYS.entriesStart, lt: LEVEL_KEYS.entriesEnd };
  if (verify) {
    let prevTerm = 0;
    for await (const [key, value] of scan(db, range)) {
      const index = keyIndex(key);
      if (index === 0) throw new StorageCorruptError('entry record at reserved index 0', 0);
      if (firstIndex === 0) firstIndex = index;
      else if (index !== lastIndex + 1) throw new StorageCorruptError(`entry ${lastIndex + 1} missing (next record is ${index})`, lastIndex + 1);
      const e = decodeEntry(value, index);
      if (e.term < prevTerm) throw new StorageCorruptError(`entry ${index} has term ${e.term} below ${prevTerm}`, index);
      prevTerm = e.term;
      lastIndex = index;
      lastTerm = e.term;
      if (snapshot && index === snapshot.index) termAtSnapshot = e.term;
    }
  } else {
    for await (const key of db.keys({ ...range, limit: 1 })) firstIndex = keyIndex(key);
    for await (const [key, value] of db.iterator({ ...range, limit: 1, reverse: true })) {
      lastIndex = keyIndex(key);
      lastTerm = decodeEntry(value, lastIndex).term;
    }
    if (snapshot && snapshot.index >= firstIndex && snapshot.index <= lastIndex) {
      const v = await db.get(entryKey(snapshot.index));
      termAtSnapshot = v === undefined ? undefined : decodeEntry(v, snapshot.index).term;
    }
  }
  if (firstIndex === 0) {
    firstIndex = (snapshot?.index ?? 0) + 1;
    lastIndex = firstIndex - 1;
  }
  checkLogAgainstSnapshot(snapshot, firstIndex, lastIndex, termAtSnapshot);
  return { hardState, snapshot, firstIndex, lastIndex, lastTerm };
}
