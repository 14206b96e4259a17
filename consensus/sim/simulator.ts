// Deterministic Raft simulator: N cores on a seeded faulty network with crashes that lose unsynced writes,
// compaction, membership changes and leader transfers; safety invariants are checked after every step and the
// client history is checked for linearizability. One seed = one exact, replayable run.
import type { Entry, HardState, NodeId, Snapshot } from '../types.js';
import { TYPE_TAGS, decodeMessage, encodeMessage } from '../core/codec.js';
import { ConfChangeInvalidError, ConfChangePendingError, LeaderTransferError, NotLeaderError, ProposalDroppedError } from '../core/errors.js';
import type { ConfChange, Message } from '../core/messages.js';
import { Raft } from '../core/raft.js';
import type { UnsafeTestFlags } from '../core/raft.js';
import { Xoshiro128 } from '../core/random.js';
import { KvStore, encodeCommand } from './kv.js';
import { checkOperations, kvModel } from './linearizability.js';
import type { CheckResult, KvInput, KvOutput, Operation } from './linearizability.js';

export interface SimOptions {
  readonly seed: number;
  /** Rounds with faults; a fault-free tail follows so clients can finish. */
  readonly faultRounds?: number;
  readonly quietRounds?: number;
  readonly unsafeTestFlags?: UnsafeTestFlags;
  /** Linearizability search budget per seed. */
  readonly checkTimeoutMs?: number;
}

export const DEFAULT_FAULT_ROUNDS = 300;
export const DEFAULT_QUIET_ROUNDS = 120;
export const DEFAULT_CHECK_TIMEOUT_MS = 2000;
const ELECTION_TIMEOUT_TICKS = 10;
const CLIENTS = 3;
const KEYS = ['x', 'y', 'z'];
const ATTEMPT_TIMEOUT_ROUNDS = 25;
const OP_TIMEOUT_ROUNDS = 100;
const MAX_EXTRA_DELAY_ROUNDS = 4;
const MAX_DOWN_NODES = 2;

const P_DROP = 0.04;
const P_DUPLICATE = 0.02;
const P_DELAY = 0.15;
const P_PARTITION = 0.012;
const P_ASYMMETRIC = 0.008;
/** Cut the current leader off alone: the classic way to leave divergent uncommitted tails behind. */
const P_ISOLATE_LEADER = 0.015;
const P_HEAL = 0.04;
const P_CRASH = 0.012;
const P_RESTART = 0.06;
const P_CRASH_IN_READY = 0.002;
const P_COMPACT = 0.03;
const P_CONF_CHANGE = 0.02;
const P_TRANSFER = 0.006;
const P_CLIENT_START = 0.3;

export interface FaultCounts {
  drop: number;
  duplicate: number;
  reorder: number;
  delay: number;
  partition: number;
  asymmetricPartition: number;
  heal: number;
  crash: number;
  crashInReady: number;
  restart: number;
  snapshot: number;
  snapshotInstalled: number;
  confChange: number;
  leaderTransfer: number;
  leaderChange: number;
}

export function emptyFaults(): FaultCounts {
  return {
    drop: 0,
    duplicate: 0,
    reorder: 0,
    delay: 0,
    partition: 0,
    asymmetricPartition: 0,
    heal: 0,
    crash: 0,
    crashInReady: 0,
    restart: 0,
    snapshot: 0,
    snapshotInstalled: 0,
    confChange: 0,
    leaderTransfer: 0,
    leaderChange: 0,
  };
}

export interface SimResult {
  readonly seed: number;
  readonly nodes: number;
  readonly traceHash: string;
  readonly faults: FaultCounts;
  readonly violations: string[];
  readonly linearizability: CheckResult;
  readonly ops: number;
  readonly indeterminateOps: number;
  readonly steps: number;
  readonly commitIndex: number;
}

interface Durable {
  hardState: HardState;
  snapshot: Snapshot | null;
  entries: Entry[];
}

interface SimNode {
  readonly id: NodeId;
  durable: Durable;
  raft: Raft | null;
  kv: KvStore;
  readIndexes: Map<string, number>;
  /** Commit index seen in this incarnation (must never go down). */
  commitSeen: number;
  checkedCommit: number;
  downSince: number;
}

