// The cluster service: Raft over the mesh with the cluster state machine, owned by NovaNode. A node whose
// <dataDir>/raft store was initialised (or holds the joined marker) reopens it at start (snapshot restored, log
// replayed); a fresh node runs without Raft until `cluster init` founds a one-voter cluster or `cluster join`
// joins one.
// - Writes from any node: a follower forwards the command to the leader over /novacron/cluster/1.0.0 (members
//   only) and answers once the entry is applied here too, so the caller reads its own write on this node.
// - Reads: linearizable through ReadIndex by default; stale on request, with the age of the data.
// - Join tokens live in the replicated state: any member redeems one (joinToken.use adds the joiner as a learner
//   member atomically), and the leader's reconcile loop makes the Raft configuration follow the member list
//   (learners in, removed members out) and keeps 3 or 5 voters spread over sites (voters.ts decides).
// - The mesh's membership gate follows the member list once the cluster exists.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  ClusterError,
  ClusterStateMachine,
  auditPageMax,
  encodeCommand,
  hashSecret,
  type Actor,
  type ApiRole,
  type ApiToken,
  type ApplyResult,
  type AuditRecord,
  type ClusterCommand,
  type CommandOf,
  type JoinToken,
  type Member,
  type Settings,
  validateCommand,
} from '../../consensus/cluster/index.js';
import { NotLeaderError, ProposalDroppedError, RaftNode, RaftOverloadedError, ReadTimeoutError, type RaftStatus } from '../../consensus/driver.js';
import type { ConfChange } from '../../consensus/core/messages.js';
import { Xoshiro128 } from '../../consensus/core/random.js';
import { LevelRaftStorage } from '../../consensus/storage/index.js';
import type { ConfState } from '../../consensus/types.js';
import { JoinTokenCode, JoinTokenError, MeshAnswerLostError, MeshPeerUnreachableError, MeshRemoteError, MeshStreamRefusedError, MeshTimeoutError } from '../../mesh/errors.js';
import { encodeJoinToken, hashSecret as hashJoinSecret, joinTokenBootstrapMax, joinTokenIdBytes, joinTokenSecretBytes, type JoinTokenInfo, type JoinTokenPayload } from '../../mesh/join-token.js';
import type { JoinerInfo, JoinResult, Mesh } from '../../mesh/mesh.js';
import type { TelemetrySample } from '../../mesh/telemetry.js';
import type { NodeConfig } from '../config/schema.js';
import { ConfigError, NovaError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RaftMetricsSource } from '../metrics.js';
import { nextVoterAction, type VoterAction, type VoterInputs } from './voters.js';
import { MeshRaftTransport } from '../raft-transport.js';
import {
  buildInitCommand,
  createdTokenPrefix,
  generateApiTokenSecret,
  hasJoinedMarker,
  isStoreInitialised,
  memberAddresses,
  memberNameFrom,
  raftDbDirName,
  readBootstrapConf,
  writeBootstrapConf,
  writeJoinedMarker,
} from './bootstrap.js';

/** How often init and writes poll for a (new) leader. */
const leaderPollIntervalMs = 20;
/** How often the leader reconciles the Raft configuration with the member list (voters.ts). */
export const reconcileIntervalMs = 500;
/** Membership changes the leader makes per reconcile round (each waits for the previous to apply). */
export const reconcileActionsPerRoundMax = 4;
/** Pause between retries of a membership change refused because another one is still uncommitted. */
const confRetryIntervalMs = 50;
/** Members-only protocol carrying forwarded writes to the leader. */
export const clusterProtocol = '/novacron/cluster/1.0.0';
/** Forwarded requests handled at once per connection: 64 API clients on one follower share one connection. */
export const clusterInboundStreamsMax = 256;
/** Attempts of one write across leader changes (only when the leader surely did not take it). */
export const forwardAttemptsMax = 5;
/**
 * Forward requests a follower has in flight to one leader; writes arriving while all are busy wait and go together
 * in the next. One batches the most: with 4, bench:cluster (64 clients) measured more server CPU per forwarded
 * write and no more writes/s.
 */
export const forwardRequestsInFlightMax = 1;
/** Writes a follower sends to the leader in one proposeBatch request; also the most the leader accepts in one. */
export const forwardBatchCommandsMax = 256;
/** Encoded commands in one forwarded batch: with JSON framing it stays well under the mesh's 1 MiB message limit. */
export const forwardBatchBytesMax = 512 * 1024;
/** Writes queued on a follower behind the forwards in flight; more are refused (raft_overloaded) rather than queued. */
export const forwardQueuedMax = 8_192;
/** How long `join` waits for the joiner to catch up to cluster.init before answering (it catches up anyway). */
const joinCatchUpWaitMs = 10_000;
/** A member this node is not connected to is dialled at its recorded addresses at most this often. */
export const memberRedialIntervalMs = 5_000;
/** Pause between attempts to correct this node's addresses in the member list. */
const addressUpdateIntervalMs = 10_000;
/** Redial timestamps kept (one per member; cleared if members churn past it). */
const membersRedialTrackedMax = 4_096;
/** A write waits this many election timeouts for a leader before answering no_quorum. */
const leaderWaitElectionTimeouts = 3;

/** What the issuer answers a joiner of a Raft-initialised cluster (carried in the mesh join answer). */
export interface JoinRaftInfo {
  clusterId: string;
  leader: string;
  voters: string[];
  learners: string[];
}

export interface ClusterJoinResult extends JoinResult {
  /** Set when the issuer's cluster runs Raft: this node then opened Raft as a joiner. */
  raft?: JoinRaftInfo;
}

export class ClusterAlreadyInitializedError extends NovaError {
  constructor(clusterId: string | null) {
    super('cluster_already_initialized', `this node already belongs to cluster ${clusterId ?? '(being initialised)'}`, { details: { clusterId } });
  }
}

export class NoLeaderError extends NovaError {
  constructor(message: string) {
    super('no_leader', message);
  }
}

/** This node cannot reach a majority of the voters: writes and linearizable reads are refused (503). */
export class NoQuorumError extends NovaError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('no_quorum', message, details === undefined ? {} : { details });
  }
}

/** A forwarded write whose answer never came: it may or may not have been applied (504). */
export class WriteOutcomeUnknownError extends NovaError {
  constructor(message: string, cause: unknown) {
    super('write_outcome_unknown', message, { cause });
  }
}

/** The leader refused a forwarded write: its error code and message, as if it were refused here. */
export class RemoteClusterError extends NovaError {
  constructor(code: string, message: string, leader: string) {
    super(code, message, { details: { leader } });
  }
}

/** How a read was served: through a ReadIndex point, from local state on request, or locally before any cluster. */
export interface ReadInfo {
  consistency: 'linearizable' | 'stale' | 'local';
  /** How old the local state may be (ms): 0 after a read point; null when unknown (never heard a leader). */
  dataAgeMs: number | null;
}

