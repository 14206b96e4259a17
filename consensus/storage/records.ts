// Compact binary records for the Raft store, each self-checking:
//   [record version u8][kind u8][body ...][crc32c u32 BE over everything before it]
// The kind byte catches a value stored under the wrong key; the CRC catches torn and flipped bytes; the body
// parser must end exactly at the CRC, which catches truncation that happens to keep a valid-looking prefix.
// Integers are big-endian; indexes and terms are u64 on disk but must be safe JS integers.

import type { ConfState, Entry, HardState, Snapshot, SnapshotMeta } from '../types.js';
import { StorageCorruptError } from '../types.js';
import { crc32c } from './crc32c.js';
import { StorageInvalidArgumentError } from './errors.js';

/** Version of the record encoding; bump on any change to the byte layout below. */
export const RECORD_VERSION = 1;

export const RecordKind = { Meta: 1, HardState: 2, Entry: 3, Snapshot: 4, Applied: 5 } as const;
export type RecordKind = (typeof RecordKind)[keyof typeof RecordKind];

/** Largest command an entry may carry. Raft batches many of them; a huge one would stall replication. */
export const ENTRY_DATA_MAX_BYTES = 16 * 1024 * 1024;
/** Largest snapshot / applied state. It is one LevelDB value, read and written whole. */
export const SNAPSHOT_DATA_MAX_BYTES = 512 * 1024 * 1024;
/** Node ids are libp2p peer ids (~52 bytes); anything near this bound is a bug. */
export const NODE_ID_MAX_BYTES = 1024;
/** Voters + learners: far above any real cluster, low enough to reject garbage counts when decoding. */
export const CONF_MEMBERS_MAX_COUNT = 4096;

const HEADER_BYTES = 2;
const CRC_BYTES = 4;
const ENTRY_TYPES: readonly Entry['type'][] = ['normal', 'conf', 'empty'];
const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

class Writer {
  private buf: Uint8Array;
  private view: DataView;
  private pos = HEADER_BYTES;
  constructor(kind: RecordKind, sizeHint: number) {
    this.buf = new Uint8Array(HEADER_BYTES + sizeHint + CRC_BYTES);
    this.view = new DataView(this.buf.buffer);
    this.buf[0] = RECORD_VERSION;
    this.buf[1] = kind;
  }
  private ensure(n: number): void {
    if (this.pos + n + CRC_BYTES <= this.buf.length) return;
    const bigger = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n + CRC_BYTES));
    bigger.set(this.buf);
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }
  u8(v: number): void {
    this.ensure(1);
    this.view.setUint8(this.pos, v);
    this.pos += 1;
  }
  u16(v: number): void {
    this.ensure(2);
    this.view.setUint16(this.pos, v);
    this.pos += 2;
  }
  u32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.pos, v);
    this.pos += 4;
  }
  u64(v: number, what: string): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new StorageInvalidArgumentError(`${what} must be a non-negative safe integer, got ${v}`);
    this.ensure(8);
    this.view.setUint32(this.pos, Math.floor(v / 2 ** 32));
    this.view.setUint32(this.pos + 4, v >>> 0);
    this.pos += 8;
  }
  bytes(b: Uint8Array, max: number, what: string): void {
    if (b.byteLength > max) throw new StorageInvalidArgumentError(`${what} is ${b.byteLength} bytes, over the ${max} byte bound`);
    this.u32(b.byteLength);
    this.ensure(b.byteLength);
    this.buf.set(b, this.pos);
    this.pos += b.byteLength;
  }
  str(s: string, what: string): void {
    const b = utf8.encode(s);
    if (b.byteLength > NODE_ID_MAX_BYTES) throw new StorageInvalidArgumentError(`${what} is ${b.byteLength} bytes, over ${NODE_ID_MAX_BYTES}`);
    this.u16(b.byteLength);
    this.ensure(b.byteLength);
    this.buf.set(b, this.pos);
    this.pos += b.byteLength;
  }
  finish(): Uint8Array {
    const out = this.buf.subarray(0, this.pos + CRC_BYTES);
    new DataView(out.buffer, out.byteOffset).setUint32(this.pos, crc32c(out, 0, this.pos));
    return out;
  }
}

