// The pure Raft core (etcd/raft style): messages and ticks in, a Ready batch out. No timers, I/O, clock or Math.random.
//
// Membership: single-server changes (Raft dissertation §4.1). A `conf` entry takes effect as soon as it is appended
// to a log (and is undone if that entry is truncated), so a node always uses the latest configuration in its log.
// Safety needs two rules, both enforced by proposeConfChange: at most one uncommitted conf entry, and the leader must
// have committed an entry of its current term first (the fix for the bug Ongaro reported in 2015). Voter sets of
// consecutive configurations then differ by one server and their majorities always overlap. We chose this over
// joint consensus because a cluster of at most 5 voters only ever adds, removes, promotes or demotes one node.
// ConfState.votersOutgoing is therefore always empty.
import type { ConfState, Entry, HardState, NodeId, Snapshot } from '../types.js';
import {
  ConfChangeInvalidError,
  ConfChangePendingError,
  LeaderTransferError,
  NotLeaderError,
  ProposalDroppedError,
  RaftInvariantError,
  RaftUsageError,
} from './errors.js';
import { RaftLog, encodeConfRecord } from './log.js';
import type {
  AppendMessage,
  AppendResponseMessage,
  ConfChange,
  HeartbeatMessage,
  HeartbeatResponseMessage,
  Message,
  ReadState,
  Role,
  SnapshotMessage,
  SnapshotResponseMessage,
  SoftState,
  VoteMessage,
} from './messages.js';
import { Progress } from './progress.js';
import type { RandomSource } from './random.js';

/** Defaults for every bound; units are in the name. */
export const DEFAULT_ELECTION_TIMEOUT_TICKS = 10;
export const DEFAULT_HEARTBEAT_INTERVAL_TICKS = 1;
export const DEFAULT_MAX_SIZE_PER_MSG_BYTES = 1024 * 1024;
export const DEFAULT_MAX_INFLIGHT_MSGS = 256;
export const DEFAULT_SNAPSHOT_CHUNK_BYTES = 256 * 1024;
export const DEFAULT_MAX_UNCOMMITTED_ENTRIES_BYTES = 16 * 1024 * 1024;

export interface RaftConfig {
  readonly id: NodeId;
  /** Followers campaign after a random timeout in [electionTimeoutTicks, 2 * electionTimeoutTicks). Also the check-quorum period and the leader lease. */
  readonly electionTimeoutTicks?: number;
  readonly heartbeatIntervalTicks?: number;
  /** Soft bound on the entry data carried by one AppendEntries (at least one entry is always sent). */
  readonly maxSizePerMsgBytes?: number;
  /** Unacknowledged AppendEntries per follower in replicate state before the leader waits. */
  readonly maxInflightMsgs?: number;
  /** InstallSnapshot chunk size. */
  readonly snapshotChunkBytes?: number;
  /** Proposals are dropped while the leader holds more than this many bytes of uncommitted entry data. */
  readonly maxUncommittedEntriesBytes?: number;
  /** Pre-vote (§9.6 of the dissertation): a partitioned node does not inflate terms. Default true. */
  readonly preVote?: boolean;
  /** Check-quorum and leader lease: leaders step down without a live quorum; followers with a live leader ignore votes. Default true. */
  readonly checkQuorum?: boolean;
  /** Seeded generator for randomized election timeouts. */
  readonly random: RandomSource;
  /** Deliberate safety bugs so tests can prove the simulator catches them. Never set outside tests. */
  readonly unsafeTestFlags?: UnsafeTestFlags;
}

export interface UnsafeTestFlags {
  /** Followers append entries without checking that the previous entry's term matches (breaks log matching). */
  readonly skipLogMatchingCheck?: boolean;
  /** Leaders commit entries of earlier terms by counting replicas (the §5.4.2 / Figure 8 bug). */
  readonly commitOldTermByCounting?: boolean;
}

/** Persisted state the core is constructed from (what RaftStorage.initialState plus entries() returns). */
export interface RaftInitialState {
  readonly hardState: HardState;
  /** Latest snapshot with its data (the data is served to followers that need InstallSnapshot). */
  readonly snapshot: Snapshot | null;
  /** Bootstrap configuration, used only when there is no snapshot. A joining node passes an empty one. */
  readonly conf?: ConfState;
  /** Every persisted entry after the snapshot, contiguous. Entries at or below the snapshot index are ignored. */
  readonly entries: readonly Entry[];
  /** Index the state machine has already applied (default: the snapshot index). */
  readonly applied?: number;
}

/**
 * One batch of work for the driver. Handle it in this order:
 *  1. if `snapshot`: persist it (RaftStorage.applySnapshot) and restore the state machine from it;
 *  2. persist `hardState` (if not null) and append `entries` in ONE atomic synced write
 *     (entries at or after entries[0].index replace what storage holds);
 *  3. only then send `messages` (sending before persisting can lose a vote or an acknowledged entry);
 *  4. apply `committedEntries` in order, then serve reads in `readStates` once applied >= their index;
 *  5. call `advance(ready)`.
 * `ready()` hands each item out once; call it again only after `advance`.
 */
