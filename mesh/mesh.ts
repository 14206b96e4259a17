// The mesh of one node: a libp2p host (TCP, Noise, Yamux, identify, ping, mDNS, bootstrap, circuit relay
// v2, DCUtR, AutoNAT), the member-gated protocol layer, join tokens, member sync, gossip telemetry and
// the link model. The node composes it; nothing here imports node/.
import { autoNAT } from '@libp2p/autonat';
import { bootstrap } from '@libp2p/bootstrap';
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2';
import { dcutr } from '@libp2p/dcutr';
import { gossipsub, TopicValidatorResult, type GossipSub, type Message } from '@libp2p/gossipsub';
import { createPeerScoreParams, createTopicScoreParams } from '@libp2p/gossipsub/score';
import { identify } from '@libp2p/identify';
import { KEEP_ALIVE, type Libp2p, type PeerId } from '@libp2p/interface';
import { mdns } from '@libp2p/mdns';
import { noise } from '@libp2p/noise';
import { peerIdFromString } from '@libp2p/peer-id';
import { ping, type Ping } from '@libp2p/ping';
import { tcp } from '@libp2p/tcp';
import { yamux } from '@libp2p/yamux';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p, type Libp2pOptions } from 'libp2p';
import type { Identify } from '@libp2p/identify';
import type { CircuitRelayService } from '@libp2p/circuit-relay-v2';
import { JoinTokenCode, JoinTokenError, MeshError, MeshJoinError, MeshNotRunningError, MeshRemoteError, MeshStreamRefusedError, meshErrorMessage, type JoinTokenCodeValue, type MeshErrorOptions } from './errors.js';
import { loadOrCreateIdentity, type MeshIdentity } from './identity.js';
import { JoinTokenStore, checkTokenForJoiner, decodeJoinToken, joinTokenTtlMsDefault, type JoinTokenInfo, type JoinTokenPayload } from './join-token.js';
import { LinkModel, type LinkEstimate } from './link-model.js';
import type { MeshLogger } from './log.js';
import { LocalMembership, MembershipGate, membersMax, type MemberEntry } from './membership.js';
import { ProtocolLayer, systemClock, type Clock, type MemberProvider } from './protocol.js';
import {
  ClusterView,
  HostStatsCollector,
  telemetryLinksMax,
  telemetryTopic,
  telemetryTtlMsDefault,
  validateSample,
  type SampleVerdict,
  type TelemetrySample,
  type ViewEntry,
} from './telemetry.js';

export const joinProtocol = '/novacron/join/1.0.0';
/** Multiaddr protocol code of `/p2p/<peer id>` (stripped before addresses go into the peer store). */
const multiaddrP2pCode = 421;
export const membersProtocol = '/novacron/members/1.0.0';
export const infoProtocol = '/novacron/info/1.0.0';


/** How often members exchange member lists and re-dial members they lost. */
export const membersSyncIntervalMs = 5000;
/** Peers asked per sync round; the rest wait for later rounds. */
export const membersSyncPeersPerRoundMax = 8;
/** Dials to disconnected members started per sync round. */
export const memberDialsPerRoundMax = 8;
/** Addresses passed on per peer in a member list. */
export const addrsPerPeerMax = 8;
/** Pings started per telemetry tick. */
export const pingsPerTickMax = 64;
/** Upper bound of one ping; also bounded by the telemetry interval. */
export const pingTimeoutMsMax = 5000;
/**
 * The link model pings on /novacron/ping/1.0.0, not /ipfs/ping/1.0.0. libp2p's connection monitor sends its
 * heartbeat on /ipfs/ping/1.0.0 every 10 s and aborts the whole connection when that stream cannot be opened;
 * ping allows one outbound and two inbound streams per connection and protocol, so telemetry-tick pings on the
 * same protocol made heartbeats fail (TooManyOutboundProtocolStreamsError, or a reset by the remote's inbound
 * limit) and the monitor tore down healthy member connections, taking gossipsub's streams with them.
 */
export const linkPingProtocolPrefix = 'novacron';
/** Attempts per bootstrap address when the join stream is reset (not when the token is refused). */
export const joinAttemptsPerAddrMax = 3;
/** Deadline of one join attempt against one bootstrap address. */
export const joinAttemptTimeoutMs = 10_000;
/** Deadline of the dial part of a member dial. */
export const memberDialTimeoutMs = 5000;
/**
 * Inbound connections accepted per second from one host (libp2p's default is 5). Raised because several
 * cluster nodes often share one address (a NAT, loopback in tests) and all dial at once after a restart.
 */