/** A member as `node list|show` presents it: the record, its Raft role and how this node sees it now. */
export interface NodeView extends Member {
  /** leader, voter or learner in the Raft configuration this node knows; none when not in it (yet). */
  raftRole: 'leader' | 'voter' | 'learner' | 'none';
  self: boolean;
  /** Connected now, or its telemetry is fresh. */
  reachable: boolean;
  rttMs: number | null;
  /** Replication match index (answered by the leader only). */
  match: number | null;
  telemetry: { ageMs: number; sample: TelemetrySample } | null;
}

/**
 * A forwarded request: a write, writes collected on a follower while its forwards were in flight (proposed
 * together, each answered on its own), or a node removal (the leader first takes the node out of the configuration).
 */
export type PeerRequest =
  | { op: 'propose'; command: ClusterCommand }
  | { op: 'proposeBatch'; commands: ClusterCommand[] }
  | { op: 'removeNode'; command: CommandOf<'member.remove'> };

/** A request as this node submits it; batches are only formed on the way to the leader (ForwardBatcher). */
type SubmitRequest = Exclude<PeerRequest, { op: 'proposeBatch' }>;

/** One command's outcome in a batch: its apply result, or the leader's refusal with the code it would have answered. */
export type BatchItemAnswer = { ok: true; result: ApplyResult } | { ok: false; code: string; message: string };

export interface ProposeBatchAnswer {
  results: BatchItemAnswer[];
}

type PeerAnswer = ApplyResult | ProposeBatchAnswer;

export function validatePeerRequest(v: unknown): PeerRequest {
  if (typeof v !== 'object' || v === null) throw new Error('expected { op, command }');
  const r = v as Record<string, unknown>;
  if (r.op === 'proposeBatch') {
    // Peer input: bounded before anything is proposed, and every command validated like a single one.
    if (!Array.isArray(r.commands) || r.commands.length === 0 || r.commands.length > forwardBatchCommandsMax) {
      throw new Error(`expected 1..${forwardBatchCommandsMax} commands`);
    }
    return { op: 'proposeBatch', commands: r.commands.map((c) => validateCommand(c)) };
  }
  const command = validateCommand(r.command);
  if (r.op === 'propose') return { op: 'propose', command };
  if (r.op === 'removeNode' && command.type === 'member.remove') return { op: 'removeNode', command };
  throw new Error('unknown op');
}

function validateApplyResult(v: unknown): ApplyResult {
  if (typeof v !== 'object' || v === null) throw new Error('expected an apply result');
  const r = v as Record<string, unknown>;
  if (!Number.isSafeInteger(r.index) || typeof r.type !== 'string' || !Array.isArray(r.ids) || !Number.isSafeInteger(r.auditSeq)) throw new Error('bad apply result');
  return v as ApplyResult;
}

export function validateBatchAnswer(v: unknown, commands: number): ProposeBatchAnswer {
  if (typeof v !== 'object' || v === null) throw new Error('expected { results }');
  const results = (v as Record<string, unknown>).results;
  if (!Array.isArray(results) || results.length !== commands) throw new Error(`expected ${commands} results`);
  return {
    results: results.map((x: unknown): BatchItemAnswer => {
      const r = (typeof x === 'object' && x !== null ? x : {}) as Record<string, unknown>;
      if (r.ok === true) return { ok: true, result: validateApplyResult(r.result) };
      if (r.ok === false && typeof r.code === 'string' && typeof r.message === 'string') return { ok: false, code: r.code, message: r.message };
      throw new Error('bad batch result');
    }),
  };
}

/** A write waiting on a follower to be forwarded to the leader in the next batch. */
interface QueuedWrite {
  command: ClusterCommand;
  /** Encoded size, for the batch byte bound. */
  bytes: number;
  resolve(result: ApplyResult): void;
  reject(err: unknown): void;
}

/** Writes forwarded to one leader: requests in flight (bounded); writes arriving while all are busy wait in `queue`. */
interface ForwardLane {
  queue: QueuedWrite[];
  inFlight: number;
}

/** One forwarded write's outcome; errors are shaped as the single-write request raises them (see submit). */
export type ForwardOutcome = { ok: true; result: ApplyResult } | { ok: false; error: unknown };

/** What a ForwardBatcher needs of its node: one request to the leader for some writes, and a wait for local apply. */
export interface ForwardLink {
  /** `propose` for one write, `proposeBatch` for more; per-write outcomes in order, or throws for the request. */
  send(leader: string, commands: ClusterCommand[]): Promise<ForwardOutcome[]>;
  waitApplied(index: number): Promise<void>;
}

/**
 * A follower's forwarded writes, per leader: at most forwardRequestsInFlightMax requests in flight; writes arriving
 * while all are busy are sent together (bounded in count and bytes) as soon as one is answered. Each write settles
 * with its own outcome, shaped as a single request's, once applied here (one wait for the batch's highest index).
 */
export class ForwardBatcher {
  private readonly lanes = new Map<string, ForwardLane>();
  private queuedCount = 0;

  constructor(private readonly link: ForwardLink) {}

  /** Writes waiting behind a request in flight (not yet sent). */
  get queued(): number {
    return this.queuedCount;
  }

  forward(leader: string, command: ClusterCommand, bytes: number): Promise<ApplyResult> {
    if (this.queuedCount >= forwardQueuedMax) {
      return Promise.reject(new RaftOverloadedError(`${forwardQueuedMax} writes already queued for the leader`));
    }
    let lane = this.lanes.get(leader);
    if (lane === undefined) {
      lane = { queue: [], inFlight: 0 };
      this.lanes.set(leader, lane);
    }
    const promise = new Promise<ApplyResult>((resolve, reject) => lane.queue.push({ command, bytes, resolve, reject }));
    this.queuedCount++;
    this.pump(leader, lane);
    return promise;
  }

  /** Sends the lane's next batch if a request slot is free; drops an idle lane. */
  private pump(leader: string, lane: ForwardLane): void {
    if (lane.inFlight >= forwardRequestsInFlightMax) return;
    if (lane.queue.length === 0) {
      if (lane.inFlight === 0) this.lanes.delete(leader);
      return;
    }
    let bytes = 0;
    let take = 0;
    for (const w of lane.queue) {
      // The first always goes: a single command is bounded by commandBytesMax, far below the batch bound.
      if (take > 0 && (take >= forwardBatchCommandsMax || bytes + w.bytes > forwardBatchBytesMax)) break;
      bytes += w.bytes;
      take++;
    }
    const batch = lane.queue.splice(0, take);
    this.queuedCount -= batch.length;
    lane.inFlight++;
    void this.sendBatch(leader, lane, batch);
  }