export interface Ready {
  /** Leader/role when they changed since the last Ready, else null. Not persisted. */
  readonly softState: SoftState | null;
  /** Term, vote and commit when they changed, else null. MUST be persisted before messages are sent. */
  readonly hardState: HardState | null;
  /** A snapshot received from the leader, to persist and install before anything else. */
  readonly snapshot: Snapshot | null;
  /** New log entries to persist (atomically with hardState) BEFORE messages are sent. */
  readonly entries: readonly Entry[];
  /** Entries known committed, to apply to the state machine after persisting, in index order. */
  readonly committedEntries: readonly Entry[];
  /** Outgoing messages, to send only after hardState, entries and snapshot are durable. */
  readonly messages: readonly Message[];
  /** Linearizable read points: serve the read for `ctx` once the state machine has applied `index`. */
  readonly readStates: readonly ReadState[];
}

/** Proposal position: the proposal is committed iff the entry applied at `index` has this `term`. */
export interface ProposalRef {
  readonly index: number;
  readonly term: number;
}

interface PendingRead {
  readonly ctx: string;
  readonly from: NodeId;
  readonly index: number;
  readonly acks: Set<NodeId>;
}

export class Raft {
  readonly id: NodeId;
  private readonly electionTimeoutTicks: number;
  private readonly heartbeatIntervalTicks: number;
  private readonly maxSizePerMsgBytes: number;
  private readonly maxInflightMsgs: number;
  private readonly snapshotChunkBytes: number;
  private readonly maxUncommittedEntriesBytes: number;
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly random: RandomSource;
  private readonly unsafe: UnsafeTestFlags;

  private term: number;
  private vote: NodeId | null;
  private lead: NodeId | null = null;
  private role: Role = 'follower';
  private readonly log: RaftLog;
  private conf: ConfState;

  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;
  private readonly votes = new Map<NodeId, boolean>();
  private readonly prs = new Map<NodeId, Progress>();
  private leadTransferee: NodeId | null = null;
  private uncommittedBytes = 0;

  private pendingReads: PendingRead[] = [];
  /** ReadIndex requests that arrived before this leader committed an entry of its term (§6.4: wait for the no-op). */
  private readsAwaitingCommit: { ctx: string; from: NodeId }[] = [];
  private readStates: ReadState[] = [];
  private msgs: Message[] = [];
  /**
   * Leader only: new entries or a commit advance wait to be broadcast. Flushed once by ready() (etcd-style coalescing),
   * so every proposal and append response handled before the driver collects a Ready shares one AppendEntries per
   * follower instead of one each.
   */
  private pendingBcast = false;

  /** InstallSnapshot being reassembled from chunks. */
  private incoming: { from: NodeId; term: number; index: number; snapTerm: number; chunks: Uint8Array[]; received: number } | null = null;
  /** Snapshot restored into the log, waiting to be handed to the driver. */
  private readySnapshot: Snapshot | null = null;

  private prevHardState: HardState;
  private prevSoftState: SoftState;
  private applied: number;

  constructor(config: RaftConfig, initial: RaftInitialState) {
    this.id = config.id;
    this.electionTimeoutTicks = config.electionTimeoutTicks ?? DEFAULT_ELECTION_TIMEOUT_TICKS;
    this.heartbeatIntervalTicks = config.heartbeatIntervalTicks ?? DEFAULT_HEARTBEAT_INTERVAL_TICKS;
    this.maxSizePerMsgBytes = config.maxSizePerMsgBytes ?? DEFAULT_MAX_SIZE_PER_MSG_BYTES;
    this.maxInflightMsgs = config.maxInflightMsgs ?? DEFAULT_MAX_INFLIGHT_MSGS;
    this.snapshotChunkBytes = config.snapshotChunkBytes ?? DEFAULT_SNAPSHOT_CHUNK_BYTES;
    this.maxUncommittedEntriesBytes = config.maxUncommittedEntriesBytes ?? DEFAULT_MAX_UNCOMMITTED_ENTRIES_BYTES;
    this.preVote = config.preVote ?? true;
    this.checkQuorum = config.checkQuorum ?? true;
    this.random = config.random;
    this.unsafe = config.unsafeTestFlags ?? {};
    if (this.heartbeatIntervalTicks < 1 || this.electionTimeoutTicks <= this.heartbeatIntervalTicks) {
      throw new RaftUsageError('electionTimeoutTicks must exceed heartbeatIntervalTicks >= 1');
    }
    if (this.maxInflightMsgs < 1 || this.snapshotChunkBytes < 1) throw new RaftUsageError('maxInflightMsgs and snapshotChunkBytes must be >= 1');

    const bootstrap = initial.conf ?? { voters: [], learners: [], votersOutgoing: [] };
    this.log = new RaftLog(initial.snapshot, bootstrap, initial.entries, initial.hardState.commit, initial.applied ?? 0);
    this.applied = this.log.handedApplied;
    this.term = initial.hardState.term;
    this.vote = initial.hardState.vote;
    this.conf = this.log.confAt(this.log.lastIndex());
    this.prevHardState = this.hardState();
    this.prevSoftState = { leader: null, role: 'follower' };
    this.resetRandomizedElectionTimeout();
  }

