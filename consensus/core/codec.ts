// Binary codec for Raft messages (the payload of one length-prefixed frame on /novacron/raft/1.0.0).
// decodeMessage validates structure and the invariants the core relies on, throwing CodecError, so a malformed or
// hostile peer message is dropped at the transport and never reaches (or crashes) the core.
import type { ConfState, Entry, SnapshotMeta } from '../types.js';
import { CodecError } from './errors.js';
import type { Message, MessageType } from './messages.js';

export const CODEC_VERSION = 1;
/** Upper bound on one encoded message; larger frames are rejected before parsing. */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
export const MAX_NODE_ID_BYTES = 256;
export const MAX_CTX_BYTES = 1024;
export const MAX_ENTRIES_PER_MSG = 65536;
export const MAX_CONF_MEMBERS = 1024;

/** Wire tag of each message type; also mixed into the simulator's trace hash. */
export const TYPE_TAGS: Record<MessageType, number> = {
  vote: 1,
  voteResp: 2,
  preVote: 3,
  preVoteResp: 4,
  app: 5,
  appResp: 6,
  heartbeat: 7,
  heartbeatResp: 8,
  snap: 9,
  snapResp: 10,
  timeoutNow: 11,
  readIndex: 12,
  readIndexResp: 13,
};
const TAG_TYPES = new Map<number, MessageType>(Object.entries(TYPE_TAGS).map(([k, v]) => [v, k as MessageType]));
const ENTRY_TYPES: readonly Entry['type'][] = ['normal', 'conf', 'empty'];

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

class Writer {
  private buf = new Uint8Array(256);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  /** Unsigned LEB128 varint for integers up to 2^53 - 1 (arithmetic, not bitwise, to go past 32 bits). */
  uint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new CodecError(`cannot encode ${n} as an unsigned integer`);
    let v = n;
    while (v >= 0x80) {
      this.byte((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.byte(v);
  }

  bool(b: boolean): void {
    this.byte(b ? 1 : 0);
  }

  bytes(data: Uint8Array): void {
    this.uint(data.length);
    this.reserve(data.length);
    this.buf.set(data, this.len);
    this.len += data.length;
  }

  string(s: string): void {
    this.bytes(utf8Encoder.encode(s));
  }

  optString(s: string | null): void {
    if (s === null) this.byte(0);
    else {
      this.byte(1);
      this.string(s);
    }
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

class Reader {
  private pos = 0;
  constructor(private readonly buf: Uint8Array) {}

  byte(): number {
    const b = this.buf[this.pos];
    if (b === undefined) throw new CodecError(`message truncated at byte ${this.pos}`);
    this.pos++;
    return b;
  }

  uint(what: string): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.byte();
      result += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(result)) throw new CodecError(`${what} is out of range`);
        return result;
      }
      scale *= 0x80;
    }
    throw new CodecError(`${what} is out of range`);
  }

  bool(what: string): boolean {
    const b = this.byte();
    if (b > 1) throw new CodecError(`${what} must be 0 or 1, got ${b}`);
    return b === 1;
  }