  private async sendBatch(leader: string, lane: ForwardLane, batch: QueuedWrite[]): Promise<void> {
    let outcomes: ForwardOutcome[];
    try {
      outcomes = await this.link.send(leader, batch.map((w) => w.command));
      if (outcomes.length !== batch.length) throw new Error(`expected ${batch.length} outcomes, got ${outcomes.length}`);
    } catch (err) {
      // The request as a whole failed: every write gets that error, and submit decides per write (as for one).
      for (const w of batch) w.reject(err);
      return;
    } finally {
      // The lane is free once the leader answered: the next batch need not wait for the local apply below.
      lane.inFlight--;
      this.pump(leader, lane);
    }
    let maxIndex = 0;
    for (const [i, o] of outcomes.entries()) {
      if (o.ok) maxIndex = Math.max(maxIndex, o.result.index);
      else batch[i]?.reject(o.error);
    }
    if (maxIndex === 0) return;
    try {
      // Answer once applied here too, so each caller's next read on this node sees its write: one wait for all.
      await this.link.waitApplied(maxIndex);
    } catch (err) {
      for (const [i, o] of outcomes.entries()) if (o.ok) batch[i]?.reject(err);
      return;
    }
    for (const [i, o] of outcomes.entries()) if (o.ok) batch[i]?.resolve(o.result);
  }
}

/**
 * The leader's side of a forwarded batch: all proposed in this turn, in order, so they share one Ready (one fsync,
 * one append per follower); each answered on its own. A refusal of one (e.g. not_leader after leadership moved
 * mid-batch) does not touch the others: the sender retries only the writes refused so.
 */
export async function proposeBatch(propose: (command: Uint8Array) => Promise<unknown>, commands: readonly ClusterCommand[]): Promise<ProposeBatchAnswer> {
  const settled = await Promise.allSettled(commands.map(async (c) => (await propose(encodeCommand(c))) as ApplyResult));
  return {
    results: settled.map((r): BatchItemAnswer => (r.status === 'fulfilled' ? { ok: true, result: r.value } : { ok: false, code: errorCode(r.reason), message: errorText(r.reason) })),
  };
}

/** Per-write outcomes of a batch answer: a refusal becomes the MeshRemoteError a single request raises (same retry rule). */
export function batchOutcomes(answer: ProposeBatchAnswer, leader: string): ForwardOutcome[] {
  return answer.results.map((r): ForwardOutcome =>
    r.ok ? { ok: true, result: r.result } : { ok: false, error: new MeshRemoteError(r.message, { details: { remoteCode: r.code, peer: leader, protocol: clusterProtocol } }) },
  );
}

export interface ClusterServiceOptions {
  raftDir: string;
  config: NodeConfig['raft'];
  nodeName: string;
  mesh: Mesh;
  logger: Logger;
  /** Called once Raft runs (at start or at init), e.g. to register its metrics. */
  onRaftStarted?: (raft: RaftMetricsSource) => void;
}

export interface InitRequest {
  /** This node's member name; default: node.name as a DNS label. */
  name?: string | undefined;
  /** Client address, for the audit record. */
  from: string | null;
}

export interface InitResult {
  clusterId: string;
  adminToken: string;
  adminTokenId: string;
  node: Member;
  raft: RaftStatus;
}

export interface ClusterStatus {
  initialised: boolean;
  clusterId: string | null;
  nodeId: string;
  raft: { role: string; term: number; leader: string | null; commit: number; applied: number; snapshotIndex: number } | null;
  members: Member[];
  apiTokens: number;
}

/** Who asked for a change and from where: the `actor`/`from` of the command (set by the REST layer after auth). */
export interface Origin {
  actor: Actor;
  from: string | null;
}

export interface CreatedToken {
  token: ApiToken;
  /** Shown once to the caller; only its hash enters the log. */
  secret: string;
}

export interface AuditPage {
  records: readonly AuditRecord[];
  /** Oldest seq still held (older ones were dropped by the ring). */
  firstSeq: number;
  /** Seq the next record will get: pass the last record's seq as `after` to continue. */
  nextSeq: number;
}

export class ClusterService {
  readonly state = new ClusterStateMachine();
  private raftNode: RaftNode | null = null;
  private storage: LevelRaftStorage | null;
  private initialising = false;
  /** Raft was started by init in this process (not reopened from an initialised store). */
  private founding = false;
  private stopped = false;
  private joining = false;
  private reconcileTimer: NodeJS.Timeout | null = null;
  private reconciling = false;
  /** Leader only: since when each unreachable member has been unreachable (ms). */
  private readonly unhealthySinceMs = new Map<string, number>();
  /** When each member was last dialled from the member list (ms). */
  private readonly redialAtMs = new Map<string, number>();
  private addressUpdateAtMs = 0;
  /** Follower only: writes forwarded to the leader, batched while its request slots are busy. */
  private readonly forwarder = new ForwardBatcher({
    send: (leader, commands) => this.forwardRequest(leader, commands),
    waitApplied: (index) => this.requireRaft().waitApplied(index, this.options.config.proposalTimeoutMs),
  });

  private constructor(
    private readonly options: ClusterServiceOptions,
    storage: LevelRaftStorage,
  ) {
    this.storage = storage;
  }

  /** Opens the store; starts Raft if it was initialised. Installs the Raft-aware membership gate on the mesh. */
  static async start(options: ClusterServiceOptions): Promise<ClusterService> {
    const { config } = options;
    if (config.electionTimeoutTicks <= config.heartbeatIntervalTicks) {
      throw new ConfigError([{ key: 'raft.electionTimeoutTicks', message: `must exceed raft.heartbeatIntervalTicks (${config.heartbeatIntervalTicks})`, value: config.electionTimeoutTicks }]);
    }
    mkdirSync(options.raftDir, { recursive: true, mode: 0o700 });
    const storage = await LevelRaftStorage.open(join(options.raftDir, raftDbDirName));
    const service = new ClusterService(options, storage);
    try {
      const mesh = options.mesh;
      // Once the cluster exists the member list decides (a removed node gets nothing); before, the mesh's own list.
      mesh.setMemberProvider({ isMember: (p) => (service.state.getClusterId() !== null ? service.state.getMember(p) !== null : mesh.membership.isMember(p)) });
      mesh.setJoinHook({ redeem: (peer, token, joiner) => service.redeemJoin(peer, token, joiner) });
      await mesh.protocols.handleRequest<PeerRequest, PeerAnswer>(clusterProtocol, (req, ctx) => service.onPeerRequest(req, ctx.peer), {
        validate: validatePeerRequest,
        maxInboundStreams: clusterInboundStreamsMax,
        timeoutMs: options.config.proposalTimeoutMs + options.config.readTimeoutMs,
      });
      const initial = await storage.initialState();
      if (isStoreInitialised(initial) || hasJoinedMarker(options.raftDir)) {
        await service.startRaft(readBootstrapConf(options.raftDir) ?? undefined);
      } else {
        options.logger.info({ raftDir: options.raftDir }, 'no initialised raft store: running without raft until `cluster init`');
      }
      return service;
    } catch (err) {
      await service.stop();
      throw err;
    }
  }