export const inboundConnectionsPerHostPerSecondMax = 32;
/** Inbound join streams at once per connection: joining is rare, and open to non-members. */
export const joinInboundStreamsMax = 2;

export interface MeshRelayConfig {
  /** Serve as a circuit relay v2 for other nodes (bounded by the limits below). */
  enabled: boolean;
  /** Reserve a slot on a relay among connected peers and advertise the circuit address. */
  reserve: boolean;
  maxReservations: number;
  reservationTtlMs: number;
  dataLimitBytes: number;
  durationLimitMs: number;
}

export interface MeshConfig {
  listen: string[];
  announce: string[];
  bootstrap: string[];
  mdns: boolean;
  relay: MeshRelayConfig;
  members: string[];
  telemetryIntervalMs: number;
  /** 0 means the default: 3 × interval + margin. */
  telemetryTtlMs: number;
  maxConnections: number;
}

export interface MeshOptions {
  config: MeshConfig;
  /** <dataDir>/identity: key, cluster state, join tokens. */
  identityDir: string;
  /** The data dir, whose file system telemetry reports. */
  dataDir: string;
  nodeName: string;
  version: string;
  logger: MeshLogger;
  /** VM counts for telemetry; 0 until the hypervisor exists. */
  vmCounts?: () => { running: number; total: number };
  clock?: Clock;
  /** Tests and benchmarks replace TCP (e.g. with @libp2p/memory). */
  transports?: NonNullable<Libp2pOptions['transports']>;
}

export interface MemberAddrs {
  peer: string;
  addrs: string[];
}

export interface PeerConnectionInfo {
  peer: string;
  member: boolean;
  addrs: string[];
  direction: string;
  /** Through a relay (limited connection). */
  relayed: boolean;
  rttMs: number | null;
  throughputBytesPerSec: number | null;
}

export interface TelemetryCounters {
  published: number;
  publishFailed: number;
  accepted: number;
  rejected: { oversized: number; not_json: number; schema: number; signer_mismatch: number; unsigned: number };
  ignoredNonMember: number;
}

export interface MeshStatus {
  peerId: string;
  clusterId: string | null;
  addresses: string[];
  connections: number;
  members: MemberEntry[];
  relay: { enabled: boolean; reserve: boolean; reservations: number };
  telemetry: TelemetryCounters & { intervalMs: number; ttlMs: number };
  refusedStreams: number;
}

export interface JoinResult {
  clusterId: string;
  issuer: string;
  members: string[];
  /** What the issuer's join hook answered (the Raft view of an initialised cluster), if it has one. */
  extra?: Record<string, unknown>;
}

/** What a joiner tells about itself in its join request. */
export interface JoinerInfo {
  /** Member name it asks for (a DNS label), if any. */
  name?: string;
  /** Site label (voters are spread over distinct sites), if any. */
  site?: string;
  /** Addresses the issuer knows for it (identify, circuit addresses first). */
  addrs: string[];
}

/**
 * Lets the owner of the mesh (the cluster service) redeem join tokens itself: once the cluster runs Raft, join
 * tokens live in the replicated state, so any member can admit a joiner. `redeem` returns what the joiner is told
 * (JoinResult.extra), or null to leave the token to this node's own store (a cluster without Raft yet). Its
 * errors' codes travel to the joiner.
 */
export interface JoinHook {
  redeem(peer: string, token: JoinTokenPayload, joiner: JoinerInfo): Promise<Record<string, unknown> | null>;
}

/** Remote error codes a join hook may raise that the joiner reports as they are (not as unreachable). */
export const joinHookErrorCodes: ReadonlySet<string> = new Set([
  'not_leader',
  'no_leader',
  'no_quorum',
  'cluster_not_initialized',
  'proposal_timeout',
  'proposal_dropped',
  'conf_change_pending',
  'already_exists',
  'limit_exceeded',
  'command_invalid',
  'write_outcome_unknown',
]);

/** A join refused by the issuer's join hook (e.g. not_leader), with the issuer's code and message. */
export class JoinRefusedError extends MeshError {
  constructor(code: string, message: string, options: MeshErrorOptions = {}) {
    super(code, message, options);
  }
}

interface JoinRequest {
  token: string;
  name?: string;
  site?: string;
}

/** Longest member name or site label a join request may carry (a DNS label). */
const joinLabelCharsMax = 63;

