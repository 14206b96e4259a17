// A small deterministic key-value state machine for Raft driver tests and benchmarks.
import type { StateMachine } from '../../consensus/driver.js';

export type KvCommand = { op: 'put'; key: string; value: string } | { op: 'append'; key: string; value: string };

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeKv(cmd: KvCommand): Uint8Array {
  return enc.encode(JSON.stringify(cmd));
}

export class KvMachine implements StateMachine {
  data = new Map<string, string>();
  appliedIndex = 0;

  apply(command: Uint8Array, index: number): unknown {
    const cmd = JSON.parse(dec.decode(command)) as KvCommand;
    const prev = this.data.get(cmd.key) ?? '';
    this.data.set(cmd.key, cmd.op === 'put' ? cmd.value : prev + cmd.value);
    this.appliedIndex = index;
    return { index, value: this.data.get(cmd.key) };
  }

  snapshot(): Uint8Array {
    return enc.encode(JSON.stringify([...this.data]));
  }

  restore(data: Uint8Array, index: number): void {
    this.data = new Map(JSON.parse(dec.decode(data)) as [string, string][]);
    this.appliedIndex = index;
  }
}