  get initialised(): boolean {
    return this.raftNode !== null && this.state.getClusterId() !== null;
  }

  get raft(): RaftNode | null {
    return this.raftNode;
  }

  /**
   * True once API tokens must be checked: the cluster exists, or Raft was reopened from an initialised store
   * (its log may still be replaying). False on a fresh node and during a founding init.
   */
  get authEnforced(): boolean {
    return this.state.getClusterId() !== null || (this.raftNode !== null && !this.founding);
  }

  /** Raft was reopened from an initialised store but cluster.init is not replayed yet. */
  get loading(): boolean {
    return this.state.getClusterId() === null && this.raftNode !== null && !this.founding;
  }

  /** The live token whose secret this is (hashed with the cluster's hashSecret), or null. */
  verifyToken(secret: string): ApiToken | null {
    return this.state.verifyApiToken(hashSecret(secret));
  }

  /**
   * Proposes a command through Raft, from any node: a follower forwards it to the leader. Resolves once it is
   * applied here. Refusals reject with the state machine's ClusterError code; no_quorum when no leader can be
   * reached; write_outcome_unknown when the leader took it but its answer was lost.
   */
  async propose(cmd: ClusterCommand): Promise<ApplyResult> {
    return this.submit({ op: 'propose', command: cmd });
  }

  /**
   * Where a read should be served from. Default: a ReadIndex point (linearizable; no_quorum when this node cannot
   * reach a majority); `stale`: this node's state now, with its age. A node without a cluster reads locally.
   */
  async readPoint(stale: boolean): Promise<ReadInfo> {
    const raft = this.raftNode;
    if (raft === null || this.state.getClusterId() === null) return { consistency: 'local', dataAgeMs: null };
    if (stale) return { consistency: 'stale', dataAgeMs: raft.dataAgeMs() };
    const hint = 'read with ?stale=true to get this node\'s possibly stale state';
    if (raft.status().leader === null) throw new NoQuorumError(`no quorum: this node knows no leader (it cannot reach a majority of the voters); ${hint}`, { dataAgeMs: raft.dataAgeMs() });
    try {
      await untilLeaderLost(raft, raft.readBarrier());
    } catch (err) {
      if (err instanceof ReadTimeoutError || err instanceof NotLeaderError) {
        throw new NoQuorumError(`no quorum: no linearizable read point (${err.message}); ${hint}`, { dataAgeMs: raft.dataAgeMs() });
      }
      throw err;
    }
    return { consistency: 'linearizable', dataAgeMs: 0 };
  }

  private requireRaft(): RaftNode {
    const raft = this.raftNode;
    if (raft === null || this.state.getClusterId() === null) {
      throw new ClusterError('cluster_not_initialized', 'this node does not belong to a cluster yet: run `novacron cluster init` or join one');
    }
    return raft;
  }

  private get leaderWaitMs(): number {
    const c = this.options.config;
    return leaderWaitElectionTimeouts * c.electionTimeoutTicks * c.tickIntervalMs;
  }

  /** Runs a request on the leader, here or over the mesh, retrying across leader changes while it surely was not taken. */
  private async submit(req: SubmitRequest): Promise<ApplyResult> {
    const raft = this.requireRaft();
    const bytes = encodeCommand(req.command).byteLength; // a malformed command is refused here (400), not by the leader
    const self = this.options.mesh.peerId;
    let avoid: string | null = null;
    let lastError: unknown = null;
    for (let attempt = 1; attempt <= forwardAttemptsMax; attempt++) {
      const leader = await this.awaitLeader(raft, avoid);
      try {
        if (leader === self) return await this.executeAsLeader(raft, req);
        // Writes share requests to the leader; the answer comes once applied here, each write's errors its own.
        if (req.op === 'propose') return await this.forwarder.forward(leader, req.command, bytes);
        const result = await this.options.mesh.protocols.request(leader, clusterProtocol, req, {
          validate: validateApplyResult,
          timeoutMs: this.options.config.proposalTimeoutMs + this.options.config.readTimeoutMs,
        });
        // Answer once it is applied here too: the caller's next read on this node sees its write.
        await raft.waitApplied(result.index, this.options.config.proposalTimeoutMs);
        return result;
      } catch (err) {
        if (!leaderDidNotTakeIt(err)) throw fromLeader(err, leader);
        lastError = err;
        avoid = leader;
      }
    }
    throw new NoQuorumError(`no quorum: the write found no leader that would take it after ${forwardAttemptsMax} attempts (${errorText(lastError)})`);
  }

  /** One request to the leader for these writes: `propose` for one, `proposeBatch` for more. */
  private async forwardRequest(leader: string, commands: ClusterCommand[]): Promise<ForwardOutcome[]> {
    const { protocols } = this.options.mesh;
    const timeoutMs = this.options.config.proposalTimeoutMs + this.options.config.readTimeoutMs;
    const single = (command: ClusterCommand): Promise<ApplyResult> => protocols.request(leader, clusterProtocol, { op: 'propose', command }, { validate: validateApplyResult, timeoutMs });
    const [first] = commands;
    if (commands.length === 1 && first !== undefined) return [{ ok: true, result: await single(first) }];
    let answer: ProposeBatchAnswer;
    try {
      answer = await protocols.request(leader, clusterProtocol, { op: 'proposeBatch', commands }, { validate: (v) => validateBatchAnswer(v, commands.length), timeoutMs });
    } catch (err) {
      // A leader of an older version refuses proposeBatch at validation, before proposing anything: send them one by one.
      if (err instanceof MeshRemoteError && err.details?.remoteCode === 'mesh_invalid_message') {
        const settled = await Promise.allSettled(commands.map((c) => single(c)));
        return settled.map((r) => (r.status === 'fulfilled' ? { ok: true, result: r.value } : { ok: false, error: r.reason as unknown }));
      }
      throw err;
    }
    return batchOutcomes(answer, leader);
  }

  /** The leader's side of a request (forwarded by a peer, or this node's own). */
  private async executeAsLeader(raft: RaftNode, req: SubmitRequest): Promise<ApplyResult> {
    if (req.op === 'removeNode') return this.removeNodeAsLeader(raft, req.command);
    return (await raft.propose(encodeCommand(req.command))) as ApplyResult;
  }

  /**
   * A member's forwarded request: this node must be the leader (else not_leader for the whole request, refused
   * before anything was proposed, and the sender retries it all).
   */
  private async onPeerRequest(req: PeerRequest, peer: string): Promise<PeerAnswer> {
    const raft = this.requireRaft();
    const s = raft.status();
    if (s.role !== 'leader') throw new NotLeaderError(s.leader);
    if (req.op === 'proposeBatch') {
      this.options.logger.debug({ peer, op: req.op, commands: req.commands.length }, 'forwarded request');
      return proposeBatch((command) => raft.propose(command), req.commands);
    }
    this.options.logger.debug({ peer, op: req.op, type: req.command.type }, 'forwarded request');
    return this.executeAsLeader(raft, req);
  }