interface MemberList {
  clusterId: string;
  members: MemberAddrs[];
  extra?: Record<string, unknown>;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function validateMemberList(v: unknown): MemberList {
  if (!isRecord(v) || typeof v.clusterId !== 'string' || !Array.isArray(v.members) || v.members.length > membersMax) throw new Error('not a member list');
  const members: MemberAddrs[] = [];
  for (const m of v.members) {
    if (!isRecord(m) || typeof m.peer !== 'string' || !Array.isArray(m.addrs)) throw new Error('bad member entry');
    peerIdFromString(m.peer); // throws on a malformed peer ID
    members.push({ peer: m.peer, addrs: m.addrs.filter((a): a is string => typeof a === 'string').slice(0, addrsPerPeerMax) });
  }
  return isRecord(v.extra) ? { clusterId: v.clusterId, members, extra: v.extra } : { clusterId: v.clusterId, members };
}

function validateJoinRequest(v: unknown): JoinRequest {
  if (!isRecord(v) || typeof v.token !== 'string') throw new Error('expected { token, name?, site? }');
  const label = (x: unknown, what: string): string | undefined => {
    if (x === undefined) return undefined;
    if (typeof x !== 'string' || x.length > joinLabelCharsMax) throw new Error(`${what} must be a string of at most ${joinLabelCharsMax} characters`);
    return x;
  };
  const name = label(v.name, 'name');
  const site = label(v.site, 'site');
  return { token: v.token, ...(name === undefined ? {} : { name }), ...(site === undefined ? {} : { site }) };
}

const joinTokenCodes = new Set<string>(Object.values(JoinTokenCode));

function buildServices(config: MeshConfig, intervalMs: number) {
  return {
    identify: identify({ runOnLimitedConnection: true }),
    // Answers libp2p's connection monitor (its heartbeat uses /ipfs/ping/1.0.0).
    ping: ping({ runOnLimitedConnection: true }),
    // The link model's RTT pings, on their own protocol: see linkPingProtocolPrefix.
    linkPing: ping({ protocolPrefix: linkPingProtocolPrefix, runOnLimitedConnection: true, timeout: Math.min(intervalMs, pingTimeoutMsMax) }),
    pubsub: gossipsub({
      // Nodes behind NAT talk through relays; their telemetry must flow there too.
      runOnLimitedConnection: true,
      allowPublishToZeroTopicPeers: true,
      emitSelf: false,
      scoreParams: createPeerScoreParams({
        // No IP colocation penalty (P6). Its default (-5 × (peers on one IP − 10)²) graylists every peer once more
        // than ~14 members reach us from one address: nodes behind one NAT, peers reached through one circuit
        // relay (whose connections carry the relay's IP), or a test host on loopback. A 20-node cluster then
        // ignored every RPC from every peer and no telemetry flowed. Sybils are kept out by the membership gate
        // (non-members' samples are ignored), not by counting IPs.
        IPColocationFactorWeight: 0,
        topics: {
          // A rejected (malformed, oversized, forged) sample costs the sender score.
          [telemetryTopic]: createTopicScoreParams({
            topicWeight: 1,
            invalidMessageDeliveriesWeight: -100,
            invalidMessageDeliveriesDecay: 0.5,
          }),
        },
      }),
    }),
    autonat: autoNAT(),
    dcutr: dcutr(),
    ...(config.relay.enabled
      ? {
          relay: circuitRelayServer({
            reservations: {
              maxReservations: config.relay.maxReservations,
              reservationTtl: config.relay.reservationTtlMs,
              defaultDataLimit: BigInt(config.relay.dataLimitBytes),
              defaultDurationLimit: config.relay.durationLimitMs,
              applyDefaultLimit: true,
            },
          }),
        }
      : {}),
  };
}

interface MeshServices {
  identify: Identify;
  ping: Ping;
  linkPing: Ping;
  pubsub: GossipSub;
  autonat: unknown;
  dcutr: unknown;
  relay?: CircuitRelayService;
  [key: string]: unknown;
}
type MeshLibp2p = Libp2p<MeshServices>;

export class Mesh {
  readonly links = new LinkModel();
  readonly view: ClusterView;
  readonly membership: LocalMembership;
  readonly gate: MembershipGate;
  readonly protocols: ProtocolLayer;
  readonly tokens: JoinTokenStore;
  readonly counters: TelemetryCounters = {
    published: 0,
    publishFailed: 0,
    accepted: 0,
    rejected: { oversized: 0, not_json: 0, schema: 0, signer_mismatch: 0, unsigned: 0 },
    ignoredNonMember: 0,
  };

