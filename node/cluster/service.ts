// The cluster service: Raft over the mesh with the cluster state machine, owned by NovaNode. A node whose
// <dataDir>/raft store was initialised (or holds the joined marker) reopens it at start (snapshot restored, log
// replayed); a fresh node runs without Raft until `cluster init` founds a one-voter cluster or `cluster join`
// joins one. On the leader it admits joiners as Raft learners (the mesh's join hook) and promotes caught-up
// learners to voters up to settings.desiredVoters.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
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
  type Member,
} from '../../consensus/cluster/index.js';
import { NotLeaderError, RaftNode, type RaftStatus } from '../../consensus/driver.js';
import type { ConfChange } from '../../consensus/core/messages.js';
import { Xoshiro128 } from '../../consensus/core/random.js';
import { LevelRaftStorage } from '../../consensus/storage/index.js';
import type { ConfState } from '../../consensus/types.js';
import type { JoinResult, Mesh } from '../../mesh/mesh.js';
import type { NodeConfig } from '../config/schema.js';
import { ConfigError, NovaError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RaftMetricsSource } from '../metrics.js';
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
  unionMembers,
  writeBootstrapConf,
  writeJoinedMarker,
} from './bootstrap.js';

/** How often init polls for this node's leadership. */
const leaderPollIntervalMs = 20;
/** How often the leader looks for a learner to promote (and a member role to reconcile with the configuration). */
export const promotionIntervalMs = 500;
/** A learner counts as caught up when its match index is within this many entries of the leader's last index. */
export const learnerCatchUpMaxLag = 16;
/** Pause between retries of a membership change refused because another one is still uncommitted. */
const confRetryIntervalMs = 50;

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
  private promotionTimer: NodeJS.Timeout | null = null;
  private promoting = false;

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
      // Raft members OR the mesh's own list (config members, join-token peers), so the mesh keeps working unchanged.
      mesh.setMemberProvider(unionMembers({ isMember: (p) => service.state.getMember(p) !== null }, mesh.membership));
      mesh.setJoinHook({ check: (peer) => service.checkJoin(peer), admitted: (peer, addrs) => service.admitJoiner(peer, addrs) });
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

  /** Proposes a command through Raft and resolves once it is applied here. Refusals reject (ClusterError, not_leader…). */
  async propose(cmd: ClusterCommand): Promise<ApplyResult> {
    const raft = this.raftNode;
    if (raft === null || this.state.getClusterId() === null) {
      throw new ClusterError('cluster_not_initialized', 'this node does not belong to a cluster yet: run `novacron cluster init` or join one');
    }
    return (await raft.propose(encodeCommand(cmd))) as ApplyResult;
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
   * Joins a cluster with a join token: the mesh presents it to the issuer; when the issuer's cluster runs Raft
   * (it then admitted this node as a learner), Raft opens here with no bootstrap voters and catches up from the
   * leader (log or snapshot). The joined marker is written first so that a restart reopens Raft.
   */
  async join(token: string): Promise<ClusterJoinResult> {
    if (this.raftNode !== null || this.state.getClusterId() !== null || this.initialising || this.joining) {
      throw new ClusterAlreadyInitializedError(this.state.getClusterId());
    }
    this.joining = true;
    try {
      const result = await this.options.mesh.join(token);
      const raft = parseJoinRaftInfo(result.extra?.raft);
      if (raft === null) return result;
      writeJoinedMarker(this.options.raftDir, raft.clusterId);
      await this.startRaft(undefined);
      this.options.logger.info({ clusterId: raft.clusterId, leader: raft.leader, voters: raft.voters }, 'joined the cluster as a raft learner');
      return { ...result, raft };
    } finally {
      this.joining = false;
    }
  }

  /** Issuer side, before the mesh redeems a token: a Raft-initialised node admits joiners only as the leader. */
  private checkJoin(_peer: string): void {
    const raft = this.raftNode;
    if (raft === null || this.state.getClusterId() === null) return; // no Raft: a plain mesh join
    const s = raft.status();
    if (s.role !== 'leader') throw new NotLeaderError(s.leader);
  }

  /** Issuer side, after the mesh admitted `peer`: adds it as a learner member (state, then Raft configuration). */
  private async admitJoiner(peer: string, addrs: string[]): Promise<Record<string, unknown> | undefined> {
    const raft = this.raftNode;
    const clusterId = this.state.getClusterId();
    if (raft === null || clusterId === null) return undefined;
    if (this.state.getMember(peer) === null) {
      await this.propose({
        type: 'member.add',
        at: Date.now(),
        actor: { kind: 'system', id: this.options.mesh.peerId, name: 'cluster join' },
        from: null,
        node: { id: peer, name: memberNameFrom(`node-${peer.slice(-12)}`), addresses: memberAddresses(addrs), site: '' },
        role: 'learner',
      });
    }
    const conf = raft.status().conf;
    if (!conf.voters.includes(peer) && !conf.learners.includes(peer)) await this.proposeConf(raft, { type: 'addLearner', nodeId: peer });
    const after = raft.status();
    const info: JoinRaftInfo = { clusterId, leader: after.leader ?? this.options.mesh.peerId, voters: [...after.conf.voters], learners: [...after.conf.learners] };
    this.options.logger.info({ peer, clusterId }, 'admitted a joiner as a raft learner');
    return { raft: info };
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
   * Leader only: reconciles member roles with the Raft configuration, then, while there are fewer voters than
   * settings.desiredVoters, promotes one caught-up learner (match within learnerCatchUpMaxLag of the last index).
   */
  private async promoteOnce(): Promise<void> {
    const raft = this.raftNode;
    if (raft === null || this.state.getClusterId() === null || this.promoting || this.stopped) return;
    if (raft.status().role !== 'leader') return;
    this.promoting = true;
    const actor: Actor = { kind: 'system', id: this.options.mesh.peerId, name: 'voter promotion' };
    try {
      const conf = raft.status().conf;
      for (const id of conf.voters) {
        if (this.state.getMember(id)?.role === 'learner') await this.propose({ type: 'member.setRole', at: Date.now(), actor, from: null, id, role: 'voter' });
      }
      if (conf.votersOutgoing.length > 0 || conf.voters.length >= this.state.getSettings().desiredVoters) return;
      const last = raft.lastIndex();
      const progress = raft.progress();
      const candidate = conf.learners.find((id) => this.state.getMember(id) !== null && (progress.get(id)?.match ?? 0) >= last - learnerCatchUpMaxLag);
      if (candidate === undefined) return;
      await this.proposeConf(raft, { type: 'addVoter', nodeId: candidate });
      await this.propose({ type: 'member.setRole', at: Date.now(), actor, from: null, id: candidate, role: 'voter' });
      this.options.logger.info({ nodeId: candidate, voters: raft.status().conf.voters }, 'promoted a learner to voter');
    } catch (err) {
      this.options.logger.warn({ err }, 'voter promotion failed; will retry');
    } finally {
      this.promoting = false;
    }
  }

  /** Closes Raft (transport, then storage). Call before the mesh stops. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.promotionTimer !== null) clearInterval(this.promotionTimer);
    this.promotionTimer = null;
    this.options.mesh.setJoinHook(null);
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
    this.promotionTimer = setInterval(() => void this.promoteOnce(), promotionIntervalMs);
    this.promotionTimer.unref();
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