class Reader {
  private readonly view: DataView;
  private pos = HEADER_BYTES;
  private readonly end: number;
  constructor(
    private readonly buf: Uint8Array,
    private readonly fail: (why: string) => never,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.end = buf.byteLength - CRC_BYTES;
  }
  private need(n: number): void {
    if (this.pos + n > this.end) this.fail('truncated record');
  }
  u8(): number {
    this.need(1);
    return this.view.getUint8(this.pos++);
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = this.view.getUint32(this.pos) * 2 ** 32 + this.view.getUint32(this.pos + 4);
    this.pos += 8;
    if (!Number.isSafeInteger(v)) this.fail('integer out of range');
    return v;
  }
  bytes(max: number): Uint8Array {
    const n = this.u32();
    if (n > max) this.fail(`length ${n} over bound ${max}`);
    this.need(n);
    // Copy: the caller must not alias LevelDB's buffer, and the Raft core may keep entries for long.
    // (Not buf.slice: LevelDB hands back a Buffer, whose slice() is a view, not a copy.)
    const out = new Uint8Array(n);
    out.set(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return out;
  }
  str(): string {
    const n = this.u16();
    if (n > NODE_ID_MAX_BYTES) this.fail(`string length ${n} over bound`);
    this.need(n);
    let s: string;
    try {
      s = utf8Strict.decode(this.buf.subarray(this.pos, this.pos + n));
    } catch {
      this.fail('invalid utf-8');
    }
    this.pos += n;
    return s;
  }
  done(): void {
    if (this.pos !== this.end) this.fail(`${this.end - this.pos} trailing bytes`);
  }
}

/** Checks framing and CRC, then hands a positioned reader to `parse`. Every failure is a StorageCorruptError. */
function decode<T>(buf: Uint8Array, kind: RecordKind, what: string, index: number | undefined, parse: (r: Reader) => T): T {
  const fail = (why: string): never => {
    throw new StorageCorruptError(`${what}: ${why}`, index);
  };
  if (buf.byteLength < HEADER_BYTES + CRC_BYTES) fail(`truncated record (${buf.byteLength} bytes)`);
  const stored = new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(buf.byteLength - CRC_BYTES);
  if (crc32c(buf, 0, buf.byteLength - CRC_BYTES) !== stored) fail('checksum mismatch');
  if (buf[0] !== RECORD_VERSION) fail(`unknown record version ${buf[0]}`);
  if (buf[1] !== kind) fail(`record kind ${buf[1]} where ${kind} was expected`);
  const r = new Reader(buf, fail);
  const value = parse(r);
  r.done();
  return value;
}

export function encodeEntry(e: Entry): Uint8Array {
  const w = new Writer(RecordKind.Entry, 1 + 8 + 8 + 4 + e.data.byteLength);
  const t = ENTRY_TYPES.indexOf(e.type);
  if (t < 0) throw new StorageInvalidArgumentError(`unknown entry type ${String(e.type)}`);
  w.u8(t);
  w.u64(e.index, 'entry index');
  w.u64(e.term, 'entry term');
  w.bytes(e.data, ENTRY_DATA_MAX_BYTES, `entry ${e.index} data`);
  return w.finish();
}

/** Decodes an entry record stored under `index`; a record that names another index is corrupt. */
export function decodeEntry(buf: Uint8Array, index: number): Entry {
  return decode(buf, RecordKind.Entry, `entry record at index ${index}`, index, (r) => {
    const type = ENTRY_TYPES[r.u8()];
    if (type === undefined) throw new StorageCorruptError(`entry record at index ${index}: unknown entry type`, index);
    const idx = r.u64();
    const term = r.u64();
    const data = r.bytes(ENTRY_DATA_MAX_BYTES);
    if (idx !== index) throw new StorageCorruptError(`entry record under key ${index} holds index ${idx}`, index);
    return { index: idx, term, type, data };
  });
}

export function encodeHardState(hs: HardState): Uint8Array {
  const w = new Writer(RecordKind.HardState, 8 + 8 + 3 + 64);
  w.u64(hs.term, 'term');
  w.u64(hs.commit, 'commit');
  w.u8(hs.vote === null ? 0 : 1);
  if (hs.vote !== null) w.str(hs.vote, 'vote');
  return w.finish();
}

export function decodeHardState(buf: Uint8Array): HardState {
  return decode(buf, RecordKind.HardState, 'hard state record', undefined, (r) => {
    const term = r.u64();
    const commit = r.u64();
    const hasVote = r.u8();
    if (hasVote > 1) throw new StorageCorruptError('hard state record: bad vote flag');
    const vote = hasVote ? r.str() : null;
    return { term, vote, commit };
  });
}

function writeIds(w: Writer, ids: readonly string[], what: string): void {
  if (ids.length > CONF_MEMBERS_MAX_COUNT) throw new StorageInvalidArgumentError(`${what}: ${ids.length} members, over ${CONF_MEMBERS_MAX_COUNT}`);
  w.u16(ids.length);
  for (const id of ids) w.str(id, what);
}

function readIds(r: Reader): string[] {
  const n = r.u16();
  if (n > CONF_MEMBERS_MAX_COUNT) throw new StorageCorruptError(`conf state: ${n} members`);
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(r.str());
  return ids;
}

function writeMeta(w: Writer, m: SnapshotMeta): void {
  w.u64(m.index, 'snapshot index');
  w.u64(m.term, 'snapshot term');
  writeIds(w, m.conf.voters, 'voters');
  writeIds(w, m.conf.learners, 'learners');
  writeIds(w, m.conf.votersOutgoing, 'outgoing voters');
}

function readMeta(r: Reader): SnapshotMeta {
  const index = r.u64();
  const term = r.u64();
  const conf: ConfState = { voters: readIds(r), learners: readIds(r), votersOutgoing: readIds(r) };
  return { index, term, conf };
}

export function encodeSnapshot(s: Snapshot): Uint8Array {
  const w = new Writer(RecordKind.Snapshot, 64 + s.data.byteLength);
  writeMeta(w, s.meta);
  w.bytes(s.data, SNAPSHOT_DATA_MAX_BYTES, 'snapshot data');
  return w.finish();
}

export function decodeSnapshot(buf: Uint8Array): Snapshot {
  return decode(buf, RecordKind.Snapshot, 'snapshot record', undefined, (r) => {
    const meta = readMeta(r);
    return { meta, data: r.bytes(SNAPSHOT_DATA_MAX_BYTES) };
  });
}

export interface AppliedState {
  /** Index of the last log entry the state machine applied (0: nothing applied). */
  readonly index: number;
  readonly data: Uint8Array;
}

export function encodeApplied(a: AppliedState): Uint8Array {
  const w = new Writer(RecordKind.Applied, 12 + a.data.byteLength);
  w.u64(a.index, 'applied index');
  w.bytes(a.data, SNAPSHOT_DATA_MAX_BYTES, 'applied state');
  return w.finish();
}

export function decodeApplied(buf: Uint8Array): AppliedState {
  return decode(buf, RecordKind.Applied, 'applied state record', undefined, (r) => ({ index: r.u64(), data: r.bytes(SNAPSHOT_DATA_MAX_BYTES) }));
}

const MAGIC = utf8.encode('NCRS');

/** The meta record: magic + layout format version, so a foreign or newer database is refused, not misread. */
export function encodeMeta(formatVersion: number): Uint8Array {
  const w = new Writer(RecordKind.Meta, 8);
  for (const b of MAGIC) w.u8(b);
  w.u32(formatVersion);
  return w.finish();
}

export function decodeMeta(buf: Uint8Array): { formatVersion: number } {
  return decode(buf, RecordKind.Meta, 'format record', undefined, (r) => {
    for (const b of MAGIC) if (r.u8() !== b) throw new StorageCorruptError('format record: bad magic');
    return { formatVersion: r.u32() };
  });
}