  /**
   * Waits for a known leader other than `avoid` (the one that just failed us), up to a few election timeouts;
   * returns `avoid` again if it is still the leader then, and throws no_quorum if there is none.
   */
  private async awaitLeader(raft: RaftNode, avoid: string | null): Promise<string> {
    const deadline = Date.now() + this.leaderWaitMs;
    for (;;) {
      const leader = raft.status().leader;
      if (leader !== null && leader !== avoid) return leader;
      if (Date.now() >= deadline) {
        if (leader !== null) return leader;
        throw new NoQuorumError(`no quorum: no leader for ${this.leaderWaitMs} ms (this node cannot reach a majority of the voters); the write was not made`, { dataAgeMs: raft.dataAgeMs() });
      }
      await sleep(leaderPollIntervalMs);
    }
  }

  /** Creates an API token; the secret (`ncapi_…`) is returned once. */
  async createToken(input: { name: string; role: ApiRole }, origin: Origin): Promise<CreatedToken> {
    const { secret, secretHash } = generateApiTokenSecret(undefined, createdTokenPrefix);
    const id = randomUUID();
    await this.propose({ type: 'token.create', at: Date.now(), actor: origin.actor, from: origin.from, id, name: input.name, role: input.role, secretHash });
    const token = this.state.getApiToken(id);
    if (token === null) throw new NovaError('internal', `token ${id} was applied but is not in the state`);
    return { token, secret };
  }

  /** Revokes an API token (idempotent); the state machine refuses to revoke the last live admin token. */
  async revokeToken(id: string, origin: Origin): Promise<ApiToken> {
    if (this.state.getApiToken(id) === null) throw new ClusterError('not_found', `no API token ${id}`);
    await this.propose({ type: 'token.revoke', at: Date.now(), actor: origin.actor, from: origin.from, id });
    const token = this.state.getApiToken(id);
    if (token === null) throw new ClusterError('not_found', `no API token ${id}`);
    return token;
  }

  getSettings(): Readonly<Settings> {
    return this.state.getSettings();
  }

  /** Changes cluster settings (voter count cap, voter replacement timeout); answered once applied here. */
  async updateSettings(change: Partial<Settings>, origin: Origin): Promise<Readonly<Settings>> {
    await this.propose({ type: 'settings.update', at: Date.now(), actor: origin.actor, from: origin.from, settings: change });
    return this.state.getSettings();
  }

  listTokens(): readonly ApiToken[] {
    return this.state.listApiTokens();
  }

  /** Audit records with seq > after, oldest first, at most `limit` (≤ auditPageMax). Served from this node's state. */
  auditPage(after: number, limit: number): AuditPage {
    return this.state.auditPage(after, Math.min(limit, auditPageMax));
  }

  status(): ClusterStatus {
    const s = this.raftNode?.status() ?? null;
    return {
      initialised: this.state.getClusterId() !== null,
      clusterId: this.state.getClusterId() ?? this.options.mesh.membership.clusterId,
      nodeId: this.options.mesh.peerId,
      raft: s === null ? null : { role: s.role, term: s.term, leader: s.leader, commit: s.commit, applied: s.applied, snapshotIndex: s.snapshotIndex },
      members: [...this.state.listMembers()],
      apiTokens: this.state.listApiTokens().filter((t: ApiToken) => t.revokedAt === null).length,
    };
  }

  /**
   * Founds a cluster with this node as the one voter: bootstraps Raft, waits for leadership and commits
   * cluster.init (this node as a voter member, the first admin token's hash). The secret is returned once.
   */
  async init(request: InitRequest): Promise<InitResult> {
    // A store reopened at start counts as initialised even before its log is replayed; a failed init (no
    // leadership in time) left Raft running without a cluster, and may be retried.
    if (this.state.getClusterId() !== null || this.initialising || (this.raftNode !== null && !this.founding)) {
      throw new ClusterAlreadyInitializedError(this.state.getClusterId());
    }
    this.initialising = true;
    try {
      const { mesh, logger } = this.options;
      const self = mesh.peerId;
      // The mesh may already have a cluster ID (its first join token creates one): Raft adopts it so both agree.
      const clusterId = mesh.membership.ensureClusterId();
      let raft = this.raftNode;
      if (raft === null) {
        writeBootstrapConf(this.options.raftDir, [self]);
        this.founding = true;
        raft = await this.startRaft({ voters: [self], learners: [], votersOutgoing: [] });
      }
      await this.waitForLeader(raft, this.options.config.initLeaderTimeoutMs);
      const token = generateApiTokenSecret();
      const cmd = buildInitCommand({
        clusterId,
        nodeId: self,
        nodeName: request.name ?? memberNameFrom(this.options.nodeName),
        addresses: mesh.addresses(),
        adminTokenHash: token.secretHash,
        at: Date.now(),
        from: request.from,
      });
      const result = (await raft.propose(encodeCommand(cmd))) as ApplyResult;
      logger.info({ clusterId, index: result.index, adminTokenId: cmd.adminToken.id }, 'cluster initialised');
      const node = this.state.getMember(self);
      if (node === null) throw new NovaError('internal', 'cluster.init applied without this node as a member');
      return { clusterId, adminToken: token.secret, adminTokenId: cmd.adminToken.id, node, raft: raft.status() };
    } finally {
      this.initialising = false;
    }
  }

  /**
   * Joins a cluster with a join token: the mesh presents it (with the name and site this node asks for) to a
   * member; when the cluster runs Raft, that member redeemed it through Raft (this node is now a learner member)
   * and Raft opens here with no bootstrap voters and catches up from the leader (log or snapshot). The joined
   * marker is written first so that a restart reopens Raft.
   */
  async join(token: string, joiner: { name?: string | undefined; site?: string | undefined } = {}): Promise<ClusterJoinResult> {
    if (this.raftNode !== null || this.state.getClusterId() !== null || this.initialising || this.joining) {
      throw new ClusterAlreadyInitializedError(this.state.getClusterId());
    }
    this.joining = true;
    try {
      const result = await this.options.mesh.join(token, { name: joiner.name ?? memberNameFrom(this.options.nodeName), site: joiner.site });
      const raft = parseJoinRaftInfo(result.extra?.raft);
      if (raft === null) return result;
      writeJoinedMarker(this.options.raftDir, raft.clusterId);
      await this.startRaft(undefined);
      // Answer once this node holds the cluster (cluster.init applied): until then it could not check API tokens.
      const deadline = Date.now() + joinCatchUpWaitMs;
      while (this.state.getClusterId() === null && Date.now() < deadline && !this.stopped) await sleep(leaderPollIntervalMs);
      this.options.logger.info({ clusterId: raft.clusterId, leader: raft.leader, voters: raft.voters }, 'joined the cluster as a raft learner');
      return { ...result, raft };
    } finally {
      this.joining = false;
    }
  }