  // ---------------------------------------------------------------------------------------------------------
  // Observers

  get status(): {
    id: NodeId;
    term: number;
    vote: NodeId | null;
    role: Role;
    leader: NodeId | null;
    commit: number;
    applied: number;
    firstIndex: number;
    lastIndex: number;
    conf: ConfState;
  } {
    return {
      id: this.id,
      term: this.term,
      vote: this.vote,
      role: this.role,
      leader: this.lead,
      commit: this.log.committed,
      applied: this.applied,
      firstIndex: this.log.firstIndex(),
      lastIndex: this.log.lastIndex(),
      conf: this.conf,
    };
  }

  /** Progress of each follower as the leader sees it (empty on followers); for metrics and tests. */
  progress(): Map<NodeId, { match: number; next: number; state: string; inflight: number }> {
    const out = new Map<NodeId, { match: number; next: number; state: string; inflight: number }>();
    for (const [id, pr] of this.prs) out.set(id, { match: pr.match, next: pr.next, state: pr.state, inflight: pr.inflights.length });
    return out;
  }

  /** Term of log entry `i` (undefined when compacted or absent): for invariant checks. */
  termAt(i: number): number | undefined {
    return this.log.term(i);
  }

  /** Log entry `i` if held in memory: for invariant checks. */
  entryAt(i: number): Entry | undefined {
    return this.log.entry(i);
  }

  /** Snapshot index and term the in-memory log starts after. */
  snapshotPoint(): { index: number; term: number } {
    return { index: this.log.snapIndex, term: this.log.snapTerm };
  }

  private hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  private isVoter(id: NodeId): boolean {
    return this.conf.voters.includes(id);
  }

  private promotable(): boolean {
    return this.isVoter(this.id);
  }

  private quorum(): number {
    return Math.floor(this.conf.voters.length / 2) + 1;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Driver API

  /** Advances logical time by one tick: election timeouts for followers, heartbeats and check-quorum for leaders. */
  tick(): void {
    if (this.role === 'leader') {
      this.tickLeader();
      return;
    }
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.campaign(this.preVote ? 'preVote' : 'vote', false);
    }
  }

  /** Appends a command to the leader's log. Throws NotLeaderError or ProposalDroppedError. */
  propose(data: Uint8Array): ProposalRef {
    this.checkCanPropose(data.length);
    return this.appendEntry('normal', data);
  }

  /**
   * Proposes a single-server membership change. Throws NotLeaderError, ConfChangePendingError (a previous change is
   * uncommitted or the leader has not committed an entry of its term yet) or ConfChangeInvalidError.
   */
  proposeConfChange(change: ConfChange): ProposalRef {
    if (this.role !== 'leader') throw new NotLeaderError(this.lead);
    if (this.log.lastConfIndex() > this.log.committed) throw new ConfChangePendingError('a membership change is still uncommitted');
    if (this.log.term(this.log.committed) !== this.term) {
      throw new ConfChangePendingError('the leader has not committed an entry of its term yet');
    }
    const conf = applyConfChange(this.conf, change);
    const data = encodeConfRecord({ change, conf });
    this.checkCanPropose(data.length);
    return this.appendEntry('conf', data);
  }

  /**
   * Requests a linearizable read point. The leader confirms its leadership with a heartbeat round (§6.4) and emits
   * ReadState{ctx, index} in a later Ready; a follower forwards the request to the leader. If leadership changes the
   * request is silently dropped: callers time out and retry. Throws NotLeaderError when no leader is known.
   */
  readIndex(ctx: string): void {
    if (this.role === 'leader') {
      this.leaderReadIndex(ctx, this.id);
      return;
    }
    if (this.lead === null) throw new NotLeaderError(null);
    this.send({ type: 'readIndex', from: this.id, to: this.lead, term: this.term, ctx });
  }

  /** Hands leadership to voter `to`: catches it up, then sends TimeoutNow. Aborted after an election timeout. */
  transferLeader(to: NodeId): void {
    if (this.role !== 'leader') throw new NotLeaderError(this.lead);
    if (to === this.id) return;
    if (!this.isVoter(to)) throw new LeaderTransferError(`${to} is not a voter`);
    if (this.leadTransferee === to) return;
    this.leadTransferee = to;
    this.electionElapsed = 0;
    const pr = this.prs.get(to);
    if (pr && pr.match === this.log.lastIndex()) this.send({ type: 'timeoutNow', from: this.id, to, term: this.term });
    else this.sendAppend(to, true);
  }

  /**
   * Compacts the log after the state machine snapshotted at `index` (which it has applied). Returns the snapshot the
   * driver must persist (RaftStorage.compact); the core keeps its data to serve InstallSnapshot.
   */
  compact(index: number, data: Uint8Array): Snapshot {
    if (index <= this.log.snapIndex) throw new RaftUsageError(`snapshot index ${index} is not after the current one ${this.log.snapIndex}`);
    if (index > this.applied) throw new RaftUsageError(`cannot compact at ${index}: only ${this.applied} applied`);
    const term = this.log.term(index);
    if (term === undefined) throw new RaftUsageError(`no entry at ${index}`);
    return this.log.compact({ index, term, conf: this.log.confAt(index) }, data);
  }

