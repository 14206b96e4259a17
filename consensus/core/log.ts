// The in-memory Raft log: entries after the latest snapshot, commit index, and the cursors that feed Ready.
import type { ConfState, Entry, Snapshot, SnapshotMeta } from '../types.js';
import { RaftInvariantError } from './errors.js';
import type { ConfChangeRecord } from './messages.js';

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

export function encodeConfRecord(record: ConfChangeRecord): Uint8Array {
  return textEncoder.encode(JSON.stringify(record));
}

export function decodeConfRecord(data: Uint8Array): ConfChangeRecord {
  const parsed: unknown = JSON.parse(textDecoder.decode(data));
  if (typeof parsed !== 'object' || parsed === null || !('conf' in parsed) || !('change' in parsed)) {
    throw new RaftInvariantError('conf entry without a conf state');
  }
  return parsed as ConfChangeRecord;
}

export class RaftLog {
  /** Index and term of the last entry covered by the snapshot (0/0 when none). */
  snapIndex: number;
  snapTerm: number;
  snapConf: ConfState;
  /** Latest snapshot with data, served to followers that fell behind the compaction point. */
  snapshot: Snapshot | null;
  /** entries[i].index === snapIndex + 1 + i */
  private ents: Entry[];
  /** Indexes of `conf` entries in `ents`, ascending: the configuration is the latest of these (applied on append). */
  private confIndexes: number[] = [];
  committed: number;
  /** First index not yet handed out in a Ready (entries from here on must still be persisted). */
  unstable: number;
  /** Highest index handed out as committed (or installed by snapshot) in a Ready. */
  handedApplied: number;

  constructor(snapshot: Snapshot | null, bootstrapConf: ConfState, entries: readonly Entry[], commit: number, applied: number) {
    this.snapIndex = snapshot?.meta.index ?? 0;
    this.snapTerm = snapshot?.meta.term ?? 0;
    this.snapConf = snapshot?.meta.conf ?? bootstrapConf;
    this.snapshot = snapshot;
    this.ents = entries.filter((e) => e.index > this.snapIndex);
    this.ents.forEach((e, i) => {
      if (e.index !== this.snapIndex + 1 + i) throw new RaftInvariantError(`persisted log has a gap at index ${e.index}`);
      if (e.type === 'conf') this.confIndexes.push(e.index);
    });
    this.committed = Math.max(commit, this.snapIndex);
    if (this.committed > this.lastIndex()) throw new RaftInvariantError(`commit ${commit} beyond last index ${this.lastIndex()}`);
    this.unstable = this.lastIndex() + 1;
    this.handedApplied = Math.min(Math.max(applied, this.snapIndex), this.committed);
  }

  firstIndex(): number {
    return this.snapIndex + 1;
  }

  lastIndex(): number {
    return this.snapIndex + this.ents.length;
  }

  lastTerm(): number {
    return this.term(this.lastIndex()) ?? 0;
  }

  /** Term of entry `i`, or undefined when it is compacted away or beyond the end. */
  term(i: number): number | undefined {
    if (i === this.snapIndex) return this.snapTerm;
    if (i < this.snapIndex || i > this.lastIndex()) return undefined;
    return this.ents[i - this.snapIndex - 1]?.term;
  }

  entry(i: number): Entry | undefined {
    return this.ents[i - this.snapIndex - 1];
  }

  matchTerm(i: number, t: number): boolean {
    return this.term(i) === t;
  }

  /** §5.4.1: a candidate's log is at least as up to date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /** Entries [lo, hi) at most maxBytes of data, but at least one when lo < hi. */
  slice(lo: number, hi: number, maxBytes = Infinity): Entry[] {
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = Math.max(lo, this.firstIndex()); i < hi && i <= this.lastIndex(); i++) {
      const e = this.entry(i);
      if (e === undefined) break;
      bytes += e.data.length;
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(e);
    }
    return out;
  }

  /** Appends entries, first truncating any entries at or after entries[0].index. */
  append(entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    if (first.index <= this.committed) throw new RaftInvariantError(`truncating committed entry ${first.index} (commit ${this.committed})`);
    if (first.index > this.lastIndex() + 1) throw new RaftInvariantError(`append at ${first.index} leaves a gap after ${this.lastIndex()}`);
    this.ents.length = first.index - this.snapIndex - 1;
    while (this.confIndexes.length > 0 && (this.confIndexes[this.confIndexes.length - 1] ?? 0) >= first.index) this.confIndexes.pop();
    for (const e of entries) {
      this.ents.push(e);
      if (e.type === 'conf') this.confIndexes.push(e.index);
    }
    this.unstable = Math.min(this.unstable, first.index);
  }

  /** First entry whose term differs from ours (or that we lack); 0 when all are present. */
  findConflict(entries: readonly Entry[]): number {
    for (const e of entries) if (!this.matchTerm(e.index, e.term)) return e.index;
    return 0;
  }

  /** Largest index <= index whose term <= term: where our log may agree with a log whose entry at index has `term`. */
  findConflictByTerm(index: number, term: number): number {
    for (let i = Math.min(index, this.lastIndex()); i > this.snapIndex; i--) {
      if ((this.term(i) ?? 0) <= term) return i;
    }
    return this.snapIndex;
  }

  commitTo(index: number): boolean {
    if (index <= this.committed) return false;
    if (index > this.lastIndex()) throw new RaftInvariantError(`commit ${index} beyond last index ${this.lastIndex()}`);
    this.committed = index;
    return true;
  }

  /** Index of the latest conf entry in the log (0 when the configuration comes from the snapshot). */
  lastConfIndex(): number {
    return this.confIndexes[this.confIndexes.length - 1] ?? 0;
  }

  /** Configuration in force at `index`: the latest conf entry at or before it, else the snapshot's. */
  confAt(index: number): ConfState {
    for (let k = this.confIndexes.length - 1; k >= 0; k--) {
      const ci = this.confIndexes[k] ?? 0;
      if (ci <= index) {
        const e = this.entry(ci);
        if (e === undefined) throw new RaftInvariantError(`conf entry ${ci} missing`);
        return decodeConfRecord(e.data).conf;
      }
    }
    return this.snapConf;
  }

  /** Replaces the whole log with a received snapshot. */
  restore(snapshot: Snapshot): void {
    this.snapIndex = snapshot.meta.index;
    this.snapTerm = snapshot.meta.term;
    this.snapConf = snapshot.meta.conf;
    this.snapshot = snapshot;
    this.ents = [];
    this.confIndexes = [];
    this.committed = snapshot.meta.index;
    this.unstable = snapshot.meta.index + 1;
    this.handedApplied = snapshot.meta.index;
  }

  /** Drops entries up to meta.index after the state machine snapshotted there. */
  compact(meta: SnapshotMeta, data: Uint8Array): Snapshot {
    const snapshot: Snapshot = { meta, data };
    this.ents = this.ents.slice(meta.index - this.snapIndex);
    this.confIndexes = this.confIndexes.filter((i) => i > meta.index);
    this.snapIndex = meta.index;
    this.snapTerm = meta.term;
    this.snapConf = meta.conf;
    this.snapshot = snapshot;
    return snapshot;
  }
}