  private readonly log: MeshLogger;
  private readonly clock: Clock;
  private readonly stats: HostStatsCollector;
  private readonly ttlMs: number;
  private readonly validated = new WeakMap<Message, TelemetrySample>();
  private seq = 0;
  private telemetryTimer: NodeJS.Timeout | undefined;
  private syncTimer: NodeJS.Timeout | undefined;
  private pinging = false;
  private running = false;
  private unsubscribeAdmitted: (() => void) | undefined;
  private joinHook: JoinHook | null = null;

  private constructor(
    private readonly options: MeshOptions,
    readonly identity: MeshIdentity,
    readonly libp2p: MeshLibp2p,
  ) {
    this.log = options.logger;
    this.clock = options.clock ?? systemClock;
    this.stats = new HostStatsCollector(options.dataDir);
    this.ttlMs = options.config.telemetryTtlMs > 0 ? options.config.telemetryTtlMs : telemetryTtlMsDefault(options.config.telemetryIntervalMs);
    this.view = new ClusterView(this.ttlMs);
    this.membership = new LocalMembership(options.identityDir, this.peerId, options.config.members);
    this.gate = new MembershipGate(this.peerId, this.membership);
    this.tokens = new JoinTokenStore(options.identityDir);
    this.protocols = new ProtocolLayer({ host: libp2p, members: this.gate, logger: this.log, transfers: this.links, clock: this.clock });
  }

