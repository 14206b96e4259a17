// The Raft driver: runs the pure core with a real clock, durable storage, a transport and a state machine.
// It is the only place where consensus touches time and I/O; the core stays deterministic.
import { Raft, type Ready, type RaftConfig } from './core/raft.js';
import { NotLeaderError, ProposalDroppedError } from './core/errors.js';
import { decodeConfRecord } from './core/log.js';
import type { ConfChange, Message, ReadState } from './core/messages.js';
import type { RandomSource } from './core/random.js';
import type { ConfState, Entry, HardState, NodeId, RaftStorage, Snapshot } from './types.js';

export const tickIntervalMsDefault = 100;
export const proposalTimeoutMsDefault = 5_000;
export const readTimeoutMsDefault = 5_000;
/** Proposals waiting to be applied on this node; more are refused rather than queued without bound. */
export const maxPendingProposals = 8_192;
/** Linearizable reads waiting for a read point (queued for a round, in one, or waiting for its index to apply). */
export const maxPendingReads = 8_192;
/**
 * A ReadIndex round with no read point after this long is asked again under a new ctx: the core drops requests
 * silently when leadership moves or a message is lost, and one lost round would otherwise hold up every queued read
 * until it times out. Asking again is safe: the new request, too, starts after every read of the round (etcd: 500 ms).
 */
export const readRoundRetryMs = 500;
/** Snapshot the state machine and compact the log once this many entries were applied since the last one. */
export const snapshotEveryEntriesDefault = 10_000;
/** Entries kept below a new snapshot so that slightly lagging followers catch up from the log, not a snapshot. */
export const compactionKeepEntriesDefault = 1_000;
/** Entries read from storage per call when loading the log at start. */
const loadBatchBytes = 16 * 1024 * 1024;

/** The deterministic state machine Raft replicates. */
export interface StateMachine {
  /** Applies a committed command. Must be deterministic; its result goes to the proposer on this node. */
  apply(command: Uint8Array, index: number): unknown;
  /** Serializes the whole state (taken at the last applied index). */
  snapshot(): Uint8Array;
  /** Replaces the whole state with a snapshot's. */
  restore(data: Uint8Array, index: number): void;
}

/** Carries Raft messages between nodes. Delivery may drop, duplicate or reorder: Raft tolerates all three. */
export interface RaftTransport {
  /** Queues a message; never blocks. Messages to unreachable peers may be dropped. */
  send(message: Message): void;
  /** Registers the handler for inbound messages already validated and addressed to this node. */
  onMessage(handler: (message: Message) => void): void;
  close(): Promise<void>;
}

/** Minimal structured logger (pino-compatible) so consensus does not depend on the node's logging. */
export interface RaftLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export class ProposalTimeoutError extends Error {
  override readonly name = 'ProposalTimeoutError';
  readonly code = 'proposal_timeout';
}

export class ReadTimeoutError extends Error {
  override readonly name = 'ReadTimeoutError';
  readonly code = 'read_timeout';
}

export class RaftOverloadedError extends Error {
  override readonly name = 'RaftOverloadedError';
  readonly code = 'raft_overloaded';
}

export class RaftStoppedError extends Error {
  override readonly name = 'RaftStoppedError';
  readonly code = 'raft_stopped';
}

export interface RaftNodeOptions {
  id: NodeId;
  storage: RaftStorage;
  transport: RaftTransport;
  stateMachine: StateMachine;
  /** Bootstrap configuration for a brand-new cluster; a joining node passes none (it learns it from the leader). */
  bootstrap?: ConfState;
  random: RandomSource;
  logger: RaftLogger;
  tickIntervalMs?: number;
  proposalTimeoutMs?: number;
  readTimeoutMs?: number;
  snapshotEveryEntries?: number;
  compactionKeepEntries?: number;
  /** Core tuning: election and heartbeat ticks, message sizes, in-flight bounds. */
  core?: Omit<RaftConfig, 'id' | 'random'>;
  /** Called after a membership change is applied, with the new configuration. */
  onConfChange?: (conf: ConfState, change: ConfChange) => void;
}