  hasReady(): boolean {
    return (
      (this.pendingBcast && this.role === 'leader') ||
      this.msgs.length > 0 ||
      this.readStates.length > 0 ||
      this.readySnapshot !== null ||
      this.log.unstable <= this.log.lastIndex() ||
      this.log.committed > this.log.handedApplied ||
      !sameHardState(this.hardState(), this.prevHardState) ||
      this.prevSoftState.leader !== this.lead ||
      this.prevSoftState.role !== this.role
    );
  }

  /** Collects everything to persist, send and apply since the last Ready (see Ready for the required order). */
  ready(): Ready {
    this.flushBcast();
    const hs = this.hardState();
    const hardState = sameHardState(hs, this.prevHardState) ? null : hs;
    this.prevHardState = hs;
    const soft: SoftState = { leader: this.lead, role: this.role };
    const softState = soft.leader === this.prevSoftState.leader && soft.role === this.prevSoftState.role ? null : soft;
    this.prevSoftState = soft;
    const snapshot = this.readySnapshot;
    this.readySnapshot = null;
    const entries = this.log.slice(this.log.unstable, this.log.lastIndex() + 1);
    this.log.unstable = this.log.lastIndex() + 1;
    const committedEntries = this.log.slice(this.log.handedApplied + 1, this.log.committed + 1);
    this.log.handedApplied = this.log.committed;
    const messages = this.msgs;
    this.msgs = [];
    const readStates = this.readStates;
    this.readStates = [];
    return { softState, hardState, snapshot, entries, committedEntries, messages, readStates };
  }

  /** Acknowledges that a Ready was persisted, sent and applied. */
  advance(ready: Ready): void {
    const lastCommitted = ready.committedEntries[ready.committedEntries.length - 1];
    if (lastCommitted) this.applied = Math.max(this.applied, lastCommitted.index);
    if (ready.snapshot) this.applied = Math.max(this.applied, ready.snapshot.meta.index);
  }

  /** Feeds one message from a peer. Messages for another node are ignored. */
  step(m: Message): void {
    if (m.to !== this.id || m.from === this.id) return;
    // ReadIndex forwarding is not part of the term protocol: a stale answer is still a valid read point.
    if (m.type === 'readIndex') {
      // Only the leader serves it; anyone else drops it and the requester times out and retries.
      if (this.role === 'leader') this.leaderReadIndex(m.ctx, m.from);
      return;
    }
    if (m.type === 'readIndexResp') {
      this.readStates.push({ ctx: m.ctx, index: m.index });
      return;
    }

    if (m.term > this.term) {
      if (m.type === 'vote' || m.type === 'preVote') {
        // Leader lease: while we hear from a live leader, ignore disruptive candidates (unless the leader asked).
        const inLease = this.checkQuorum && this.lead !== null && this.electionElapsed < this.electionTimeoutTicks;
        if (inLease && !m.transfer) return;
      }
      if (m.type === 'preVote') {
        // A pre-vote never changes our term.
      } else if (m.type === 'preVoteResp' && !m.reject) {
        // A granted pre-vote carries the term we would campaign in; handled by the pre-candidate below.
      } else {
        const lead = m.type === 'app' || m.type === 'heartbeat' || m.type === 'snap' ? m.from : null;
        this.becomeFollower(m.term, lead);
      }
    } else if (m.term < this.term) {
      if ((this.checkQuorum || this.preVote) && (m.type === 'app' || m.type === 'heartbeat')) {
        // A stale leader cut off by a partition learns our term and steps down (otherwise it could hold a
        // follower that ignores votes under check-quorum forever).
        this.send({ type: 'appResp', from: this.id, to: m.from, term: this.term, index: 0, reject: false, rejectHint: 0, logTerm: 0 });
      } else if (m.type === 'preVote') {
        this.send({ type: 'preVoteResp', from: this.id, to: m.from, term: this.term, reject: true });
      }
      return;
    }

    if (isVoteRequest(m)) {
      this.handleVote(m);
      return;
    }
    switch (this.role) {
      case 'leader':
        this.stepLeader(m);
        break;
      case 'candidate':
      case 'preCandidate':
        this.stepCandidate(m);
        break;
      case 'follower':
        this.stepFollower(m);
        break;
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Roles

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = null;
    }
    this.lead = null;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.resetRandomizedElectionTimeout();
    this.leadTransferee = null;
    this.votes.clear();
    this.prs.clear();
    this.pendingReads = [];
    this.readsAwaitingCommit = [];
    this.uncommittedBytes = 0;
  }

  private resetRandomizedElectionTimeout(): void {
    this.randomizedElectionTimeout = this.electionTimeoutTicks + this.random.int(this.electionTimeoutTicks);
  }

  private becomeFollower(term: number, lead: NodeId | null): void {
    this.reset(term);
    this.lead = lead;
    this.role = 'follower';
  }