  /** Loads (or creates) the identity and builds the libp2p host without starting it. */
  static async create(options: MeshOptions): Promise<Mesh> {
    const identity = await loadOrCreateIdentity(options.identityDir);
    if (identity.tightened) options.logger.warn({ file: identity.keyFile }, 'identity key was readable by others; mode set to 0600');
    if (identity.created) options.logger.info({ peerId: identity.peerId.toString(), file: identity.keyFile }, 'created a new node identity');
    const { config } = options;
    // Bootstrap from config plus the addresses remembered from the join token of an earlier run.
    const remembered = new LocalMembership(options.identityDir, identity.peerId.toString(), config.members).bootstrap;
    const bootstrapList = [...new Set([...config.bootstrap, ...remembered])];
    const listen = [...config.listen, ...(config.relay.reserve ? ['/p2p-circuit'] : [])];
    const libp2p: MeshLibp2p = await createLibp2p({
      privateKey: identity.privateKey,
      start: false,
      addresses: { listen, announce: config.announce },
      transports: [...(options.transports ?? [tcp()]), circuitRelayTransport()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      connectionManager: { maxConnections: config.maxConnections, inboundConnectionThreshold: inboundConnectionsPerHostPerSecondMax },
      peerDiscovery: [...(config.mdns ? [mdns()] : []), ...(bootstrapList.length > 0 ? [bootstrap({ list: bootstrapList })] : [])],
      services: buildServices(config, config.telemetryIntervalMs),
    });
    return new Mesh(options, identity, libp2p);
  }

  get peerId(): string {
    return this.identity.peerId.toString();
  }

  get pubsub(): GossipSub {
    return this.libp2p.services.pubsub;
  }

  /** Replaces who counts as a member (the [cluster] issue passes Raft membership here). */
  setMemberProvider(provider: MemberProvider): void {
    this.gate.setProvider(provider);
  }

  async start(): Promise<void> {
    await this.libp2p.start();
    this.running = true;
    await this.protocols.handleRequest<JoinRequest, MemberList>(joinProtocol, (req, ctx) => this.onJoin(req, ctx.peer), {
      validate: validateJoinRequest,
      membersOnly: false,
      maxInboundStreams: joinInboundStreamsMax,
    });
    await this.protocols.handleRequest<MemberList, MemberList>(membersProtocol, async (req) => {
      this.learnMembers(req);
      return await this.memberList();
    }, { validate: validateMemberList });
    await this.protocols.handleRequest<Record<string, never>, { nodeId: string; name: string; version: string; clusterId: string | null }>(
      infoProtocol,
      async () => ({ nodeId: this.peerId, name: this.options.nodeName, version: this.options.version, clusterId: this.membership.clusterId }),
      { validate: () => ({}) },
    );

    this.pubsub.topicValidators.set(telemetryTopic, (_from, msg) => this.validateTelemetry(msg));
    this.pubsub.addEventListener('message', (evt) => this.onTelemetry(evt.detail));
    this.pubsub.subscribe(telemetryTopic);

    this.libp2p.addEventListener('peer:identify', (evt) => {
      const peer = evt.detail.peerId.toString();
      if (this.gate.isMember(peer) && peer !== this.peerId) void this.syncWith(peer);
    });
    this.unsubscribeAdmitted = this.membership.onAdmitted((added) => {
      for (const p of added) this.keepAlive(p);
    });
    for (const p of this.membership.peers()) if (p !== this.peerId) this.keepAlive(p);

    this.telemetryTimer = setInterval(() => void this.telemetryTick(), this.options.config.telemetryIntervalMs);
    this.syncTimer = setInterval(() => void this.syncRound(), membersSyncIntervalMs);
    void this.telemetryTick();
    this.log.info({ peerId: this.peerId, listen: this.addresses(), clusterId: this.membership.clusterId }, 'mesh started');
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    clearInterval(this.telemetryTimer);
    clearInterval(this.syncTimer);
    this.unsubscribeAdmitted?.();
    await this.libp2p.stop();
    this.log.info('mesh stopped');
  }

  get isRunning(): boolean {
    return this.running && this.libp2p.status === 'started';
  }

  addresses(): string[] {
    return this.libp2p.getMultiaddrs().map((a) => a.toString());
  }

  status(): MeshStatus {
    const relay = this.libp2p.services.relay;
    return {
      peerId: this.peerId,
      clusterId: this.membership.clusterId,
      addresses: this.addresses(),
      connections: this.libp2p.getConnections().length,
      members: this.membership.list(),
      relay: { enabled: this.options.config.relay.enabled, reserve: this.options.config.relay.reserve, reservations: relay?.reservations.size ?? 0 },
      telemetry: { ...this.counters, intervalMs: this.options.config.telemetryIntervalMs, ttlMs: this.ttlMs },
      refusedStreams: [...this.protocols.refusals.values()].reduce((a, b) => a + b, 0),
    };
  }

  peers(): PeerConnectionInfo[] {
    const byPeer = new Map<string, PeerConnectionInfo>();
    const now = this.clock.nowMs();
    for (const c of this.libp2p.getConnections()) {
      const peer = c.remotePeer.toString();
      const existing = byPeer.get(peer);
      const relayed = c.limits !== undefined || c.remoteAddr.toString().includes('/p2p-circuit');
      if (existing !== undefined) {
        existing.addrs.push(c.remoteAddr.toString());
        existing.relayed &&= relayed;
        continue;
      }
      const link = this.links.linkTo(peer, now);
      byPeer.set(peer, {
        peer,
        member: this.gate.isMember(peer),
        addrs: [c.remoteAddr.toString()],
        direction: c.direction,
        relayed,
        rttMs: link?.rttMs ?? null,
        throughputBytesPerSec: link?.throughputBytesPerSec ?? null,
      });
    }
    return [...byPeer.values()];
  }

  viewList(): ViewEntry[] {
    return this.view.list(this.clock.nowMs());
  }

  linkTo(peer: string): LinkEstimate | undefined {
    return this.links.linkTo(peer, this.clock.nowMs());
  }

  /** True while this node has an open connection to `peer`. */
  isConnected(peer: string): boolean {
    return this.libp2p.getConnections().some((c) => c.remotePeer.toString() === peer);
  }

  /**
   * Remembers `addrs` for `peer` and dials it (e.g. a member whose addresses come from the replicated member list,
   * after this node restarted and forgot them). Resolves true once connected; false when no address answered.
   */
  async dialPeer(peer: string, addrs: readonly string[], timeoutMs: number = memberDialTimeoutMs): Promise<boolean> {
    if (!this.isRunning || peer === this.peerId) return false;
    const parsed: Multiaddr[] = [];
    for (const a of addrs) {
      try {
        parsed.push(multiaddr(a));
      } catch {
        // a malformed stored address is skipped
      }
    }
    const id = peerIdFromString(peer);
    await this.libp2p.peerStore.merge(id, { multiaddrs: parsed.map((m) => m.decapsulateCode(multiaddrP2pCode)) }).catch(() => undefined);
    try {
      await this.libp2p.dial(id, { signal: AbortSignal.timeout(timeoutMs) });
      return true;
    } catch (err) {
      this.log.debug({ peer, err: meshErrorMessage(err) }, 'dial from the member list failed');
      return false;
    }
  }

  /** Bytes moved to or from a peer outside a BulkStream (e.g. by migration's own tunnel). */
  recordTransfer(peer: string, bytes: number, durationMs: number): void {
    this.links.recordTransfer(peer, bytes, durationMs, this.clock.nowMs());
  }

  // ---- join tokens ----

  createJoinToken(ttlMs: number = joinTokenTtlMsDefault): { token: string; info: JoinTokenInfo } {
    this.assertRunning();
    const clusterId = this.membership.ensureClusterId();
    const bootstrapAddrs = this.bootstrapAddrs();
    const created = this.tokens.create({ clusterId, bootstrap: bootstrapAddrs, ttlMs, nowMs: this.clock.nowMs() });
    this.log.info({ tokenId: created.info.id, expiresAt: created.info.expiresAt, clusterId }, 'join token created');
    return created;
  }

  listJoinTokens(): JoinTokenInfo[] {
    return this.tokens.list(this.clock.nowMs());
  }

  revokeJoinToken(id: string): JoinTokenInfo {
    const info = this.tokens.revoke(id, this.clock.nowMs());
    this.log.info({ tokenId: id }, 'join token revoked');
    return info;
  }

  /**
   * Joins the cluster of a token: dials its bootstrap addresses in turn and presents it to the issuer, with the
   * member name and site this node asks for.
   */
  async join(token: string, joiner: { name?: string | undefined; site?: string | undefined } = {}): Promise<JoinResult> {
    this.assertRunning();
    const payload = decodeJoinToken(token);
    checkTokenForJoiner(payload, this.membership.clusterId, this.clock.nowMs());
    const failures: string[] = [];
    for (const addr of payload.b) {
      let target: Multiaddr;
      try {
        target = multiaddr(addr);
      } catch {
        failures.push(`${addr}: not a multiaddr`);
        continue;
      }
      const issuer = target.getComponents().findLast((c) => c.name === 'p2p')?.value;
      if (issuer === undefined || issuer === this.peerId) {
        failures.push(`${addr}: ${issuer === undefined ? 'no /p2p/ peer ID' : 'is this node'}`);
        continue;
      }
      let list: MemberList | undefined;
      for (let attempt = 1; attempt <= joinAttemptsPerAddrMax && list === undefined; attempt++) {
        try {
          await this.libp2p.dial(target, { signal: AbortSignal.timeout(joinAttemptTimeoutMs) });
          const request: JoinRequest = { token, ...(joiner.name === undefined ? {} : { name: joiner.name }), ...(joiner.site === undefined ? {} : { site: joiner.site }) };
          list = await this.protocols.request(issuer, joinProtocol, request, { validate: validateMemberList, timeoutMs: joinAttemptTimeoutMs });
        } catch (err) {
          if (err instanceof MeshRemoteError) {
            const remoteCode = err.details?.remoteCode;
            if (typeof remoteCode === 'string' && joinTokenCodes.has(remoteCode)) throw new JoinTokenError(remoteCode as JoinTokenCodeValue, err.message);
            if (typeof remoteCode === 'string' && joinHookErrorCodes.has(remoteCode)) throw new JoinRefusedError(remoteCode, `the issuer refused the join: ${err.message}`, { details: { issuer } });
          }
          // A stream reset right after connecting (the connection was being replaced) is worth one more try.
          if (err instanceof MeshStreamRefusedError && attempt < joinAttemptsPerAddrMax) continue;
          failures.push(`${addr}: ${meshErrorMessage(err)}`);
        }
      }
      if (list === undefined) continue;
      this.membership.joinCluster(list.clusterId, payload.b);
      this.learnMembers(list, 'token');
      this.log.info({ clusterId: list.clusterId, issuer, members: list.members.length }, 'joined the cluster');
      return { clusterId: list.clusterId, issuer, members: this.membership.peers(), ...(list.extra === undefined ? {} : { extra: list.extra }) };
    }
    throw new MeshJoinError('mesh_join_unreachable', `no bootstrap address of the join token answered: ${failures.join('; ')}`, { details: { failures } });
  }

  private async onJoin(req: JoinRequest, peer: string): Promise<MemberList> {
    const payload = decodeJoinToken(req.token);
    let extra: Record<string, unknown> | null = null;
    try {
      const joiner: JoinerInfo = { addrs: await this.addrsOf(peer), ...(req.name === undefined ? {} : { name: req.name }), ...(req.site === undefined ? {} : { site: req.site }) };
      extra = (await this.joinHook?.redeem(peer, payload, joiner)) ?? null;
      if (extra === null) this.tokens.redeem(payload, this.membership.clusterId, peer, this.clock.nowMs());
    } catch (err) {
      this.log.warn({ peer, tokenId: payload.i, code: err instanceof MeshError ? err.code : undefined, reason: meshErrorMessage(err) }, 'refused a join');
      throw err;
    }
    this.membership.admit([peer], 'token', this.clock.nowMs());
    this.log.info({ peer, tokenId: payload.i }, 'admitted a peer through a join token');
    // Tell the other members now rather than at the next sync round.
    for (const p of this.connectedMembers()) if (p !== peer) void this.syncWith(p);
    const list = await this.memberList();
    return extra === null ? list : { ...list, extra };
  }

  /** Installs the issuer-side join hook (the cluster service's Raft admission). */
  setJoinHook(hook: JoinHook | null): void {
    this.joinHook = hook;
  }

  // ---- member sync ----

  private async memberList(): Promise<MemberList> {
    const clusterId = this.membership.clusterId ?? '';
    const members = await Promise.all(this.membership.peers().map(async (peer) => ({ peer, addrs: await this.addrsOf(peer) })));
    return { clusterId, members };
  }

  /** Addresses to pass on for a member: ours, or what identify told us (listen and circuit addresses). */
  private async addrsOf(peer: string): Promise<string[]> {
    if (peer === this.peerId) return this.bootstrapAddrs().slice(0, addrsPerPeerMax);
    try {
      const p = await this.libp2p.peerStore.get(peerIdFromString(peer));
      const addrs = p.addresses.map((a) => a.multiaddr.toString());
      // Circuit addresses first: a peer that needs them has no route to the others.
      return [...addrs.filter((a) => a.includes('/p2p-circuit')), ...addrs.filter((a) => !a.includes('/p2p-circuit'))].slice(0, addrsPerPeerMax);
    } catch {
      return []; // not in the peer store yet
    }
  }

  private learnMembers(list: MemberList, source: 'token' | 'learnt' = 'learnt'): void {
    const mine = this.membership.clusterId;
    if (mine !== null && list.clusterId !== mine) {
      this.log.warn({ theirs: list.clusterId, mine }, 'ignored a member list of another cluster');
      return;
    }
    const peers = list.members.map((m) => m.peer).filter((p) => p !== this.peerId);
    const added = this.membership.admit(peers, source, this.clock.nowMs());
    if (added.length > 0) this.log.info({ added }, 'learnt new members');
    for (const m of list.members) {
      if (m.peer === this.peerId || m.addrs.length === 0) continue;
      const addrs: Multiaddr[] = [];
      for (const a of m.addrs) {
        try {
          addrs.push(multiaddr(a));
        } catch {
          // a bad address from a peer is skipped, the rest are still useful
        }
      }
      void this.libp2p.peerStore.merge(peerIdFromString(m.peer), { multiaddrs: addrs }).catch(() => undefined);
    }
  }

  private async syncWith(peer: string): Promise<void> {
    if (!this.isRunning || this.membership.clusterId === null) return;
    try {
      const theirs = await this.protocols.request(peer, membersProtocol, await this.memberList(), { validate: validateMemberList, timeoutMs: memberDialTimeoutMs });
      this.learnMembers(theirs);
    } catch (err) {
      this.log.debug({ peer, err: meshErrorMessage(err) }, 'member sync failed');
    }
  }

  private connectedMembers(): string[] {
    const out = new Set<string>();
    for (const c of this.libp2p.getConnections()) {
      const p = c.remotePeer.toString();
      if (this.gate.isMember(p)) out.add(p);
    }
    return [...out];
  }

  private async syncRound(): Promise<void> {
    if (!this.isRunning) return;
    const connected = new Set(this.connectedMembers());
    const toSync = shuffle([...connected]).slice(0, membersSyncPeersPerRoundMax);
    const toDial = shuffle(this.membership.peers().filter((p) => p !== this.peerId && !connected.has(p))).slice(0, memberDialsPerRoundMax);
    await Promise.allSettled([
      ...toSync.map((p) => this.syncWith(p)),
      ...toDial.map((p) => this.libp2p.dial(peerIdFromString(p), { signal: AbortSignal.timeout(memberDialTimeoutMs) })),
    ]);
  }

  private keepAlive(peer: string): void {
    // libp2p's reconnect queue re-dials peers with this tag when their connection drops.
    void this.libp2p.peerStore.merge(peerIdFromString(peer), { tags: { [KEEP_ALIVE]: { value: 1 } } }).catch(() => undefined);
  }

  private bootstrapAddrs(): string[] {
    const own = this.libp2p.getMultiaddrs().map((a) => a.toString());
    const isLoopback = (a: string): boolean => a.startsWith('/ip4/127.') || a.startsWith('/ip6/::1/');
    // Routable addresses first: a joiner on another machine cannot use the issuer's loopback.
    return [...own.filter((a) => !isLoopback(a)), ...own.filter(isLoopback)];
  }

  // ---- telemetry ----

  private validateTelemetry(msg: Message): TopicValidatorResult {
    if (msg.type !== 'signed') {
      this.counters.rejected.unsigned += 1;
      return TopicValidatorResult.Reject;
    }
    const signer = msg.from.toString();
    const verdict: SampleVerdict = validateSample(msg.data, signer);
    if (!verdict.ok) {
      this.counters.rejected[verdict.reason] += 1;
      this.log.debug({ signer, reason: verdict.reason, detail: verdict.detail }, 'rejected a telemetry message');
      return TopicValidatorResult.Reject;
    }
    if (!this.gate.isMember(signer)) {
      // Ignore, not Reject: the forwarding member is not at fault for an outsider's sample.
      this.counters.ignoredNonMember += 1;
      return TopicValidatorResult.Ignore;
    }
    this.validated.set(msg, verdict.sample);
    return TopicValidatorResult.Accept;
  }

  private onTelemetry(msg: Message): void {
    if (msg.topic !== telemetryTopic || msg.type !== 'signed') return;
    let sample = this.validated.get(msg);
    if (sample === undefined) {
      const v = validateSample(msg.data, msg.from.toString());
      if (!v.ok) return;
      sample = v.sample;
    }
    this.counters.accepted += 1;
    this.view.update(sample, this.clock.nowMs());
  }

  private async telemetryTick(): Promise<void> {
    if (!this.isRunning) return;
    try {
      const sample = await this.buildSample();
      this.view.update(sample, this.clock.nowMs());
      await this.pubsub.publish(telemetryTopic, new TextEncoder().encode(JSON.stringify(sample)));
      this.counters.published += 1;
    } catch (err) {
      this.counters.publishFailed += 1;
      this.log.debug({ err: meshErrorMessage(err) }, 'telemetry publish failed');
    }
    void this.pingPeers();
  }

  private async buildSample(): Promise<TelemetrySample> {
    const stats = await this.stats.collect();
    const now = this.clock.nowMs();
    const connected = new Set(this.libp2p.getConnections().map((c) => c.remotePeer.toString()));
    const links = [...connected]
      .slice(0, telemetryLinksMax)
      .map((peer) => {
        const l = this.links.linkTo(peer, now);
        return { peer, rttMs: l?.rttMs ?? null, rttVarMs: l?.rttVarMs ?? null, throughputBytesPerSec: l?.throughputBytesPerSec ?? null };
      });
    this.seq += 1;
    return {
      v: 1,
      nodeId: this.peerId,
      name: this.options.nodeName,
      clusterId: this.membership.clusterId,
      seq: this.seq,
      sentAtMs: now,
      version: this.options.version,
      ...stats,
      vms: this.options.vmCounts?.() ?? { running: 0, total: 0 },
      links,
    };
  }

  private async pingPeers(): Promise<void> {
    if (this.pinging || !this.isRunning) return;
    this.pinging = true;
    try {
      const peers: PeerId[] = [];
      const seen = new Set<string>();
      for (const c of this.libp2p.getConnections()) {
        const id = c.remotePeer.toString();
        if (seen.has(id) || !this.gate.isMember(id)) continue;
        seen.add(id);
        peers.push(c.remotePeer);
      }
      const timeoutMs = Math.min(this.options.config.telemetryIntervalMs, pingTimeoutMsMax);
      await Promise.allSettled(
        peers.slice(0, pingsPerTickMax).map(async (p) => {
          const rtt = await this.libp2p.services.linkPing.ping(p, { signal: AbortSignal.timeout(timeoutMs), runOnLimitedConnection: true });
          this.links.recordRtt(p.toString(), rtt, this.clock.nowMs());
        }),
      );
    } finally {
      this.pinging = false;
    }
  }

  private assertRunning(): void {
    if (!this.isRunning) throw new MeshNotRunningError('the mesh is not running');
  }
}

function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}