  /**
   * Member side of a join (the mesh's hook): in a Raft cluster the token is redeemed through Raft, which adds the
   * joiner as a learner member in the same entry; the leader's reconcile loop then adds it to the configuration.
   * Null before the cluster exists: the mesh's own token store handles it.
   */
  private async redeemJoin(peer: string, token: JoinTokenPayload, joiner: JoinerInfo): Promise<Record<string, unknown> | null> {
    const clusterId = this.state.getClusterId();
    if (this.raftNode === null || clusterId === null) return null;
    if (token.c !== clusterId) throw new JoinTokenError(JoinTokenCode.wrongCluster, `join token is for cluster ${token.c}, this is ${clusterId}`);
    const name = joiner.name ?? memberNameFrom(`node-${peer.slice(-12)}`);
    const at = Date.now();
    await this.propose({
      type: 'joinToken.use',
      at,
      actor: { kind: 'node', id: peer, name },
      from: joiner.addrs[0] ?? null,
      id: token.i,
      secretHash: hashJoinSecret(token.s),
      node: { id: peer, name, addresses: withPeerId(memberAddresses(joiner.addrs), peer), site: joiner.site ?? '' },
    });
    const s = this.requireRaft().status();
    const info: JoinRaftInfo = { clusterId, leader: s.leader ?? this.options.mesh.peerId, voters: [...s.conf.voters], learners: [...s.conf.learners] };
    this.options.logger.info({ peer, name, clusterId, tokenId: token.i }, 'admitted a joiner as a learner member');
    return { raft: info };
  }

  // ---- join tokens: in Raft once the cluster exists, else the mesh's own store ----

  /** Creates a one-time join token; its bootstrap addresses are this node's and the voters' (any member admits). */
  async createJoinToken(ttlMs: number, origin: Origin): Promise<{ token: string; info: JoinTokenInfo }> {
    const clusterId = this.state.getClusterId();
    if (this.raftNode === null || clusterId === null) return this.options.mesh.createJoinToken(ttlMs);
    const id = randomBytes(joinTokenIdBytes).toString('hex');
    const secret = randomBytes(joinTokenSecretBytes).toString('base64url');
    const expiresAt = Date.now() + ttlMs;
    await this.propose({ type: 'joinToken.create', at: Date.now(), actor: origin.actor, from: origin.from, id, secretHash: hashJoinSecret(secret), expiresAt });
    const token = encodeJoinToken({ v: 1, c: clusterId, i: id, s: secret, b: this.joinBootstrapAddrs(), e: expiresAt });
    const record = this.state.listJoinTokens().find((t) => t.id === id);
    if (record === undefined) throw new NovaError('internal', `join token ${id} was applied but is not in the state`);
    return { token, info: joinTokenInfo(record, Date.now()) };
  }

  listJoinTokens(): JoinTokenInfo[] {
    if (this.raftNode === null || this.state.getClusterId() === null) return this.options.mesh.listJoinTokens();
    const now = Date.now();
    return this.state.listJoinTokens().map((t) => joinTokenInfo(t, now));
  }

  async revokeJoinToken(id: string, origin: Origin): Promise<JoinTokenInfo> {
    if (this.raftNode === null || this.state.getClusterId() === null) return this.options.mesh.revokeJoinToken(id);
    if (!this.state.listJoinTokens().some((t) => t.id === id)) throw new JoinTokenError(JoinTokenCode.notFound, `no join token ${id}`);
    const result = await this.propose({ type: 'joinToken.revoke', at: Date.now(), actor: origin.actor, from: origin.from, id });
    return joinTokenInfo(result.value as JoinToken, Date.now());
  }

  /** This node's addresses, then the other voters' and members' (routable before loopback), each ending in /p2p/. */
  private joinBootstrapAddrs(): string[] {
    const self = this.options.mesh.peerId;
    const voters = new Set(this.raftNode?.status().conf.voters ?? []);
    const others = this.state
      .listMembers()
      .filter((m) => m.id !== self)
      .sort((a, b) => Number(voters.has(b.id)) - Number(voters.has(a.id)));
    const all = [...withPeerId(this.options.mesh.addresses(), self), ...others.flatMap((m) => withPeerId(m.addresses, m.id))];
    const isLoopback = (a: string): boolean => a.startsWith('/ip4/127.') || a.startsWith('/ip6/::1/');
    return [...new Set([...all.filter((a) => !isLoopback(a)), ...all.filter(isLoopback)])].slice(0, joinTokenBootstrapMax);
  }

  // ---- nodes ----

  /** Members with how this node sees them; before `cluster init`, the mesh's members (no Raft role, names from telemetry). */
  listNodes(): NodeView[] {
    if (this.state.getClusterId() !== null) return this.state.listMembers().map((m) => this.nodeView(m));
    const { mesh } = this.options;
    const names = new Map(mesh.viewList().map((v) => [v.nodeId, v.sample.name]));
    return mesh.membership.list().map((e) =>
      this.nodeView({
        id: e.peer,
        name: memberNameFrom(names.get(e.peer) ?? (e.peer === mesh.peerId ? this.options.nodeName : `node-${e.peer.slice(-12)}`)),
        role: 'learner',
        addresses: [],
        site: '',
        joinedAt: e.sinceMs,
        status: 'active',
      }),
    );
  }

  /** A member by node id or name; not_found otherwise. */
  getNode(ref: string): NodeView {
    return this.nodeView(this.findMember(ref));
  }

  /** Renames a member or sets its site (voters are spread over sites). */
  async updateNode(ref: string, change: { name?: string | undefined; site?: string | undefined }, origin: Origin): Promise<NodeView> {
    const m = this.findMember(ref);
    await this.propose({
      type: 'member.update',
      at: Date.now(),
      actor: origin.actor,
      from: origin.from,
      id: m.id,
      ...(change.name === undefined ? {} : { name: change.name }),
      ...(change.site === undefined ? {} : { site: change.site }),
    });
    return this.getNode(m.id);
  }

  /**
   * Removes a member: the leader takes it out of the Raft configuration first (handing leadership over if it is the
   * one removed), then out of the member list; from then on the mesh refuses it. The last voter cannot be removed.
   */
  async removeNode(ref: string, origin: Origin): Promise<Member> {
    const m = this.findMember(ref);
    await this.submit({ op: 'removeNode', command: { type: 'member.remove', at: Date.now(), actor: origin.actor, from: origin.from, id: m.id } });
    return m;
  }

