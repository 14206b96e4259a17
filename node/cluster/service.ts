// The cluster service: Raft over the mesh with the cluster state machine, owned by NovaNode. A node whose
// <dataDir>/raft store was initialised reopens it at start (snapshot restored, log replayed); a fresh node runs
// without Raft until `cluster init` founds a one-voter cluster (joining is a later slice of [cluster]).
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
import { RaftNode, type RaftStatus } from '../../consensus/driver.js';
import { Xoshiro128 } from '../../consensus/core/random.js';
import { LevelRaftStorage } from '../../consensus/storage/index.js';
import type { ConfState } from '../../consensus/types.js';
import type { Mesh } from '../../mesh/mesh.js';
import type { NodeConfig } from '../config/schema.js';
import { ConfigError, NovaError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RaftMetricsSource } from '../metrics.js';
import { MeshRaftTransport } from '../raft-transport.js';
import {
  buildInitCommand,
  createdTokenPrefix,
  generateApiTokenSecret,
  isStoreInitialised,
  memberNameFrom,
  raftDbDirName,
  readBootstrapConf,
  unionMembers,
  writeBootstrapConf,
} from './bootstrap.js';

/** How often init polls for this node's leadership. */
const leaderPollIntervalMs = 20;

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
      const initial = await storage.initialState();
      if (isStoreInitialised(initial)) {
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

  /** Closes Raft (transport, then storage). Call before the mesh stops. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
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

/** FNV-1a over the string: a stable 32-bit number from a peer id. */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