interface PendingOp {
  readonly client: number;
  readonly seq: number;
  readonly input: KvInput;
  readonly call: number;
  readonly startRound: number;
  target: NodeId;
  submitted: boolean;
  attemptRound: number;
  ctx: string | null;
  attempt: number;
}

class SafetyViolation extends Error {
  override readonly name = 'SafetyViolation';
}

/** FNV-1a style mixing of 32-bit values into the running trace hash. */
class TraceHash {
  private h = 0x811c9dc5;
  mix(n: number): void {
    this.h = Math.imul(this.h ^ (n >>> 0), 0x01000193) >>> 0;
    this.h = Math.imul(this.h ^ ((n / 4294967296) >>> 0), 0x01000193) >>> 0;
  }
  str(s: string): void {
    for (let i = 0; i < s.length; i++) this.mix(s.charCodeAt(i));
  }
  hex(): string {
    return this.h.toString(16).padStart(8, '0');
  }
}


export class Simulation {
  private readonly rng: Xoshiro128;
  private readonly netRng: Xoshiro128;
  private readonly faultRng: Xoshiro128;
  private readonly clientRng: Xoshiro128;
  private readonly nodes = new Map<NodeId, SimNode>();
  private readonly ids: NodeId[];
  private readonly inFlight = new Map<number, Message[]>();
  private readonly blocked = new Set<string>();
  private round = 0;
  private clock = 0;
  private steps = 0;
  readonly faults = emptyFaults();
  private readonly trace = new TraceHash();
  private readonly violations: string[] = [];
  /** The committed entry at each index, as first observed anywhere. */
  private readonly committed = new Map<number, Entry>();
  private maxCommitted = 0;
  private readonly leaderOfTerm = new Map<number, NodeId>();
  private lastLeader: NodeId | null = null;
  private readonly history: Operation<KvInput, KvOutput>[] = [];
  private readonly pending: (PendingOp | null)[] = [];
  private readonly nextSeq: number[] = [];
  private knownLeader: NodeId | null = null;
  private readonly faultRounds: number;
  private readonly quietRounds: number;
  private readonly unsafe: UnsafeTestFlags | undefined;
  private readonly checkTimeoutMs: number;

  constructor(private readonly options: SimOptions) {
    this.rng = new Xoshiro128(options.seed);
    this.netRng = this.rng.fork();
    this.faultRng = this.rng.fork();
    this.clientRng = this.rng.fork();
    this.faultRounds = options.faultRounds ?? DEFAULT_FAULT_ROUNDS;
    this.quietRounds = options.quietRounds ?? DEFAULT_QUIET_ROUNDS;
    this.unsafe = options.unsafeTestFlags;
    this.checkTimeoutMs = options.checkTimeoutMs ?? DEFAULT_CHECK_TIMEOUT_MS;
    const voterCount = this.rng.chance(0.5) ? 3 : 5;
    const voters = Array.from({ length: voterCount }, (_, i) => `n${i + 1}`);
    // One spare node outside the configuration gives membership changes something to add.
    this.ids = [...voters, 'spare'];
    for (const id of this.ids) {
      const conf = { voters: id === 'spare' ? [] : voters, learners: [], votersOutgoing: [] };
      const durable: Durable = { hardState: { term: 0, vote: null, commit: 0 }, snapshot: { meta: { index: 0, term: 0, conf }, data: new Uint8Array(0) }, entries: [] };
      const node: SimNode = { id, durable, raft: null, kv: new KvStore(), readIndexes: new Map(), commitSeen: 0, checkedCommit: 0, downSince: 0 };
      this.nodes.set(id, node);
      this.boot(node);
    }
    for (let c = 0; c < CLIENTS; c++) {
      this.pending.push(null);
      this.nextSeq.push(1);
    }
  }