  private async removeNodeAsLeader(raft: RaftNode, cmd: CommandOf<'member.remove'>): Promise<ApplyResult> {
    const id = cmd.id;
    if (this.state.getMember(id) === null) throw new ClusterError('not_found', `no member ${id}`);
    const s = raft.status();
    if (s.conf.voters.includes(id)) {
      if (s.conf.voters.length <= 1) throw new ClusterError('conflict', 'cannot remove the last voter of the cluster');
      if (id === raft.id) {
        // A leader cannot take itself out: hand leadership to the most caught-up voter; the caller retries there.
        const progress = raft.progress();
        const to = s.conf.voters.filter((v) => v !== id).sort((a, b) => (progress.get(b)?.match ?? 0) - (progress.get(a)?.match ?? 0))[0];
        if (to === undefined) throw new ClusterError('conflict', 'no other voter to hand leadership to');
        raft.transferLeader(to);
        throw new NotLeaderError(to);
      }
    }
    if (s.conf.voters.includes(id) || s.conf.learners.includes(id)) await this.proposeConf(raft, { type: 'removeNode', nodeId: id });
    const result = (await raft.propose(encodeCommand(cmd))) as ApplyResult;
    this.unhealthySinceMs.delete(id);
    this.options.logger.info({ nodeId: id }, 'removed a member');
    return result;
  }

  private findMember(ref: string): Member {
    const m = this.state.getMember(ref) ?? this.state.listMembers().find((x) => x.name === ref) ?? null;
    if (m === null) throw new ClusterError('not_found', `no node ${ref} in this cluster`);
    return m;
  }

  private nodeView(m: Member): NodeView {
    const { mesh } = this.options;
    const self = mesh.peerId;
    const s = this.raftNode?.status() ?? null;
    const raftRole: NodeView['raftRole'] =
      s === null ? 'none' : s.leader === m.id ? 'leader' : s.conf.voters.includes(m.id) ? 'voter' : s.conf.learners.includes(m.id) ? 'learner' : 'none';
    const view = mesh.viewList().find((v) => v.nodeId === m.id);
    const connected = m.id === self || mesh.peers().some((p) => p.peer === m.id);
    const match = s?.role === 'leader' ? (m.id === self ? (this.raftNode?.lastIndex() ?? null) : (this.raftNode?.progress().get(m.id)?.match ?? null)) : null;
    return {
      ...m,
      addresses: [...m.addresses],
      raftRole,
      self: m.id === self,
      reachable: connected || view?.status === 'reachable',
      rttMs: m.id === self ? 0 : (mesh.linkTo(m.id)?.rttMs ?? null),
      match,
      telemetry: view === undefined ? null : { ageMs: view.ageMs, sample: view.sample },
    };
  }

  /** Proposes a membership change, retrying while another one is still uncommitted (up to the proposal timeout). */
  private async proposeConf(raft: RaftNode, change: ConfChange): Promise<void> {
    const deadline = Date.now() + this.options.config.proposalTimeoutMs;
    for (;;) {
      try {
        await raft.proposeConfChange(change);
        return;
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'conf_change_pending' || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, confRetryIntervalMs));
      }
    }
  }

  /**
   * Every node: keeps its own member record's addresses current (a restart may change its ports) and dials
   * members it is not connected to at the addresses the replicated member list holds (a restarted node forgot
   * the mesh's in-memory peer store), at most once per memberRedialIntervalMs each.
   */
  private async maintainLinks(): Promise<void> {
    const raft = this.raftNode;
    if (raft === null || this.state.getClusterId() === null || this.stopped) return;
    const { mesh } = this.options;
    const self = mesh.peerId;
    const now = Date.now();
    const mine = this.state.getMember(self);
    const current = withPeerId(memberAddresses(mesh.addresses()), self);
    if (mine !== null && !sameSet(mine.addresses, current) && now - this.addressUpdateAtMs >= addressUpdateIntervalMs && raft.status().leader !== null) {
      this.addressUpdateAtMs = now;
      const actor: Actor = { kind: 'node', id: self, name: mine.name };
      this.propose({ type: 'member.update', at: now, actor, from: null, id: self, addresses: current }).then(
        () => this.options.logger.info({ addresses: current }, 'updated this node\'s addresses in the member list'),
        (err: unknown) => this.options.logger.warn({ err }, 'could not update this node\'s addresses; will retry'),
      );
    }
    for (const m of this.state.listMembers()) {
      if (m.id === self || mesh.isConnected(m.id) || m.addresses.length === 0) continue;
      if (now - (this.redialAtMs.get(m.id) ?? 0) < memberRedialIntervalMs) continue;
      this.redialAtMs.set(m.id, now);
      void mesh.dialPeer(m.id, m.addresses);
    }
    if (this.redialAtMs.size > membersRedialTrackedMax) this.redialAtMs.clear();
  }

  /** Leader only: makes up to reconcileActionsPerRoundMax membership changes that voters.ts asks for. */
  private async reconcileOnce(): Promise<void> {
    const raft = this.raftNode;
    if (raft === null || this.state.getClusterId() === null || this.reconciling || this.stopped) return;
    if (raft.status().role !== 'leader') {
      this.unhealthySinceMs.clear(); // a new leader starts its own clock
      return;
    }
    this.reconciling = true;
    try {
      for (let i = 0; i < reconcileActionsPerRoundMax && !this.stopped; i++) {
        const s = raft.status();
        if (s.role !== 'leader') return;
        const action = nextVoterAction(this.voterInputs(raft, s));
        if (action === null) return;
        await this.applyVoterAction(raft, action);
      }
    } catch (err) {
      this.options.logger.warn({ err }, 'membership reconcile failed; will retry');
    } finally {
      this.reconciling = false;
    }
  }

  private voterInputs(raft: RaftNode, s: RaftStatus): VoterInputs {
    const { mesh } = this.options;
    const self = mesh.peerId;
    const now = Date.now();
    const members = this.state.listMembers();
    // Healthy = connected now: a dead node's connection closes at once, while its telemetry stays fresh for a TTL
    // (which would delay replacement by up to that long); voterReplaceAfterMs absorbs short disconnections.
    const connected = new Set(mesh.peers().map((p) => p.peer));
    const healthy = new Set<string>([self]);
    const rttMs = new Map<string, number>();
    for (const m of members) {
      if (m.id === self) continue;
      if (connected.has(m.id)) {
        healthy.add(m.id);
        this.unhealthySinceMs.delete(m.id);
      } else if (!this.unhealthySinceMs.has(m.id)) this.unhealthySinceMs.set(m.id, now);
      const rtt = mesh.linkTo(m.id)?.rttMs;
      if (rtt !== null && rtt !== undefined) rttMs.set(m.id, rtt);
    }
    const match = new Map([...raft.progress()].map(([id, p]) => [id, p.match]));
    return { self, members, conf: s.conf, lastIndex: raft.lastIndex(), match, healthy, unhealthySinceMs: this.unhealthySinceMs, rttMs, nowMs: now, settings: this.state.getSettings() };
  }

  private async applyVoterAction(raft: RaftNode, action: VoterAction): Promise<void> {
    const actor: Actor = { kind: 'system', id: this.options.mesh.peerId, name: 'membership reconcile' };
    const setRole = (id: string, role: 'voter' | 'learner'): Promise<ApplyResult> => this.propose({ type: 'member.setRole', at: Date.now(), actor, from: null, id, role });
    switch (action.kind) {
      case 'removeFromConf':
        await this.proposeConf(raft, { type: 'removeNode', nodeId: action.id });
        break;
      case 'addLearner':
        await this.proposeConf(raft, { type: 'addLearner', nodeId: action.id });
        break;
      case 'setRole':
        await setRole(action.id, action.role);
        break;
      case 'promote':
        await this.proposeConf(raft, { type: 'addVoter', nodeId: action.id });
        await setRole(action.id, 'voter');
        break;
      case 'demote':
        await this.proposeConf(raft, { type: 'addLearner', nodeId: action.id });
        await setRole(action.id, 'learner');
        break;
    }
    this.options.logger.info({ action: action.kind, nodeId: action.id, reason: action.reason, voters: raft.status().conf.voters }, 'raft membership changed');
  }

  /** Closes Raft (transport, then storage). Call before the mesh stops. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.reconcileTimer !== null) clearInterval(this.reconcileTimer);
    this.reconcileTimer = null;
    this.options.mesh.setJoinHook(null);
    await this.options.mesh.protocols.unhandle(clusterProtocol).catch(() => undefined);
    const raft = this.raftNode;
    this.raftNode = null;
    if (raft !== null) await raft.close(); // closes transport and storage
    else await this.storage?.close();
    this.storage = null;
  }

  private async startRaft(bootstrap: ConfState | undefined): Promise<RaftNode> {
    const { mesh, logger, config } = this.options;
    const storage = this.storage;
    if (storage === null) throw new NovaError('raft_stopped', 'cluster service is stopped');
    const raftLog = logger.child({ component: 'raft' });
    const transport = new MeshRaftTransport(mesh.protocols, mesh.peerId, raftLog);
    await transport.start();
    // Election timeouts only need to differ between nodes: the peer id seeds the generator with some time mixed in.
    const seed = (hash32(mesh.peerId) ^ Date.now()) >>> 0;
    const raft = await RaftNode.open({
      id: mesh.peerId,
      storage,
      transport,
      stateMachine: this.state,
      ...(bootstrap === undefined ? {} : { bootstrap }),
      random: new Xoshiro128(seed),
      logger: raftLog,
      tickIntervalMs: config.tickIntervalMs,
      proposalTimeoutMs: config.proposalTimeoutMs,
      readTimeoutMs: config.readTimeoutMs,
      snapshotEveryEntries: config.snapshotEveryEntries,
      compactionKeepEntries: config.compactionKeepEntries,
      core: { electionTimeoutTicks: config.electionTimeoutTicks, heartbeatIntervalTicks: config.heartbeatIntervalTicks },
    });
    this.raftNode = raft;
    this.reconcileTimer = setInterval(() => {
      void this.maintainLinks();
      void this.reconcileOnce();
    }, reconcileIntervalMs);
    this.reconcileTimer.unref();
    this.options.onRaftStarted?.(raft);
    logger.info({ nodeId: mesh.peerId, voters: bootstrap?.voters ?? null }, 'raft started');
    return raft;
  }

  private async waitForLeader(raft: RaftNode, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (raft.status().role !== 'leader') {
      if (Date.now() > deadline) throw new NoLeaderError(`this node did not become the leader of its new cluster within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, leaderPollIntervalMs));
    }
  }
}

/** Settles like `work`, but rejects with NotLeaderError as soon as this node knows no leader (no quorum: fail fast). */
async function untilLeaderLost<T>(raft: RaftNode, work: Promise<T>): Promise<T> {
  work.catch(() => undefined); // it may settle after we gave up on it
  let timer: NodeJS.Timeout | undefined;
  const lost = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      if (raft.status().leader === null) reject(new NotLeaderError(null));
    }, leaderPollIntervalMs);
  });
  try {
    return await Promise.race([work, lost]);
  } finally {
    clearInterval(timer);
  }
}