  bytes(what: string, max: number): Uint8Array {
    const n = this.uint(`${what} length`);
    if (n > max) throw new CodecError(`${what} is ${n} bytes, more than ${max}`);
    if (this.pos + n > this.buf.length) throw new CodecError(`${what} runs past the end of the message`);
    const out = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  string(what: string, max: number): string {
    const raw = this.bytes(what, max);
    try {
      return utf8Decoder.decode(raw);
    } catch {
      throw new CodecError(`${what} is not valid UTF-8`);
    }
  }

  nodeId(what: string): string {
    const s = this.string(what, MAX_NODE_ID_BYTES);
    if (s.length === 0) throw new CodecError(`${what} is empty`);
    return s;
  }

  optString(what: string, max: number): string | null {
    const tag = this.byte();
    if (tag === 0) return null;
    if (tag !== 1) throw new CodecError(`${what} has bad presence tag ${tag}`);
    return this.string(what, max);
  }

  end(): void {
    if (this.pos !== this.buf.length) throw new CodecError(`${this.buf.length - this.pos} trailing bytes after the message`);
  }
}

function writeIds(w: Writer, ids: readonly string[]): void {
  w.uint(ids.length);
  for (const id of ids) w.string(id);
}

function readIds(r: Reader, what: string): string[] {
  const n = r.uint(`${what} count`);
  if (n > MAX_CONF_MEMBERS) throw new CodecError(`${what} has ${n} members, more than ${MAX_CONF_MEMBERS}`);
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(r.nodeId(what));
  return ids;
}

function writeMeta(w: Writer, meta: SnapshotMeta): void {
  w.uint(meta.index);
  w.uint(meta.term);
  writeIds(w, meta.conf.voters);
  writeIds(w, meta.conf.learners);
  writeIds(w, meta.conf.votersOutgoing);
}

function readMeta(r: Reader): SnapshotMeta {
  const index = r.uint('snapshot index');
  const term = r.uint('snapshot term');
  const conf: ConfState = { voters: readIds(r, 'voters'), learners: readIds(r, 'learners'), votersOutgoing: readIds(r, 'outgoing voters') };
  return { index, term, conf };
}

export function encodeMessage(m: Message): Uint8Array {
  const w = new Writer();
  w.byte(CODEC_VERSION);
  w.byte(TYPE_TAGS[m.type]);
  w.string(m.from);
  w.string(m.to);
  w.uint(m.term);
  switch (m.type) {
    case 'vote':
    case 'preVote':
      w.uint(m.lastIndex);
      w.uint(m.lastTerm);
      w.bool(m.transfer);
      break;
    case 'voteResp':
    case 'preVoteResp':
      w.bool(m.reject);
      break;
    case 'app':
      w.uint(m.index);
      w.uint(m.logTerm);
      w.uint(m.commit);
      w.uint(m.entries.length);
      for (const e of m.entries) {
        w.uint(e.term);
        w.uint(e.index);
        w.byte(ENTRY_TYPES.indexOf(e.type));
        w.bytes(e.data);
      }
      break;
    case 'appResp':
      w.uint(m.index);
      w.bool(m.reject);
      w.uint(m.rejectHint);
      w.uint(m.logTerm);
      break;
    case 'heartbeat':
      w.uint(m.commit);
      w.optString(m.ctx);
      break;
    case 'heartbeatResp':
      w.optString(m.ctx);
      break;
    case 'snap':
      writeMeta(w, m.meta);
      w.uint(m.offset);
      w.uint(m.totalBytes);
      w.bytes(m.data);
      break;
    case 'snapResp':
      w.uint(m.index);
      w.uint(m.offset);
      break;
    case 'timeoutNow':
      break;
    case 'readIndex':
      w.string(m.ctx);
      break;
    case 'readIndexResp':
      w.string(m.ctx);
      w.uint(m.index);
      break;
  }
  return w.finish();
}

/** Decodes and validates one message; throws CodecError with a message naming the first problem found. */
export function decodeMessage(bytes: Uint8Array): Message {
  if (bytes.length > MAX_MESSAGE_BYTES) throw new CodecError(`message of ${bytes.length} bytes exceeds ${MAX_MESSAGE_BYTES}`);
  const r = new Reader(bytes);
  const version = r.byte();
  if (version !== CODEC_VERSION) throw new CodecError(`unsupported codec version ${version}`);
  const tag = r.byte();
  const type = TAG_TYPES.get(tag);
  if (type === undefined) throw new CodecError(`unknown message type tag ${tag}`);
  const from = r.nodeId('from');
  const to = r.nodeId('to');
  const term = r.uint('term');
  const base = { from, to, term };
  let m: Message;
  switch (type) {
    case 'vote':
    case 'preVote':
      m = { ...base, type, lastIndex: r.uint('lastIndex'), lastTerm: r.uint('lastTerm'), transfer: r.bool('transfer') };
      if (m.lastTerm > term) throw new CodecError(`vote lastTerm ${m.lastTerm} exceeds term ${term}`);
      break;
    case 'voteResp':
    case 'preVoteResp':
      m = { ...base, type, reject: r.bool('reject') };
      break;
    case 'app': {
      const index = r.uint('index');
      const logTerm = r.uint('logTerm');
      const commit = r.uint('commit');
      const n = r.uint('entry count');
      if (n > MAX_ENTRIES_PER_MSG) throw new CodecError(`${n} entries exceed ${MAX_ENTRIES_PER_MSG}`);
      const entries: Entry[] = [];
      for (let i = 0; i < n; i++) {
        const eTerm = r.uint('entry term');
        const eIndex = r.uint('entry index');
        const eType = ENTRY_TYPES[r.byte()];
        if (eType === undefined) throw new CodecError(`entry ${eIndex} has an unknown type`);
        const data = r.bytes('entry data', MAX_MESSAGE_BYTES);
        // Log matching relies on these: contiguous after the probe point, terms never above the leader's or below logTerm.
        if (eIndex !== index + 1 + i) throw new CodecError(`entry ${i} has index ${eIndex}, expected ${index + 1 + i}`);
        if (eTerm > term || eTerm < logTerm) throw new CodecError(`entry ${eIndex} has term ${eTerm} outside [${logTerm}, ${term}]`);
        if (i > 0 && eTerm < (entries[i - 1]?.term ?? 0)) throw new CodecError(`entry ${eIndex} has a lower term than its predecessor`);
        entries.push({ term: eTerm, index: eIndex, type: eType, data });
      }
      if (logTerm > term) throw new CodecError(`logTerm ${logTerm} exceeds term ${term}`);
      m = { ...base, type, index, logTerm, commit, entries };
      break;
    }
    case 'appResp':
      m = { ...base, type, index: r.uint('index'), reject: r.bool('reject'), rejectHint: r.uint('rejectHint'), logTerm: r.uint('logTerm') };
      break;
    case 'heartbeat':
      m = { ...base, type, commit: r.uint('commit'), ctx: r.optString('ctx', MAX_CTX_BYTES) };
      break;
    case 'heartbeatResp':
      m = { ...base, type, ctx: r.optString('ctx', MAX_CTX_BYTES) };
      break;
    case 'snap': {
      const meta = readMeta(r);
      const offset = r.uint('offset');
      const totalBytes = r.uint('totalBytes');
      const data = r.bytes('snapshot chunk', MAX_MESSAGE_BYTES);
      if (offset + data.length > totalBytes) throw new CodecError(`chunk [${offset}, ${offset + data.length}) runs past totalBytes ${totalBytes}`);
      if (meta.term > term) throw new CodecError(`snapshot term ${meta.term} exceeds term ${term}`);
      if (meta.conf.voters.length === 0) throw new CodecError('snapshot configuration has no voters');
      m = { ...base, type, meta, offset, totalBytes, data };
      break;
    }
    case 'snapResp':
      m = { ...base, type, index: r.uint('index'), offset: r.uint('offset') };
      break;
    case 'timeoutNow':
      m = { ...base, type };
      break;
    case 'readIndex':
      m = { ...base, type, ctx: r.string('ctx', MAX_CTX_BYTES) };
      break;
    case 'readIndexResp':
      m = { ...base, type, ctx: r.string('ctx', MAX_CTX_BYTES), index: r.uint('index') };
      break;
  }
  r.end();
  if (from === to) throw new CodecError('message from a node to itself');
  return m;
}
