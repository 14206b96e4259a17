// A tiny synchronous network of Raft cores for unit tests: Ready is "persisted" to an in-memory map, then its
// messages are queued; tests decide what gets delivered, cut, dropped or intercepted.
import type { ConfState, Entry, HardState, NodeId, Snapshot } from '../types.js';
import type { Message } from '../core/messages.js';
import { Raft } from '../core/raft.js';
import type { RaftConfig, Ready } from '../core/raft.js';
import type { ReadState } from '../core/messages.js';
import { Xoshiro128 } from '../core/random.js';

export interface Durable {
  hardState: HardState;
  snapshot: Snapshot | null;
  entries: Entry[];
}

export interface HarnessNode {
  raft: Raft;
  durable: Durable;
  applied: Entry[];
  readStates: ReadState[];
  /** Every Ready handled, for tests that check ordering. */
  readies: Ready[];
  installedSnapshots: Snapshot[];
}

export type HarnessOptions = Partial<Omit<RaftConfig, 'id' | 'random'>> & { seed?: number; learners?: NodeId[] };

/** Returns false to drop a message. */
export type MessageFilter = (m: Message) => boolean;

export class Harness {
  readonly nodes = new Map<NodeId, HarnessNode>();
  queue: Message[] = [];
  /** Every message ever sent (after persisting), in order. */
  readonly sent: Message[] = [];
  private readonly cut = new Set<string>();
  private readonly down = new Set<NodeId>();
  filter: MessageFilter = () => true;
  private readonly options: HarnessOptions;
  private seedCounter: number;

  constructor(voters: NodeId[], options: HarnessOptions = {}, initial?: Map<NodeId, Durable>) {
    this.options = options;
    this.seedCounter = options.seed ?? 1;
    const conf: ConfState = { voters, learners: options.learners ?? [], votersOutgoing: [] };
    for (const id of [...voters, ...(options.learners ?? [])]) {
      const durable = initial?.get(id) ?? { hardState: { term: 0, vote: null, commit: 0 }, snapshot: bootstrapSnapshot(conf), entries: [] };
      this.nodes.set(id, this.makeNode(id, durable));
    }
  }

  /** Adds a node that knows nothing (empty configuration), as a joining server would start. */
  addBlankNode(id: NodeId): HarnessNode {
    const node = this.makeNode(id, { hardState: { term: 0, vote: null, commit: 0 }, snapshot: null, entries: [] });
    this.nodes.set(id, node);
    return node;
  }

  private makeNode(id: NodeId, durable: Durable): HarnessNode {
    const { seed: _seed, learners: _learners, ...rest } = this.options;
    const raft = new Raft(
      { id, random: new Xoshiro128(this.seedCounter++), ...rest },
      { hardState: durable.hardState, snapshot: durable.snapshot, entries: durable.entries, conf: { voters: [], learners: [], votersOutgoing: [] } },
    );
    return { raft, durable, applied: [], readStates: [], readies: [], installedSnapshots: [] };
  }

  node(id: NodeId): HarnessNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  raft(id: NodeId): Raft {
    return this.node(id).raft;
  }

  /** Persist, then send, then apply: the order Ready demands. */
  processReady(id: NodeId): boolean {
    const n = this.node(id);
    if (this.down.has(id) || !n.raft.hasReady()) return false;
    const rd = n.raft.ready();
    n.readies.push(rd);
    if (rd.snapshot) {
      n.durable.snapshot = rd.snapshot;
      n.durable.entries = [];
      n.installedSnapshots.push(rd.snapshot);
    }
    if (rd.hardState) n.durable.hardState = rd.hardState;
    const first = rd.entries[0];
    if (first) n.durable.entries = [...n.durable.entries.filter((e) => e.index < first.index), ...rd.entries];
    for (const m of rd.messages) {
      this.sent.push(m);
      this.queue.push(m);
    }
    n.applied.push(...rd.committedEntries);
    n.readStates.push(...rd.readStates);
    n.raft.advance(rd);
    return true;
  }

  processAllReady(): void {
    for (const id of this.nodes.keys()) this.processReady(id);
  }

  private deliverable(m: Message): boolean {
    return !this.down.has(m.to) && !this.cut.has(`${m.from}>${m.to}`) && this.nodes.has(m.to) && this.filter(m);
  }

  /** Delivers queued messages until nothing moves. Returns the number delivered. */
  stabilize(maxRounds = 1000): number {
    let delivered = 0;
    for (let round = 0; round < maxRounds; round++) {
      this.processAllReady();
      if (this.queue.length === 0) return delivered;
      const batch = this.queue;
      this.queue = [];
      for (const m of batch) {
        if (!this.deliverable(m)) continue;
        this.node(m.to).raft.step(m);
        delivered++;
      }
    }
    throw new Error('network did not stabilize');
  }

  /** Delivers exactly the queued messages (one hop), not the answers they cause. */
  deliverOnce(): void {
    this.processAllReady();
    const batch = this.queue;
    this.queue = [];
    for (const m of batch) if (this.deliverable(m)) this.node(m.to).raft.step(m);
  }

  tick(id: NodeId, times = 1): void {
    for (let i = 0; i < times; i++) if (!this.down.has(id)) this.node(id).raft.tick();
  }

  tickAll(times = 1): void {
    for (let i = 0; i < times; i++) for (const id of this.nodes.keys()) this.tick(id);
  }

  /** Ticks `id` alone until it campaigns, then lets the election run. */
  elect(id: NodeId): void {
    const r = this.raft(id);
    for (let i = 0; i < 100 && r.status.role === 'follower'; i++) r.tick();
    this.stabilize();
  }

  leader(): NodeId | null {
    let found: NodeId | null = null;
    let bestTerm = -1;
    for (const [id, n] of this.nodes) {
      if (this.down.has(id)) continue;
      const s = n.raft.status;
      if (s.role === 'leader' && s.term > bestTerm) {
        found = id;
        bestTerm = s.term;
      }
    }
    return found;
  }

  cutLink(a: NodeId, b: NodeId): void {
    this.cut.add(`${a}>${b}`);
    this.cut.add(`${b}>${a}`);
  }

  isolate(id: NodeId): void {
    for (const other of this.nodes.keys()) if (other !== id) this.cutLink(id, other);
  }

  heal(): void {
    this.cut.clear();
  }

  /** Crash: volatile state gone, durable state kept; messages to it are lost while down. */
  crash(id: NodeId): void {
    this.down.add(id);
    this.queue = this.queue.filter((m) => m.from !== id && m.to !== id);
  }

  restart(id: NodeId): void {
    const old = this.node(id);
    this.down.delete(id);
    const fresh = this.makeNode(id, old.durable);
    this.nodes.set(id, fresh);
  }

  propose(id: NodeId, text: string): { index: number; term: number } {
    return this.raft(id).propose(new TextEncoder().encode(text));
  }
}

/** A bootstrap snapshot at index 0 carries the initial configuration, as a real first start would persist it. */
export function bootstrapSnapshot(conf: ConfState): Snapshot {
  return { meta: { index: 0, term: 0, conf }, data: new Uint8Array(0) };
}

export function entryText(e: Entry): string {
  return new TextDecoder().decode(e.data);
}