  private becomePreCandidate(): void {
    // Term and vote are untouched: a pre-vote round that fails leaves no trace.
    this.votes.clear();
    this.prs.clear();
    this.lead = null;
    this.role = 'preCandidate';
    this.electionElapsed = 0;
    this.resetRandomizedElectionTimeout();
  }

  private becomeCandidate(): void {
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = 'candidate';
  }

  private becomeLeader(): void {
    this.reset(this.term);
    this.lead = this.id;
    this.role = 'leader';
    this.syncProgress();
    // §8: a no-op of the new term lets the leader commit (and learn the commit index) promptly.
    this.appendEntry('empty', new Uint8Array(0));
  }

  /** Keeps one Progress per other member of the configuration (leader only). */
  private syncProgress(): void {
    const members = new Set([...this.conf.voters, ...this.conf.learners]);
    members.delete(this.id);
    for (const id of [...this.prs.keys()]) if (!members.has(id)) this.prs.delete(id);
    for (const id of members) {
      // New members get a grace period for check-quorum: they have had no chance to answer yet.
      if (!this.prs.has(id)) this.prs.set(id, new Progress(this.log.lastIndex() + 1, this.maxInflightMsgs, true));
    }
    if (this.leadTransferee !== null && !this.isVoter(this.leadTransferee)) this.leadTransferee = null;
  }

  private campaign(kind: 'preVote' | 'vote', transfer: boolean): void {
    if (!this.promotable()) return;
    let voteTerm: number;
    if (kind === 'preVote') {
      this.becomePreCandidate();
      voteTerm = this.term + 1;
    } else {
      this.becomeCandidate();
      voteTerm = this.term;
    }
    if (this.poll(this.id, true) === 'won') {
      if (kind === 'preVote') this.campaign('vote', false);
      else this.becomeLeader();
      return;
    }
    for (const voter of this.conf.voters) {
      if (voter === this.id) continue;
      this.send({ type: kind, from: this.id, to: voter, term: voteTerm, lastIndex: this.log.lastIndex(), lastTerm: this.log.lastTerm(), transfer });
    }
  }

  private poll(from: NodeId, granted: boolean): 'won' | 'lost' | 'pending' {
    if (!this.isVoter(from)) return 'pending';
    if (!this.votes.has(from)) this.votes.set(from, granted);
    let yes = 0;
    let no = 0;
    for (const [id, v] of this.votes) {
      if (!this.isVoter(id)) continue;
      if (v) yes++;
      else no++;
    }
    const q = this.quorum();
    if (yes >= q) return 'won';
    if (no > this.conf.voters.length - q) return 'lost';
    return 'pending';
  }