/** Errors after which the leader surely did not take the write, so trying again (at the new leader) is safe. */
function leaderDidNotTakeIt(err: unknown): boolean {
  if (err instanceof NotLeaderError || err instanceof ProposalDroppedError) return true;
  if (err instanceof MeshRemoteError) {
    const code = err.details?.remoteCode;
    return code === 'not_leader' || code === 'proposal_dropped' || code === 'cluster_not_initialized';
  }
  // The stream never opened: nothing reached the leader. (An answer lost after sending is MeshAnswerLostError.)
  if (err instanceof MeshAnswerLostError) return false;
  return err instanceof MeshPeerUnreachableError || err instanceof MeshStreamRefusedError;
}

/** A failure of a forwarded request as this node reports it: the leader's own refusal keeps its code. */
function fromLeader(err: unknown, leader: string): unknown {
  if (err instanceof MeshRemoteError) {
    const code = err.details?.remoteCode;
    return new RemoteClusterError(typeof code === 'string' ? code : 'internal', err.message.replace(/^.*?answered: /, ''), leader);
  }
  if (err instanceof MeshTimeoutError || err instanceof MeshAnswerLostError) {
    return new WriteOutcomeUnknownError(`the leader ${leader} did not answer (${errorText(err)}): the write may or may not have been applied; check before retrying`, err);
  }
  return err;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The code a refusal carries over the mesh, as the protocol layer derives it for a whole request. */
function errorCode(err: unknown): string {
  const code = err instanceof Error ? (err as Error & { code?: unknown }).code : undefined;
  return typeof code === 'string' ? code : 'internal';
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x) => b.includes(x));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Addresses as a join token and the member list carry them: each ending in /p2p/<peer id>. */
function withPeerId(addrs: readonly string[], peer: string): string[] {
  return addrs.map((a) => (a.includes('/p2p/') ? a : `${a}/p2p/${peer}`));
}

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

/** A replicated join token in the shape the mesh's own tokens have (REST and CLI show both alike). */
function joinTokenInfo(t: JoinToken, nowMs: number): JoinTokenInfo {
  const state = t.revokedAt !== null ? 'revoked' : t.usedBy !== null ? 'used' : t.expiresAt <= nowMs ? 'expired' : 'active';
  return { id: t.id, state, createdAt: new Date(t.createdAt).toISOString(), expiresAt: new Date(t.expiresAt).toISOString(), usedAt: iso(t.usedAt), usedBy: t.usedBy, revokedAt: iso(t.revokedAt) };
}

function parseJoinRaftInfo(v: unknown): JoinRaftInfo | null {
  if (typeof v !== 'object' || v === null) return null;
  const r = v as Record<string, unknown>;
  const ids = (x: unknown): x is string[] => Array.isArray(x) && x.every((i) => typeof i === 'string');
  if (typeof r.clusterId !== 'string' || typeof r.leader !== 'string' || !ids(r.voters) || !ids(r.learners)) return null;
  return { clusterId: r.clusterId, leader: r.leader, voters: r.voters, learners: r.learners };
}

/** FNV-1a over the string: a stable 32-bit number from a peer id. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