  private boot(node: SimNode): void {
    const d = node.durable;
    node.raft = new Raft(
      {
        id: node.id,
        random: this.rng.fork(),
        electionTimeoutTicks: ELECTION_TIMEOUT_TICKS,
        heartbeatIntervalTicks: 2,
        maxSizePerMsgBytes: 256,
        maxInflightMsgs: 4,
        snapshotChunkBytes: 64,
        maxUncommittedEntriesBytes: 4096,
        unsafeTestFlags: this.unsafe,
      },
      { hardState: d.hardState, snapshot: d.snapshot, entries: d.entries },
    );
    node.kv = KvStore.restore(d.snapshot?.data ?? new Uint8Array(0));
    node.readIndexes = new Map();
    node.commitSeen = d.hardState.commit;
    node.checkedCommit = d.snapshot?.meta.index ?? 0;
  }

  run(): SimResult {
    const total = this.faultRounds + this.quietRounds;
    try {
      for (this.round = 1; this.round <= total; this.round++) {
        const faulty = this.round <= this.faultRounds;
        if (faulty) this.injectFaults();
        else if (this.round === this.faultRounds + 1) this.calm();
        this.tickAll();
        this.deliver();
        this.processReadies(faulty);
        this.clients(faulty);
        this.checkLogMatching();
      }
    } catch (err) {
      this.violations.push(err instanceof SafetyViolation ? err.message : `core threw at round ${this.round}: ${String(err)}`);
    }
    // Ops still pending at the end never returned: indeterminate.
    for (const p of this.pending) if (p) this.finish(p, { value: '' }, Infinity);
    // A run that already broke an invariant is not worth searching: report its history as unchecked.
    let linearizability: CheckResult = 'unknown';
    if (this.violations.length === 0) {
      linearizability = checkOperations(kvModel, this.history, { timeoutMs: this.checkTimeoutMs });
      if (linearizability === 'illegal') this.violations.push('client history is not linearizable');
    }
    return {
      seed: this.options.seed,
      nodes: this.ids.length - 1,
      traceHash: this.trace.hex(),
      faults: this.faults,
      violations: this.violations,
      linearizability,
      ops: this.history.length,
      indeterminateOps: this.history.filter((o) => o.return === Infinity).length,
      steps: this.steps,
      commitIndex: this.maxCommitted,
    };
  }

  // -------------------------------------------------------------------------------------------------------
  // Faults

  private live(): SimNode[] {
    return this.ids.map((id) => this.node(id)).filter((n) => n.raft !== null);
  }