export interface RaftStatus {
  id: NodeId;
  role: string;
  term: number;
  leader: NodeId | null;
  commit: number;
  applied: number;
  snapshotIndex: number;
  conf: ConfState;
}

export interface RaftCounters {
  proposals: number;
  proposalsFailed: number;
  leaderChanges: number;
  readyBatches: number;
  entriesPersisted: number;
  entriesApplied: number;
  messagesSent: number;
  messagesReceived: number;
  snapshotsTaken: number;
  snapshotsInstalled: number;
  /** ReadIndex requests made (one per round of batched linearizable reads, plus re-asks of a lost round). */
  readIndexRequests: number;
}

interface Waiter<T> {
  resolve(value: T): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

interface ProposalWaiter extends Waiter<unknown> {
  term: number;
}

/** A linearizable read; `home` is the set holding it (queue, round or apply group) so a timeout can remove it. */
interface ReadWaiter extends Waiter<void> {
  home: Set<ReadWaiter>;
}

/** The ReadIndex round in flight: every read in it was requested before the round's first request was made. */
interface ReadRound {
  /** Ctxs of this round's requests (the first and any re-asks): an answer to any of them serves the round. */
  ctxs: Set<string>;
  reads: Set<ReadWaiter>;
  retry: NodeJS.Timeout | null;
  /** The leader the last request went to (this node when it leads). */
  leader: NodeId | null;
}

export class RaftNode {
  readonly id: NodeId;
  private readonly core: Raft;
  private readonly storage: RaftStorage;
  private readonly transport: RaftTransport;
  private readonly sm: StateMachine;
  private readonly log: RaftLogger;
  private readonly proposalTimeoutMs: number;
  private readonly readTimeoutMs: number;
  private readonly snapshotEveryEntries: number;
  private readonly compactionKeepEntries: number;
  private readonly onConfChange: ((conf: ConfState, change: ConfChange) => void) | undefined;
  private readonly ticker: NodeJS.Timeout;

  private readonly proposals = new Map<number, ProposalWaiter>();
  // Linearizable reads share ReadIndex rounds (etcd's linearizableReadLoop): at most one round is in flight, reads
  // arriving meanwhile queue for the next one, started as soon as the current one has its read point. A read is
  // only ever served by a round started after it was requested, so no write acknowledged before it can be missed.
  /** Reads waiting for the next round. */
  private readQueue = new Set<ReadWaiter>();
  /** The round waiting for its read point, if any. */
  private readRound: ReadRound | null = null;
  /** Rounds that have their read point, waiting until it is applied here. */
  private readsAwaitingApply: { index: number; reads: Set<ReadWaiter> }[] = [];
  /** Reads in the queue, the round and the apply groups (timed-out ones are removed at once). */
  private pendingReadCount = 0;
  /** The leader changed while a round was in flight: the old leader dropped it, so it fails (see driveReadRounds). */
  private readLeaderChanged = false;
  private readCounter = 0;
  /** Distinguishes this process's read ctxs from a previous run's, whose late answers must not serve new reads. */
  private readonly readCtxPrefix: string;
  private applied: number;
  private snapshotIndex: number;
  private scheduled = false;
  private running = false;
  private stopped = false;
  private fatal: Error | null = null;
  private idleWaiters: (() => void)[] = [];
  readonly counters: RaftCounters = {
    proposals: 0,
    proposalsFailed: 0,
    leaderChanges: 0,
    readyBatches: 0,
    entriesPersisted: 0,
    entriesApplied: 0,
    messagesSent: 0,
    messagesReceived: 0,
    snapshotsTaken: 0,
    snapshotsInstalled: 0,
    readIndexRequests: 0,
  };
  private leaderListeners: ((leader: NodeId | null, term: number) => void)[] = [];
  /** waitApplied callers, resolved as the applied index passes theirs. */
  private appliedWaiters: { index: number; resolve: () => void; reject: (err: Error) => void; timer: NodeJS.Timeout }[] = [];
  /** When a message from the current leader last arrived (ms, Date.now()); 0 = never. */
  private leaderContactAtMs = 0;
  /** Term and vote as last written to storage (null: unknown, so every hard state is written). */
  private durableTermVote: { term: number; vote: NodeId | null } | null = null;
  /** A commit-only hard state not yet written: it rides along with the next write (see handle). */
  private deferredHardState: HardState | null = null;