  private handleVote(m: VoteMessage): void {
    const respType = m.type === 'vote' ? 'voteResp' : 'preVoteResp';
    // §5.2 one vote per term; a pre-vote for a future term is not a vote. §5.4.1 only for an up-to-date log.
    const canVote = this.vote === m.from || (this.vote === null && this.lead === null) || (m.type === 'preVote' && m.term > this.term);
    if (canVote && this.log.isUpToDate(m.lastIndex, m.lastTerm)) {
      this.send({ type: respType, from: this.id, to: m.from, term: m.term, reject: false });
      if (m.type === 'vote') {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ type: respType, from: this.id, to: m.from, term: this.term, reject: true });
    }
  }

  private stepCandidate(m: Exclude<Message, VoteMessage>): void {
    switch (m.type) {
      case 'app':
      case 'heartbeat':
      case 'snap':
        // §5.2: a candidate that hears from a leader of its term (or newer) returns to follower.
        this.becomeFollower(m.term, m.from);
        this.stepFollower(m);
        return;
      case 'voteResp':
      case 'preVoteResp': {
        if ((m.type === 'voteResp') !== (this.role === 'candidate')) return;
        const result = this.poll(m.from, !m.reject);
        if (result === 'won') {
          if (this.role === 'preCandidate') this.campaign('vote', false);
          else this.becomeLeader();
        } else if (result === 'lost') {
          this.becomeFollower(this.term, null);
        }
        return;
      }
      default:
        return;
    }
  }

  private stepFollower(m: Exclude<Message, VoteMessage>): void {
    switch (m.type) {
      case 'app':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        return;
      case 'heartbeat':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case 'snap':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshot(m);
        return;
      case 'timeoutNow':
        // Leader transfer: campaign at once, skipping pre-vote; our vote requests bypass the receivers' leases.
        this.campaign('vote', true);
        return;
      default:
        return;
    }
  }

  private stepLeader(m: Exclude<Message, VoteMessage>): void {
    const pr = this.prs.get(m.from);
    switch (m.type) {
      case 'appResp':
        if (pr) this.handleAppendResponse(m, pr);
        return;
      case 'heartbeatResp':
        if (pr) this.handleHeartbeatResponse(m, pr);
        return;
      case 'snapResp':
        if (pr) this.handleSnapshotResponse(m, pr);
        return;
      default:
        return;
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Leader

  private tickLeader(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTimeoutTicks) {
      this.electionElapsed = 0;
      if (this.checkQuorum && !this.quorumActive()) {
        this.becomeFollower(this.term, null);
        return;
      }
      this.leadTransferee = null; // a transfer that did not finish within an election timeout is abandoned
    }
    if (this.heartbeatElapsed >= this.heartbeatIntervalTicks) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat();
    }
  }

  /** Check-quorum: did a quorum of voters (counting ourselves) talk to us since the last round? Resets the marks. */
  private quorumActive(): boolean {
    let active = 0;
    for (const v of this.conf.voters) {
      if (v === this.id) active++;
      else if (this.prs.get(v)?.recentActive) active++;
    }
    for (const pr of this.prs.values()) pr.recentActive = false;
    return active >= this.quorum();
  }

  private checkCanPropose(bytes: number): void {
    if (this.role !== 'leader') throw new NotLeaderError(this.lead);
    if (this.leadTransferee !== null) throw new ProposalDroppedError(`leader transfer to ${this.leadTransferee} in progress`);
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.maxUncommittedEntriesBytes) {
      throw new ProposalDroppedError(`more than ${this.maxUncommittedEntriesBytes} bytes uncommitted`);
    }
  }

  private appendEntry(type: Entry['type'], data: Uint8Array): ProposalRef {
    const entry: Entry = { term: this.term, index: this.log.lastIndex() + 1, type, data };
    this.log.append([entry]);
    this.uncommittedBytes += data.length;
    if (type === 'conf') {
      this.conf = this.log.confAt(entry.index);
      this.syncProgress();
    }
    this.maybeCommit();
    this.pendingBcast = true; // sent by ready(): proposals of one turn share one AppendEntries per follower
    return { index: entry.index, term: entry.term };
  }

  /** §5.3/§5.4.2: commit the highest index held by a quorum of voters, but only if it is from the current term. */
  private maybeCommit(): boolean {
    const voters = this.conf.voters;
    if (voters.length === 0) return false;
    const matches = voters.map((v) => (v === this.id ? this.log.lastIndex() : (this.prs.get(v)?.match ?? 0))).sort((a, b) => b - a);
    const mci = matches[this.quorum() - 1] ?? 0;
    if (mci <= this.log.committed) return false;
    if (this.log.term(mci) !== this.term && !this.unsafe.commitOldTermByCounting) return false;
    const old = this.log.committed;
    this.log.commitTo(mci);
    for (let i = old + 1; i <= mci; i++) this.uncommittedBytes -= this.log.entry(i)?.data.length ?? 0;
    if (this.uncommittedBytes < 0) this.uncommittedBytes = 0;
    this.onLeaderCommit();
    return true;
  }

  private onLeaderCommit(): void {
    // Reads that waited for this term's first commit can now start their heartbeat round.
    if (this.readsAwaitingCommit.length > 0 && this.log.term(this.log.committed) === this.term) {
      const waiting = this.readsAwaitingCommit;
      this.readsAwaitingCommit = [];
      for (const r of waiting) this.leaderReadIndex(r.ctx, r.from);
    }
    // A leader that removed (or demoted) itself steps down once that configuration is committed.
    if (!this.isVoter(this.id) && this.log.lastConfIndex() <= this.log.committed && this.log.lastConfIndex() > 0) {
      this.becomeFollower(this.term, null);
    }
  }

  /**
   * Sends the coalesced broadcast: to each follower its pending entries (bounded by maxSizePerMsgBytes and
   * maxInflightMsgs as in sendAppend) and, when it has not yet been sent the current commit index in an append, an
   * empty append carrying it so followers learn commits promptly (not only at the next heartbeat).
   */
  private flushBcast(): void {
    if (!this.pendingBcast) return;
    this.pendingBcast = false;
    if (this.role !== 'leader') return;
    for (const [id, pr] of this.prs) this.sendAppend(id, pr.sentCommit < this.log.committed);
  }

  private bcastHeartbeat(): void {
    const ctx = this.pendingReads[this.pendingReads.length - 1]?.ctx ?? null;
    for (const [id, pr] of this.prs) {
      const hb: HeartbeatMessage = { type: 'heartbeat', from: this.id, to: id, term: this.term, commit: Math.min(pr.match, this.log.committed), ctx };
      this.send(hb);
    }
  }

  /** Sends one AppendEntries (or starts a snapshot) to `to` unless its progress is paused. Returns whether it sent entries. */
  private sendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.prs.get(to);
    if (!pr) return false;
    if (pr.state === 'snapshot' || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    if (prevTerm === undefined) {
      this.startSnapshot(to, pr);
      return false;
    }
    const entries = this.log.slice(pr.next, this.log.lastIndex() + 1, this.maxSizePerMsgBytes);
    if (entries.length === 0 && !sendIfEmpty) return false;
    const msg: AppendMessage = { type: 'app', from: this.id, to, term: this.term, index: prevIndex, logTerm: prevTerm, entries, commit: this.log.committed };
    this.send(msg);
    pr.sentCommit = Math.max(pr.sentCommit, msg.commit);
    const last = entries[entries.length - 1];
    if (pr.state === 'replicate' && last) {
      // Pipelining: assume success and move on; a rejection falls back to probe.
      pr.next = last.index + 1;
      pr.inflights.push(last.index);
    } else if (pr.state === 'probe') {
      pr.probeSent = true;
    }
    return entries.length > 0;
  }

  private startSnapshot(to: NodeId, pr: Progress): void {
    const snapshot = this.log.snapshot;
    if (!snapshot) throw new RaftInvariantError(`entry ${pr.next - 1} compacted but no snapshot held`);
    pr.becomeSnapshot(snapshot);
    this.sendSnapshotChunk(to, pr);
  }

  /** Stop-and-wait chunk transfer: one chunk in flight, resent from the acknowledged offset on each heartbeat answer. */
  private sendSnapshotChunk(to: NodeId, pr: Progress): void {
    const snapshot = pr.snapshot;
    if (!snapshot) return;
    const offset = Math.min(pr.snapOffset, snapshot.data.length);
    const data = snapshot.data.subarray(offset, offset + this.snapshotChunkBytes);
    const msg: SnapshotMessage = { type: 'snap', from: this.id, to, term: this.term, meta: snapshot.meta, offset, totalBytes: snapshot.data.length, data };
    this.send(msg);
  }

  private handleAppendResponse(m: AppendResponseMessage, pr: Progress): void {
    pr.recentActive = true;
    if (m.reject) {
      const hint = m.logTerm > 0 ? this.log.findConflictByTerm(m.rejectHint, m.logTerm) : m.rejectHint;
      if (pr.maybeDecrTo(m.index, hint)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.sendAppend(m.from, true);
      }
      return;
    }
    if (!pr.maybeUpdate(m.index)) return;
    if (pr.state === 'probe') pr.becomeReplicate();
    else if (pr.state === 'snapshot' && pr.snapshot && pr.match >= pr.snapshot.meta.index) {
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === 'replicate') pr.freeInflightsUpTo(m.index);

    if (this.maybeCommit()) {
      if (this.role !== 'leader') return;
      // The new commit index goes out when ready() flushes: once for all responses handled in this turn, and only to
      // followers not already told it by an append sent meanwhile (see flushBcast).
      this.pendingBcast = true;
    }
    while (this.sendAppend(m.from, false)) {
      // keep the pipeline full up to maxInflightMsgs
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
      this.send({ type: 'timeoutNow', from: this.id, to: m.from, term: this.term });
    }
  }

  private handleHeartbeatResponse(m: HeartbeatResponseMessage, pr: Progress): void {
    pr.recentActive = true;
    pr.probeSent = false;
    // A lost append would otherwise stall a full pipeline forever: let one more through per heartbeat.
    if (pr.state === 'replicate' && pr.isPaused()) pr.inflights.shift();
    if (pr.state === 'snapshot') this.sendSnapshotChunk(m.from, pr);
    else if (pr.match < this.log.lastIndex()) this.sendAppend(m.from, true);
    if (m.ctx !== null) this.ackRead(m.ctx, m.from);
  }

  private handleSnapshotResponse(m: SnapshotResponseMessage, pr: Progress): void {
    pr.recentActive = true;
    const snapshot = pr.snapshot;
    if (pr.state !== 'snapshot' || !snapshot || snapshot.meta.index !== m.index) return;
    // Equal offsets are duplicates; resending on them would double every later chunk.
    if (m.offset === pr.snapOffset) return;
    pr.snapOffset = Math.min(m.offset, snapshot.data.length);
    this.sendSnapshotChunk(m.from, pr);
  }

  private leaderReadIndex(ctx: string, from: NodeId): void {
    if (this.conf.voters.length === 1 && this.isVoter(this.id)) {
      this.releaseRead({ ctx, from, index: this.log.committed, acks: new Set() });
      return;
    }
    if (this.log.term(this.log.committed) !== this.term) {
      this.readsAwaitingCommit.push({ ctx, from });
      return;
    }
    const acks = new Set<NodeId>();
    if (this.isVoter(this.id)) acks.add(this.id);
    this.pendingReads.push({ ctx, from, index: this.log.committed, acks });
    this.bcastHeartbeat();
  }

  private ackRead(ctx: string, from: NodeId): void {
    const at = this.pendingReads.findIndex((r) => r.ctx === ctx);
    const read = this.pendingReads[at];
    if (!read || !this.isVoter(from)) return;
    read.acks.add(from);
    let count = 0;
    for (const id of read.acks) if (this.isVoter(id)) count++;
    if (count < this.quorum()) return;
    // Confirming a later round confirms every earlier one too: leadership held at a later instant.
    const released = this.pendingReads.splice(0, at + 1);
    for (const r of released) this.releaseRead(r);
  }

  private releaseRead(r: PendingRead): void {
    if (r.from === this.id) this.readStates.push({ ctx: r.ctx, index: r.index });
    else this.send({ type: 'readIndexResp', from: this.id, to: r.from, term: this.term, ctx: r.ctx, index: r.index });
  }

  // ---------------------------------------------------------------------------------------------------------
  // Follower

  private handleAppend(m: AppendMessage): void {
    const reply = (fields: { index: number; reject: boolean; rejectHint: number; logTerm: number }): void =>
      this.send({ type: 'appResp', from: this.id, to: m.from, term: this.term, ...fields });
    if (m.index < this.log.committed) {
      reply({ index: this.log.committed, reject: false, rejectHint: 0, logTerm: 0 });
      return;
    }
    const matches = this.log.matchTerm(m.index, m.logTerm) || (this.unsafe.skipLogMatchingCheck === true && m.index <= this.log.lastIndex());
    if (!matches) {
      // Fast backtracking: point the leader at the last index whose term could still match its log.
      const hintIndex = this.log.findConflictByTerm(Math.min(m.index, this.log.lastIndex()), m.logTerm);
      reply({ index: m.index, reject: true, rejectHint: hintIndex, logTerm: this.log.term(hintIndex) ?? 0 });
      return;
    }
    const lastNew = m.index + m.entries.length;
    const conflict = this.log.findConflict(m.entries);
    if (conflict > 0) {
      const first = m.entries[0];
      if (first === undefined) throw new RaftInvariantError('conflict without entries');
      this.log.append(m.entries.slice(conflict - first.index));
      this.conf = this.log.confAt(this.log.lastIndex());
    }
    this.log.commitTo(Math.min(m.commit, lastNew));
    reply({ index: lastNew, reject: false, rejectHint: 0, logTerm: 0 });
  }

  private handleHeartbeat(m: HeartbeatMessage): void {
    this.log.commitTo(Math.min(m.commit, this.log.lastIndex()));
    this.send({ type: 'heartbeatResp', from: this.id, to: m.from, term: this.term, ctx: m.ctx });
  }

  private handleSnapshot(m: SnapshotMessage): void {
    const ackIndex = (index: number): void =>
      this.send({ type: 'appResp', from: this.id, to: m.from, term: this.term, index, reject: false, rejectHint: 0, logTerm: 0 });
    if (m.meta.index <= this.log.committed) {
      this.incoming = null;
      ackIndex(this.log.committed);
      return;
    }
    const inc = this.incoming;
    const same = inc !== null && inc.from === m.from && inc.term === m.term && inc.index === m.meta.index && inc.snapTerm === m.meta.term;
    if (!same) {
      this.incoming = null;
      if (m.offset !== 0) {
        this.send({ type: 'snapResp', from: this.id, to: m.from, term: this.term, index: m.meta.index, offset: 0 });
        return;
      }
      this.incoming = { from: m.from, term: m.term, index: m.meta.index, snapTerm: m.meta.term, chunks: [], received: 0 };
    }
    const cur = this.incoming;
    if (cur === null) return;
    if (m.offset !== cur.received) {
      this.send({ type: 'snapResp', from: this.id, to: m.from, term: this.term, index: m.meta.index, offset: cur.received });
      return;
    }
    cur.chunks.push(m.data);
    cur.received += m.data.length;
    if (cur.received < m.totalBytes) {
      this.send({ type: 'snapResp', from: this.id, to: m.from, term: this.term, index: m.meta.index, offset: cur.received });
      return;
    }
    this.incoming = null;
    const data = new Uint8Array(cur.received);
    let at = 0;
    for (const c of cur.chunks) {
      data.set(c, at);
      at += c.length;
    }
    ackIndex(this.restore({ meta: m.meta, data }) ? this.log.lastIndex() : this.log.committed);
  }

  /** §7: install a snapshot unless our log already holds its last entry (then it only advances commit). */
  private restore(snapshot: Snapshot): boolean {
    const { index, term } = snapshot.meta;
    if (this.log.matchTerm(index, term)) {
      this.log.commitTo(index);
      return false;
    }
    this.log.restore(snapshot);
    this.conf = snapshot.meta.conf;
    this.readySnapshot = snapshot;
    return true;
  }

  private send(m: Message): void {
    this.msgs.push(m);
  }
}

/** The configuration after one single-server change; throws ConfChangeInvalidError for a no-op or the last voter. */
export function applyConfChange(conf: ConfState, change: ConfChange): ConfState {
  const voters = conf.voters.filter((v) => v !== change.nodeId);
  const learners = conf.learners.filter((v) => v !== change.nodeId);
  const isVoter = conf.voters.includes(change.nodeId);
  const isLearner = conf.learners.includes(change.nodeId);
  switch (change.type) {
    case 'addVoter':
      if (isVoter) throw new ConfChangeInvalidError(`${change.nodeId} is already a voter`);
      voters.push(change.nodeId);
      break;
    case 'addLearner':
      if (isLearner) throw new ConfChangeInvalidError(`${change.nodeId} is already a learner`);
      learners.push(change.nodeId);
      break;
    case 'removeNode':
      if (!isVoter && !isLearner) throw new ConfChangeInvalidError(`${change.nodeId} is not a member`);
      break;
  }
  if (voters.length === 0) throw new ConfChangeInvalidError('a configuration needs at least one voter');
  return { voters, learners, votersOutgoing: [] };
}

function isVoteRequest(m: Message): m is VoteMessage {
  return m.type === 'vote' || m.type === 'preVote';
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}