  private node(id: NodeId): SimNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`unknown node ${id}`);
    return n;
  }

  private injectFaults(): void {
    const r = this.faultRng;
    if (r.chance(P_PARTITION)) {
      this.blocked.clear();
      const side = new Set(this.ids.filter(() => r.chance(0.5)));
      for (const a of this.ids) for (const b of this.ids) if (side.has(a) !== side.has(b)) this.blocked.add(`${a}>${b}`);
      this.faults.partition++;
      this.trace.str(`partition:${[...side].join(',')}`);
    }
    const leaderNow = this.currentLeader();
    if (leaderNow && r.chance(P_ISOLATE_LEADER)) {
      for (const other of this.ids) {
        if (other === leaderNow.id) continue;
        this.blocked.add(`${leaderNow.id}>${other}`);
        this.blocked.add(`${other}>${leaderNow.id}`);
      }
      this.faults.partition++;
      this.trace.str(`isolate:${leaderNow.id}`);
    }
    if (r.chance(P_ASYMMETRIC)) {
      const a = r.pick(this.ids);
      const b = r.pick(this.ids);
      if (a !== b) {
        // One direction only: a hears b, b never hears a (a node that can send but not receive, or vice versa).
        this.blocked.add(`${a}>${b}`);
        this.faults.asymmetricPartition++;
        this.trace.str(`asym:${a}>${b}`);
      }
    }
    if (this.blocked.size > 0 && r.chance(P_HEAL)) {
      this.blocked.clear();
      this.faults.heal++;
      this.trace.str('heal');
    }
    const down = this.ids.filter((id) => this.node(id).raft === null);
    if (down.length < MAX_DOWN_NODES && r.chance(P_CRASH)) {
      const victim = r.pick(this.live());
      this.crash(victim, 'crash');
    }
    for (const id of down) {
      if (r.chance(P_RESTART)) this.restart(this.node(id));
    }
    for (const n of this.live()) {
      if (r.chance(P_COMPACT)) this.compact(n);
    }
    const leader = this.currentLeader();
    if (leader && r.chance(P_CONF_CHANGE)) this.changeMembership(leader);
    if (leader && r.chance(P_TRANSFER)) {
      const raft = leader.raft;
      const target = raft ? r.pick(raft.status.conf.voters) : leader.id;
      try {
        raft?.transferLeader(target);
        this.faults.leaderTransfer++;
        this.trace.str(`transfer:${target}`);
      } catch (err) {
        if (!(err instanceof LeaderTransferError || err instanceof NotLeaderError)) throw err;
      }
    }
  }

  private calm(): void {
    this.blocked.clear();
    for (const n of this.nodes.values()) if (n.raft === null) this.restart(n);
    this.trace.str('calm');
  }

  private crash(node: SimNode, kind: 'crash' | 'crashInReady'): void {
    node.raft = null;
    node.downSince = this.round;
    this.faults[kind]++;
    if (kind === 'crashInReady') this.faults.crash++;
    this.trace.str(`crash:${node.id}`);
    if (this.lastLeader === node.id) this.lastLeader = null;
  }

  private restart(node: SimNode): void {
    this.boot(node);
    this.faults.restart++;
    this.trace.str(`restart:${node.id}`);
  }

  private compact(node: SimNode): void {
    const raft = node.raft;
    if (!raft) return;
    const applied = raft.status.applied;
    if (applied - raft.snapshotPoint().index < 4) return;
    const snap = raft.compact(applied, node.kv.snapshot());
    // Storage compaction is one atomic synced write.
    node.durable.snapshot = snap;
    node.durable.entries = node.durable.entries.filter((e) => e.index > applied);
    this.faults.snapshot++;
    this.trace.str(`compact:${node.id}:${applied}`);
  }

  private changeMembership(leader: SimNode): void {
    const raft = leader.raft;
    if (!raft) return;
    const conf = raft.status.conf;
    const r = this.faultRng;
    const outside = this.ids.filter((id) => !conf.voters.includes(id) && !conf.learners.includes(id));
    const options: ConfChange[] = [];
    for (const id of outside) options.push({ type: 'addLearner', nodeId: id });
    for (const id of conf.learners) {
      options.push({ type: 'addVoter', nodeId: id });
      options.push({ type: 'removeNode', nodeId: id });
    }
    if (conf.voters.length > 3) {
      for (const id of conf.voters) {
        options.push({ type: 'removeNode', nodeId: id });
        options.push({ type: 'addLearner', nodeId: id });
      }
    }
    if (options.length === 0) return;
    const change = r.pick(options);
    try {
      raft.proposeConfChange(change);
      this.faults.confChange++;
      this.trace.str(`conf:${change.type}:${change.nodeId}`);
    } catch (err) {
      if (!(err instanceof ConfChangePendingError || err instanceof ConfChangeInvalidError || err instanceof ProposalDroppedError)) throw err;
    }
  }

  private currentLeader(): SimNode | null {
    let best: SimNode | null = null;
    let bestTerm = -1;
    for (const n of this.live()) {
      const s = n.raft?.status;
      if (s && s.role === 'leader' && s.term > bestTerm) {
        best = n;
        bestTerm = s.term;
      }
    }
    return best;
  }

  // -------------------------------------------------------------------------------------------------------
  // Network and nodes

  private tickAll(): void {
    for (const n of this.live()) {
      n.raft?.tick();
      this.steps++;
      this.checkNode(n);
    }
  }

  private send(m: Message, faulty: boolean): void {
    // Every message crosses the real codec, as it will on the libp2p transport.
    const wire = decodeMessage(encodeMessage(m));
    if (faulty && this.netRng.chance(P_DROP)) {
      this.faults.drop++;
      return;
    }
    const copies = faulty && this.netRng.chance(P_DUPLICATE) ? 2 : 1;
    if (copies === 2) this.faults.duplicate++;
    for (let c = 0; c < copies; c++) {
      let delay = 1;
      if (faulty && this.netRng.chance(P_DELAY)) {
        delay += 1 + this.netRng.int(MAX_EXTRA_DELAY_ROUNDS);
        this.faults.delay++;
        this.faults.reorder++;
      }
      const at = this.round + delay;
      const bucket = this.inFlight.get(at);
      if (bucket) bucket.push(wire);
      else this.inFlight.set(at, [wire]);
    }
  }

  private deliver(): void {
    const due = this.inFlight.get(this.round);
    if (!due) return;
    this.inFlight.delete(this.round);
    for (const m of due) {
      const to = this.nodes.get(m.to);
      if (!to?.raft || this.blocked.has(`${m.from}>${m.to}`)) continue;
      this.trace.mix(TYPE_TAGS[m.type]);
      this.trace.str(m.from);
      this.trace.str(m.to);
      this.trace.mix(m.term);
      if (m.type === 'app') this.trace.mix(m.index * 31 + m.entries.length);
      to.raft.step(m);
      this.steps++;
      this.checkNode(to);
    }
  }

  private processReadies(faulty: boolean): void {
    for (const n of this.live()) this.processReady(n, faulty);
  }

  private processReady(node: SimNode, faulty: boolean): void {
    const raft = node.raft;
    if (!raft?.hasReady()) return;
    const rd = raft.ready();
    this.steps++;
    // A crash while handling Ready: before the atomic write (nothing durable), or part-way through sending.
    const crashAt = faulty && this.faultRng.chance(P_CRASH_IN_READY) ? this.faultRng.int(3 + rd.messages.length) : -1;
    if (crashAt === 0) return this.crash(node, 'crashInReady');
    const d = node.durable;
    if (rd.snapshot) {
      d.snapshot = rd.snapshot;
      d.entries = [];
      node.kv = KvStore.restore(rd.snapshot.data);
      node.checkedCommit = Math.max(node.checkedCommit, rd.snapshot.meta.index);
      this.checkSnapshot(node, rd.snapshot);
      this.faults.snapshotInstalled++;
    }
    if (rd.hardState) {
      if (rd.hardState.commit < d.hardState.commit) this.violate(`${node.id} persisted commit went back from ${d.hardState.commit} to ${rd.hardState.commit}`);
      if (rd.hardState.term < d.hardState.term) this.violate(`${node.id} persisted term went back`);
      d.hardState = rd.hardState;
    }
    const first = rd.entries[0];
    if (first) {
      for (const e of rd.entries) {
        const c = e.index <= d.hardState.commit ? this.committed.get(e.index) : undefined;
        if (c && c.term !== e.term) this.violate(`${node.id} overwrote committed entry ${e.index}`);
      }
      d.entries = d.entries.filter((e) => e.index < first.index).concat(rd.entries);
    }
    if (crashAt === 1) return this.crash(node, 'crashInReady');
    for (let i = 0; i < rd.messages.length; i++) {
      if (crashAt === 2 + i) return this.crash(node, 'crashInReady');
      const m = rd.messages[i];
      if (m) this.send(m, faulty);
    }
    for (const e of rd.committedEntries) {
      this.recordCommitted(node, e, 'applied');
      if (e.type === 'normal') node.kv.applyCommand(e.data);
    }
    for (const rs of rd.readStates) node.readIndexes.set(rs.ctx, rs.index);
    raft.advance(rd);
    this.checkNode(node);
  }

  // -------------------------------------------------------------------------------------------------------
  // Invariants

  private violate(msg: string): never {
    throw new SafetyViolation(`seed ${this.options.seed} round ${this.round}: ${msg}`);
  }

  /** State machine safety: one entry per index, whoever commits or applies it. */
  private recordCommitted(node: SimNode, e: Entry, what: string): void {
    const prev = this.committed.get(e.index);
    if (!prev) {
      this.committed.set(e.index, e);
      if (e.index > this.maxCommitted) this.maxCommitted = e.index;
      return;
    }
    if (prev.term !== e.term || prev.type !== e.type || !sameBytes(prev.data, e.data)) {
      this.violate(`${node.id} ${what} index ${e.index} term ${e.term} but term ${prev.term} was committed there`);
    }
  }

  private checkSnapshot(node: SimNode, snap: Snapshot): void {
    const prev = this.committed.get(snap.meta.index);
    if (prev && prev.term !== snap.meta.term) this.violate(`${node.id} installed snapshot ${snap.meta.index}/${snap.meta.term} over committed term ${prev.term}`);
  }

  /** Per-node checks after each step: election safety, leader completeness, monotonic commit, committed entries. */
  private checkNode(node: SimNode): void {
    const raft = node.raft;
    if (!raft) return;
    const s = raft.status;
    if (s.commit < node.commitSeen) this.violate(`${node.id} commit went back from ${node.commitSeen} to ${s.commit}`);
    node.commitSeen = s.commit;
    for (let i = Math.max(node.checkedCommit, raft.snapshotPoint().index) + 1; i <= s.commit; i++) {
      const e = raft.entryAt(i);
      if (e) this.recordCommitted(node, e, 'committed');
    }
    node.checkedCommit = Math.max(node.checkedCommit, s.commit);
    if (s.role === 'leader') {
      const holder = this.leaderOfTerm.get(s.term);
      if (holder === undefined) {
        this.leaderOfTerm.set(s.term, node.id);
        this.faults.leaderChange++;
        this.trace.str(`leader:${node.id}:${s.term}`);
        this.checkLeaderCompleteness(node, raft);
      } else if (holder !== node.id) {
        this.violate(`two leaders in term ${s.term}: ${holder} and ${node.id}`);
      }
      this.lastLeader = node.id;
    }
  }

  /** §5.4: a new leader holds every entry committed before its election. */
  private checkLeaderCompleteness(node: SimNode, raft: Raft): void {
    const snapIndex = raft.snapshotPoint().index;
    for (const [i, e] of this.committed) {
      if (i <= snapIndex) continue;
      const t = raft.termAt(i);
      if (t !== e.term) this.violate(`leader ${node.id} (term ${raft.status.term}) lacks committed entry ${i} (term ${e.term}, has ${String(t)})`);
    }
  }

  /** Log matching: if two logs hold an entry with the same index and term, they agree on every entry up to it. */
  private checkLogMatching(): void {
    const live = this.live();
    for (let a = 0; a < live.length; a++) {
      for (let b = a + 1; b < live.length; b++) {
        const ra = live[a]?.raft;
        const rb = live[b]?.raft;
        if (!ra || !rb) continue;
        const lo = Math.max(ra.snapshotPoint().index, rb.snapshotPoint().index) + 1;
        let anchored = false;
        for (let i = Math.min(ra.status.lastIndex, rb.status.lastIndex); i >= lo; i--) {
          const ea = ra.entryAt(i);
          const eb = rb.entryAt(i);
          if (!ea || !eb) continue;
          if (!anchored) {
            anchored = ea.term === eb.term;
            if (anchored && !sameBytes(ea.data, eb.data)) this.violate(`log matching: ${ra.id} and ${rb.id} differ at ${i} with equal terms`);
            continue;
          }
          if (ea.term !== eb.term || !sameBytes(ea.data, eb.data)) {
            this.violate(`log matching: ${ra.id} and ${rb.id} agree on a later entry but differ at ${i} (terms ${ea.term}/${eb.term})`);
          }
        }
      }
    }
  }

  // -------------------------------------------------------------------------------------------------------
  // Clients: one op at a time each, retried across nodes, timed out as indeterminate.

  private clients(faulty: boolean): void {
    for (let c = 0; c < CLIENTS; c++) {
      const p = this.pending[c];
      if (p) this.drive(p, faulty);
      else if (this.clientRng.chance(P_CLIENT_START) && (faulty || this.round < this.faultRounds + this.quietRounds - OP_TIMEOUT_ROUNDS)) {
        this.startOp(c);
      }
    }
  }

  private startOp(client: number): void {
    const r = this.clientRng;
    const key = r.pick(KEYS);
    const kind = r.int(3);
    const seq = this.nextSeq[client] ?? 1;
    this.nextSeq[client] = seq + 1;
    const value = `${client}.${seq};`;
    const input: KvInput = kind === 0 ? { op: 'get', key } : kind === 1 ? { op: 'put', key, value } : { op: 'append', key, value };
    const target = this.knownLeader ?? r.pick(this.ids);
    const op: PendingOp = { client, seq, input, call: ++this.clock, startRound: this.round, target, submitted: false, attemptRound: this.round, ctx: null, attempt: 0 };
    this.pending[client] = op;
    this.drive(op, true);
  }

  private retry(p: PendingOp, hint: NodeId | null): void {
    p.submitted = false;
    p.ctx = null;
    p.target = hint ?? this.clientRng.pick(this.ids);
    p.attemptRound = this.round;
  }

  private finish(p: PendingOp, output: KvOutput, ret: number): void {
    this.history.push({ clientId: p.client, input: p.input, call: p.call, output, return: ret });
    this.pending[p.client] = null;
    this.trace.str(`op:${p.client}:${p.seq}:${ret === Infinity ? 'timeout' : output.value}`);
  }

  private drive(p: PendingOp, faulty: boolean): void {
    if (this.round - p.startRound > OP_TIMEOUT_ROUNDS && faulty) {
      // Give up: a put/append may or may not have taken effect.
      this.finish(p, { value: '' }, Infinity);
      return;
    }
    const node = this.node(p.target);
    const raft = node.raft;
    if (!raft) {
      this.retry(p, null);
      return;
    }
    if (p.submitted && this.round - p.attemptRound > ATTEMPT_TIMEOUT_ROUNDS) {
      this.retry(p, this.knownLeader);
      return;
    }
    if (p.input.op === 'get') {
      if (!p.submitted) {
        p.ctx = `c${p.client}.${p.seq}.${++p.attempt}`;
        try {
          raft.readIndex(p.ctx);
          p.submitted = true;
        } catch (err) {
          if (!(err instanceof NotLeaderError)) throw err;
          this.retry(p, err.leaderHint);
        }
        return;
      }
      const at = p.ctx === null ? undefined : node.readIndexes.get(p.ctx);
      if (at !== undefined && raft.status.applied >= at) {
        this.finish(p, { value: node.kv.get(p.input.key) }, ++this.clock);
      }
      return;
    }
    if (!p.submitted) {
      try {
        raft.propose(encodeCommand({ client: p.client, seq: p.seq, op: p.input }));
        p.submitted = true;
        p.attemptRound = this.round;
        this.knownLeader = p.target;
      } catch (err) {
        if (err instanceof NotLeaderError) this.retry(p, err.leaderHint);
        else if (err instanceof ProposalDroppedError) p.attemptRound = this.round;
        else throw err;
      }
      return;
    }
    // Applied on the node we asked (its state machine follows the committed log): the op took effect exactly once.
    if ((node.kv.lastSeq.get(p.client) ?? 0) >= p.seq) this.finish(p, { value: '' }, ++this.clock);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function runSeed(options: SimOptions): SimResult {
  return new Simulation(options).run();
}

export interface SimSummary {
  seeds: number;
  faults: FaultCounts;
  violations: number;
  linearizability: { ok: number; unknown: number; illegal: number };
  ops: number;
  indeterminateOps: number;
  steps: number;
  durationMs: number;
  failedSeeds: number[];
}

/** Runs seeds [from, from + count) and aggregates; `onResult` sees each seed's result (e.g. to print failures). */
export function runSeeds(from: number, count: number, extra: Omit<SimOptions, 'seed'> = {}, onResult?: (r: SimResult) => void): SimSummary {
  const started = performance.now();
  const faults = emptyFaults();
  const lin = { ok: 0, unknown: 0, illegal: 0 };
  let violations = 0;
  let ops = 0;
  let indeterminateOps = 0;
  let steps = 0;
  const failedSeeds: number[] = [];
  for (let seed = from; seed < from + count; seed++) {
    const r = runSeed({ ...extra, seed });
    for (const k of Object.keys(faults) as (keyof FaultCounts)[]) faults[k] += r.faults[k];
    lin[r.linearizability]++;
    violations += r.violations.length;
    ops += r.ops;
    indeterminateOps += r.indeterminateOps;
    steps += r.steps;
    if (r.violations.length > 0) failedSeeds.push(seed);
    onResult?.(r);
  }
  return { seeds: count, faults, violations, linearizability: lin, ops, indeterminateOps, steps, durationMs: Math.round(performance.now() - started), failedSeeds };
}