  private constructor(options: RaftNodeOptions, core: Raft, applied: number, snapshotIndex: number) {
    this.id = options.id;
    this.core = core;
    this.storage = options.storage;
    this.transport = options.transport;
    this.sm = options.stateMachine;
    this.log = options.logger;
    this.proposalTimeoutMs = options.proposalTimeoutMs ?? proposalTimeoutMsDefault;
    this.readTimeoutMs = options.readTimeoutMs ?? readTimeoutMsDefault;
    this.snapshotEveryEntries = options.snapshotEveryEntries ?? snapshotEveryEntriesDefault;
    this.compactionKeepEntries = options.compactionKeepEntries ?? compactionKeepEntriesDefault;
    this.onConfChange = options.onConfChange;
    this.applied = applied;
    this.snapshotIndex = snapshotIndex;
    this.readCtxPrefix = `${this.id}/${Date.now().toString(36)}`;
    this.transport.onMessage((m) => {
      if (this.stopped) return;
      this.counters.messagesReceived++;
      try {
        this.core.step(m);
      } catch (err) {
        this.log.warn({ err, from: m.from, type: m.type }, 'raft message rejected');
        return;
      }
      if (m.from === this.core.status.leader) this.leaderContactAtMs = Date.now();
      this.schedule();
    });
    this.ticker = setInterval(() => {
      // While leader, its own state is current: a node that steps down then reports age from this moment on.
      if (this.core.status.role === 'leader') this.leaderContactAtMs = Date.now();
      this.core.tick();
      this.schedule();
    }, options.tickIntervalMs ?? tickIntervalMsDefault);
    this.ticker.unref();
  }

  /**
   * Opens the node from what storage holds: the snapshot restores the state machine, the log after it is
   * loaded into the core, and committed entries are re-applied as the core hands them out.
   */
  static async open(options: RaftNodeOptions): Promise<RaftNode> {
    const state = await options.storage.initialState();
    const snapshot = await options.storage.snapshot();
    const entries: Entry[] = [];
    let next = Math.max(state.firstIndex, (snapshot?.meta.index ?? 0) + 1);
    while (next <= state.lastIndex) {
      const batch = await options.storage.entries(next, state.lastIndex + 1, loadBatchBytes);
      entries.push(...batch);
      next += batch.length;
    }
    const snapshotIndex = snapshot?.meta.index ?? 0;
    if (snapshot !== null) options.stateMachine.restore(snapshot.data, snapshotIndex);
    const core = new Raft(
      { ...options.core, id: options.id, random: options.random },
      { hardState: state.hardState, snapshot, entries, conf: options.bootstrap, applied: snapshotIndex },
    );
    const node = new RaftNode(options, core, snapshotIndex, snapshotIndex);
    node.durableTermVote = { term: state.hardState.term, vote: state.hardState.vote };
    options.logger.info(
      { term: state.hardState.term, commit: state.hardState.commit, snapshotIndex, lastIndex: state.lastIndex },
      'raft node opened',
    );
    node.schedule();
    return node;
  }

  status(): RaftStatus {
    const s = this.core.status;
    return {
      id: this.id,
      role: s.role,
      term: s.term,
      leader: s.leader,
      commit: s.commit,
      applied: this.applied,
      snapshotIndex: this.snapshotIndex,
      conf: s.conf,
    };
  }

