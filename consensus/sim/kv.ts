// The simulator's replicated state machine: a string key-value store with per-client de-duplication, so a
// retried put/append takes effect at most once (the standard session table of Raft §8).
import type { KvInput } from './linearizability.js';

export interface KvCommand {
  readonly client: number;
  readonly seq: number;
  readonly op: KvInput;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeCommand(cmd: KvCommand): Uint8Array {
  return enc.encode(JSON.stringify(cmd));
}

export class KvStore {
  readonly data = new Map<string, string>();
  /** Highest sequence number applied per client. */
  readonly lastSeq = new Map<number, number>();

  applyCommand(bytes: Uint8Array): void {
    const cmd = JSON.parse(dec.decode(bytes)) as KvCommand;
    if ((this.lastSeq.get(cmd.client) ?? 0) >= cmd.seq) return;
    this.lastSeq.set(cmd.client, cmd.seq);
    const { op } = cmd;
    if (op.op === 'put') this.data.set(op.key, op.value);
    else if (op.op === 'append') this.data.set(op.key, (this.data.get(op.key) ?? '') + op.value);
  }

  get(key: string): string {
    return this.data.get(key) ?? '';
  }

  snapshot(): Uint8Array {
    return enc.encode(JSON.stringify({ data: [...this.data], last: [...this.lastSeq] }));
  }

  static restore(bytes: Uint8Array): KvStore {
    const kv = new KvStore();
    if (bytes.length === 0) return kv;
    const parsed = JSON.parse(dec.decode(bytes)) as { data: [string, string][]; last: [number, number][] };
    for (const [k, v] of parsed.data) kv.data.set(k, v);
    for (const [c, s] of parsed.last) kv.lastSeq.set(c, s);
    return kv;
  }
}