  /** Index of the last entry in this node's log (persisted or not). */
  lastIndex(): number {
    return this.core.status.lastIndex;
  }

  /** The leader's view of each peer's replication (match index); empty on followers. */
  progress(): Map<NodeId, { match: number; next: number; state: string; inflight: number }> {
    return this.core.progress();
  }

  /** Calls `listener` whenever the known leader or term changes. */
  onLeaderChange(listener: (leader: NodeId | null, term: number) => void): void {
    this.leaderListeners.push(listener);
  }

  /**
   * Proposes a command. Resolves with the state machine's result once the entry is applied on this node;
   * rejects with NotLeaderError (with the leader hint) on a follower, ProposalDroppedError when leadership
   * was lost before it committed, ProposalTimeoutError, or RaftOverloadedError.
   */
  propose(command: Uint8Array): Promise<unknown> {
    this.assertRunning();
    if (this.proposals.size >= maxPendingProposals) {
      return Promise.reject(new RaftOverloadedError(`${maxPendingProposals} proposals already pending`));
    }
    const ref = this.core.propose(command); // throws NotLeaderError / ProposalDroppedError synchronously
    this.counters.proposals++;
    const promise = this.wait(this.proposals, ref.index, this.proposalTimeoutMs, () => new ProposalTimeoutError(`entry ${ref.index} not applied within ${this.proposalTimeoutMs} ms`), { term: ref.term });
    this.schedule();
    return promise;
  }

  /** Proposes a membership change; resolves when it is applied here. */
  proposeConfChange(change: ConfChange): Promise<unknown> {
    this.assertRunning();
    const ref = this.core.proposeConfChange(change);
    const promise = this.wait(this.proposals, ref.index, this.proposalTimeoutMs, () => new ProposalTimeoutError(`membership change at ${ref.index} not applied in time`), { term: ref.term });
    this.schedule();
    return promise;
  }

  /**
   * Waits for a linearizable read point (ReadIndex, §6.4): once it resolves, the local state machine reflects
   * every write acknowledged before the call. Rejects with NotLeaderError when no leader is known.
   */
  readBarrier(): Promise<void> {
    this.assertRunning();
    if (this.pendingReadCount >= maxPendingReads) return Promise.reject(new RaftOverloadedError(`${maxPendingReads} reads already pending`));
    const s = this.core.status;
    // As core.readIndex would: refuse at once when no leader is known rather than queue for a round that cannot run.
    if (s.role !== 'leader' && s.leader === null) throw new NotLeaderError(null);
    const promise = new Promise<void>((resolve, reject) => {
      const w: ReadWaiter = {
        resolve,
        reject,
        home: this.readQueue,
        timer: setTimeout(() => {
          w.home.delete(w);
          this.pendingReadCount--;
          reject(new ReadTimeoutError(`no read point within ${this.readTimeoutMs} ms (no quorum?)`));
        }, this.readTimeoutMs),
      };
      this.readQueue.add(w);
      this.pendingReadCount++;
    });
    // The round starts in run(), a turn later: every read of this turn joins it, and all were requested before it.
    this.schedule();
    return promise;
  }

  /**
   * Resolves once this node has applied `index` (e.g. the index a leader answered for a forwarded write, so the
   * caller reads its own write here). Rejects with ReadTimeoutError after timeoutMs.
   */
  waitApplied(index: number, timeoutMs: number): Promise<void> {
    this.assertRunning();
    if (this.applied >= index) return Promise.resolve();
    if (this.appliedWaiters.length >= maxPendingReads) return Promise.reject(new RaftOverloadedError(`${maxPendingReads} waits for apply already pending`));
    return new Promise<void>((resolve, reject) => {
      const waiter = {
        index,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.appliedWaiters = this.appliedWaiters.filter((w) => w !== waiter);
          reject(new ReadTimeoutError(`entry ${index} not applied here within ${timeoutMs} ms (applied ${this.applied})`));
        }, timeoutMs),
      };
      this.appliedWaiters.push(waiter);
    });
  }

  /**
   * How old this node's view may be, ms: 0 on the leader (check-quorum steps it down within an election timeout
   * of losing its majority), else the time since the last message from the leader; null if none was ever heard.
   */
  dataAgeMs(nowMs: number = Date.now()): number | null {
    const s = this.core.status;
    if (s.role === 'leader') return 0;
    if (this.leaderContactAtMs === 0) return null;
    return Math.max(0, nowMs - this.leaderContactAtMs);
  }

  transferLeader(to: NodeId): void {
    this.assertRunning();
    this.core.transferLeader(to);
    this.schedule();
  }

  /** Resolves once every Ready produced so far is persisted, sent and applied (for tests and orderly shutdown). */
  idle(): Promise<void> {
    if (!this.running && !this.scheduled) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.ticker);
    await this.idle();
    const err = new RaftStoppedError('raft node stopped');
    for (const [, w] of this.proposals) this.settle(w, err);
    this.failReads(err);
    for (const w of this.appliedWaiters) this.settle(w, err);
    this.proposals.clear();
    this.appliedWaiters = [];
    await this.transport.close();
    await this.storage.close();
  }

  private assertRunning(): void {
    if (this.fatal !== null) throw this.fatal;
    if (this.stopped) throw new RaftStoppedError('raft node stopped');
  }

  private wait<K, T, W extends Waiter<T>>(
    map: Map<K, W>,
    key: K,
    timeoutMs: number,
    timeoutError: () => Error,
    extra: Omit<W, keyof Waiter<T>>,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        map.delete(key);
        if (map === (this.proposals as unknown)) this.counters.proposalsFailed++;
        reject(timeoutError());
      }, timeoutMs);
      map.set(key, { ...extra, resolve, reject, timer } as unknown as W);
    });
  }

  private settle<T>(w: Waiter<T>, err: Error): void {
    clearTimeout(w.timer);
    w.reject(err);
  }

  private schedule(): void {
    if (this.scheduled || this.running || this.fatal !== null) return;
    this.scheduled = true;
    // setImmediate lets every message and proposal that arrived in this turn join one Ready: one fsync for all.
    setImmediate(() => void this.run());
  }

  private async run(): Promise<void> {
    this.scheduled = false;
    if (this.running) return;
    this.running = true;
    try {
      this.driveReadRounds();
      while (this.core.hasReady()) {
        const rd = this.core.ready();
        await this.handle(rd);
        this.core.advance(rd);
        await this.maybeSnapshot();
        // A round completed in handle() lets the queued reads start theirs; its request joins the next Ready.
        this.driveReadRounds();
      }
    } catch (err) {
      // A storage failure leaves the durable state unknown: stop acting on it rather than risk safety.
      this.fatal = err instanceof Error ? err : new Error(String(err));
      this.log.error({ err: this.fatal }, 'raft node halted on a storage failure; restart the node');
      clearInterval(this.ticker);
      for (const [, w] of this.proposals) this.settle(w, this.fatal);
      this.failReads(this.fatal);
      for (const w of this.appliedWaiters) this.settle(w, this.fatal);
      this.proposals.clear();
      this.appliedWaiters = [];
    } finally {
      this.running = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  private async handle(rd: Ready): Promise<void> {
    this.counters.readyBatches++;
    if (rd.softState !== null) {
      const s = this.core.status;
      this.counters.leaderChanges++;
      this.log.info({ leader: rd.softState.leader, role: rd.softState.role, term: s.term }, 'raft leadership changed');
      for (const l of this.leaderListeners) l(rd.softState.leader, s.term);
      if (this.readRound !== null && this.readRound.leader !== rd.softState.leader) this.readLeaderChanged = true;
    }
    if (rd.snapshot !== null) {
      await this.storage.applySnapshot(rd.snapshot);
      this.sm.restore(rd.snapshot.data, rd.snapshot.meta.index);
      this.applied = rd.snapshot.meta.index;
      this.snapshotIndex = rd.snapshot.meta.index;
      this.counters.snapshotsInstalled++;
      this.log.info({ index: rd.snapshot.meta.index, bytes: rd.snapshot.data.byteLength }, 'raft snapshot installed');
    }
    let hardState = rd.hardState;
    const tv = this.durableTermVote;
    if (hardState !== null && rd.entries.length === 0 && tv !== null && hardState.term === tv.term && hardState.vote === tv.vote) {
      // Only the commit index changed (etcd's mustSync is false): it need not be durable, since a restarted node
      // relearns it from the leader, so skip the fsync and let it ride with the next write.
      this.deferredHardState = hardState;
      hardState = null;
    } else if (hardState === null && rd.entries.length > 0) {
      hardState = this.deferredHardState;
    }
    if (hardState !== null || rd.entries.length > 0) {
      await this.storage.save(hardState, rd.entries);
      this.deferredHardState = null;
      if (hardState !== null) this.durableTermVote = { term: hardState.term, vote: hardState.vote };
      this.counters.entriesPersisted += rd.entries.length;
    }
    // Only now, with hard state and entries durable, may messages leave (Ready's contract).
    for (const m of rd.messages) {
      this.transport.send(m);
      this.counters.messagesSent++;
    }
    for (const e of rd.committedEntries) this.applyEntry(e);
    if (rd.readStates.length > 0) this.onReadStates(rd.readStates);
    if (this.readsAwaitingApply.length > 0) this.serveReads();
    if (this.appliedWaiters.length > 0) this.serveAppliedWaiters();
  }

  private serveAppliedWaiters(): void {
    const ready = this.appliedWaiters.filter((w) => w.index <= this.applied);
    if (ready.length === 0) return;
    this.appliedWaiters = this.appliedWaiters.filter((w) => w.index > this.applied);
    for (const w of ready) {
      clearTimeout(w.timer);
      w.resolve();
    }
  }

  private applyEntry(e: Entry): void {
    if (e.index <= this.applied) return; // already in the restored snapshot
    let result: unknown;
    let error: Error | null = null;
    try {
      if (e.type === 'normal') result = this.sm.apply(e.data, e.index);
      else if (e.type === 'conf') {
        const record = decodeConfRecord(e.data);
        this.onConfChange?.(record.conf, record.change);
        result = record.conf;
      }
    } catch (err) {
      // A deterministic command error (e.g. a rejected write) is the proposer's answer, not a node failure.
      error = err instanceof Error ? err : new Error(String(err));
    }
    this.applied = e.index;
    this.counters.entriesApplied++;
    const w = this.proposals.get(e.index);
    if (w === undefined) return;
    this.proposals.delete(e.index);
    clearTimeout(w.timer);
    if (w.term !== e.term) {
      this.counters.proposalsFailed++;
      w.reject(new ProposalDroppedError(`entry ${e.index} was replaced by a new leader's entry (term ${e.term})`));
    } else if (error !== null) w.reject(error);
    else w.resolve(result);
  }

  /** Starts the next read round when none is in flight and reads are queued; re-asks a round after a leader change. */
  private driveReadRounds(): void {
    const round = this.readRound;
    if (round !== null && this.readLeaderChanged) {
      // The old leader dropped the round. Its reads fail now, as unbatched reads did (their dropped request timed
      // out; the service answers no_quorum). Re-asking the new leader would also be linearizable, but a deposed
      // leader would then answer reads it took while cut off. Reads queued behind it start a round with the new one.
      if (round.retry !== null) clearTimeout(round.retry);
      this.readRound = null;
      this.failReadSet(round.reads, new NotLeaderError(this.core.status.leader));
    }
    if (this.readRound !== null) return;
    this.readLeaderChanged = false;
    if (this.readQueue.size === 0) return;
    const reads = this.readQueue;
    this.readQueue = new Set();
    for (const w of reads) w.home = reads;
    const next: ReadRound = { ctxs: new Set(), reads, retry: null, leader: null };
    this.readRound = next;
    if (!this.askReadRound(next)) {
      // No leader known now: refuse the round's reads as a lone readBarrier() would have been refused.
      if (next.retry !== null) clearTimeout(next.retry);
      this.readRound = null;
      this.failReadSet(reads, new NotLeaderError(null));
    }
  }

  /** Makes one ReadIndex request for the round and arms its retry; false when no leader is known. */
  private askReadRound(round: ReadRound): boolean {
    if (round.retry !== null) clearTimeout(round.retry);
    round.retry = setTimeout(() => {
      if (this.readRound !== round || this.stopped || this.fatal !== null) return;
      this.log.debug({ reads: round.reads.size, asks: round.ctxs.size }, 'read round got no read point in time; asking again');
      this.askReadRound(round);
      this.schedule();
    }, readRoundRetryMs);
    round.retry.unref();
    const ctx = `${this.readCtxPrefix}/${++this.readCounter}`;
    try {
      this.core.readIndex(ctx);
    } catch (err) {
      if (err instanceof NotLeaderError) return false; // the retry timer asks again once a leader may be known
      throw err;
    }
    round.ctxs.add(ctx);
    round.leader = this.core.status.leader;
    this.counters.readIndexRequests++;
    return true;
  }

  private onReadStates(states: readonly ReadState[]): void {
    const round = this.readRound;
    if (round === null) return;
    // Answers to an earlier round's requests (re-asked, or already served) and to a previous run's are ignored.
    const rs = states.find((r) => round.ctxs.has(r.ctx));
    if (rs === undefined) return;
    if (round.retry !== null) clearTimeout(round.retry);
    this.readRound = null;
    if (round.reads.size === 0) return; // all timed out meanwhile
    const group = { index: rs.index, reads: round.reads };
    this.readsAwaitingApply.push(group);
  }

  /** Resolves every read whose round's read point is applied here. */
  private serveReads(): void {
    const ready = this.readsAwaitingApply.filter((g) => g.index <= this.applied);
    if (ready.length === 0) return;
    this.readsAwaitingApply = this.readsAwaitingApply.filter((g) => g.index > this.applied);
    for (const g of ready) {
      for (const w of g.reads) {
        clearTimeout(w.timer);
        w.resolve();
      }
      this.pendingReadCount -= g.reads.size;
      g.reads.clear();
    }
  }

  private failReadSet(reads: Set<ReadWaiter>, err: Error): void {
    for (const w of reads) this.settle(w, err);
    this.pendingReadCount -= reads.size;
    reads.clear();
  }

  private failReads(err: Error): void {
    this.failReadSet(this.readQueue, err);
    if (this.readRound !== null) {
      if (this.readRound.retry !== null) clearTimeout(this.readRound.retry);
      this.failReadSet(this.readRound.reads, err);
      this.readRound = null;
    }
    for (const g of this.readsAwaitingApply) this.failReadSet(g.reads, err);
    this.readsAwaitingApply = [];
  }

  private async maybeSnapshot(): Promise<void> {
    if (this.applied - this.snapshotIndex < this.snapshotEveryEntries) return;
    const data = this.sm.snapshot();
    const snap: Snapshot = this.core.compact(this.applied, data);
    await this.storage.compact(snap, this.compactionKeepEntries);
    this.snapshotIndex = snap.meta.index;
    this.counters.snapshotsTaken++;
    this.log.info({ index: snap.meta.index, bytes: data.byteLength }, 'raft snapshot taken, log compacted');
  }
}

export { NotLeaderError, ProposalDroppedError };
