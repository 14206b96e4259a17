// The mesh over REST: status, connected peers, the telemetry view, join tokens (create, list, revoke) and
// joining a cluster with a token. Schemas are TypeBox, so they validate and appear in OpenAPI.
import Type from 'typebox';
import { NameSchema, type Actor } from '../../../consensus/cluster/index.js';
import { actorOf } from '../auth.js';
import { ReadQuerySchema } from '../consistency.js';
import type { Api } from '../server.js';
import {
  TelemetrySampleSchema,
  joinTokenCharsMax,
  joinTokenTtlMsDefault,
  joinTokenTtlMsMax,
  joinTokenTtlMsMin,
  type JoinResult,
  type JoinTokenInfo,
  type Mesh,
} from '../../../mesh/index.js';

const problemRef = { $ref: 'Problem#' } as const;

const PeerIdSchema = Type.String({ description: 'libp2p peer ID (= node ID)' });

export const JoinTokenInfoSchema = Type.Object({
  id: Type.String({ description: 'Token ID: what `revoke` takes; not secret' }),
  state: Type.Union([Type.Literal('active'), Type.Literal('expired'), Type.Literal('used'), Type.Literal('revoked')]),
  createdAt: Type.String({ format: 'date-time' }),
  expiresAt: Type.String({ format: 'date-time' }),
  usedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  usedBy: Type.Union([PeerIdSchema, Type.Null()]),
  revokedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});

const MemberSchema = Type.Object({
  peer: PeerIdSchema,
  source: Type.Union([Type.Literal('self'), Type.Literal('config'), Type.Literal('token'), Type.Literal('learnt')]),
  sinceMs: Type.Number(),
});

const MeshStatusSchema = Type.Object({
  peerId: PeerIdSchema,
  clusterId: Type.Union([Type.String(), Type.Null()]),
  addresses: Type.Array(Type.String(), { description: 'Multiaddrs this node is reachable at' }),
  connections: Type.Integer(),
  members: Type.Array(MemberSchema),
  relay: Type.Object({ enabled: Type.Boolean(), reserve: Type.Boolean(), reservations: Type.Integer() }),
  telemetry: Type.Object({
    intervalMs: Type.Integer(),
    ttlMs: Type.Integer(),
    published: Type.Integer(),
    publishFailed: Type.Integer(),
    accepted: Type.Integer(),
    ignoredNonMember: Type.Integer(),
    rejected: Type.Object({
      oversized: Type.Integer(),
      not_json: Type.Integer(),
      schema: Type.Integer(),
      signer_mismatch: Type.Integer(),
      unsigned: Type.Integer(),
    }),
  }),
  refusedStreams: Type.Integer({ description: 'Cluster-protocol streams refused because the peer is not a member' }),
});

const PeerSchema = Type.Object({
  peer: PeerIdSchema,
  member: Type.Boolean(),
  addrs: Type.Array(Type.String()),
  direction: Type.String(),
  relayed: Type.Boolean({ description: 'Connected through a circuit relay' }),
  rttMs: Type.Union([Type.Number(), Type.Null()]),
  throughputBytesPerSec: Type.Union([Type.Number(), Type.Null()]),
});

const ViewEntrySchema = Type.Object({
  nodeId: PeerIdSchema,
  status: Type.Union([Type.Literal('reachable'), Type.Literal('unreachable')]),
  ageMs: Type.Number({ description: 'Time since the latest sample arrived' }),
  sample: TelemetrySampleSchema,
});

/** Who made a change and from where (for the audit log of a Raft cluster). */
export interface MeshRouteOrigin {
  actor: Actor;
  from: string | null;
}

/** Join tokens: the cluster service's (replicated in Raft once the cluster exists); default the mesh's own store. */
export interface JoinTokenSource {
  create(ttlMs: number, origin: MeshRouteOrigin): Promise<{ token: string; info: JoinTokenInfo }>;
  list(): JoinTokenInfo[];
  revoke(id: string, origin: MeshRouteOrigin): Promise<JoinTokenInfo>;
}

export interface MeshRouteDeps {
  mesh: Mesh;
  /** Joins with a token; default mesh.join. The node passes the cluster service's join (which also opens Raft). */
  join?: (
    token: string,
    joiner: { name?: string | undefined; site?: string | undefined },
  ) => Promise<JoinResult & { raft?: { clusterId: string; leader: string; voters: string[]; learners: string[] } }>;
  joinTokens?: JoinTokenSource;
}

const JoinRaftSchema = Type.Object(
  {
    clusterId: Type.String(),
    leader: PeerIdSchema,
    voters: Type.Array(PeerIdSchema),
    learners: Type.Array(PeerIdSchema),
  },
  { description: 'Set when the cluster runs Raft: this node was admitted as a learner and opened Raft; it is promoted to voter once caught up' },
);

export function registerMeshRoutes(app: Api, { mesh, join, joinTokens }: MeshRouteDeps): void {
  const tokens: JoinTokenSource = joinTokens ?? {
    create: async (ttlMs) => mesh.createJoinToken(ttlMs),
    list: () => mesh.listJoinTokens(),
    revoke: async (id) => mesh.revokeJoinToken(id),
  };
  app.get(
    '/v1/mesh/status',
    { config: { auth: 'viewer' }, schema: { tags: ['mesh'], summary: 'This node\'s mesh identity, addresses, members and telemetry counters', response: { 200: MeshStatusSchema } } },
    async () => mesh.status(),
  );

  app.get(
    '/v1/mesh/peers',
    { config: { auth: 'viewer' }, schema: { tags: ['mesh'], summary: 'Peers connected to this node, with link RTT and throughput', response: { 200: Type.Object({ peers: Type.Array(PeerSchema) }) } } },
    async () => ({ peers: mesh.peers() }),
  );

  app.get(
    '/v1/mesh/view',
    {
      config: { auth: 'viewer' },
      schema: {
        tags: ['mesh'],
        summary: 'The cluster view: latest telemetry sample of every node, with age and reachability',
        response: { 200: Type.Object({ ttlMs: Type.Integer(), nodes: Type.Array(ViewEntrySchema) }) },
      },
    },
    async () => ({ ttlMs: mesh.view.ttlMs, nodes: mesh.viewList().map(({ nodeId, status, ageMs, sample }) => ({ nodeId, status, ageMs, sample })) }),
  );

  app.post(
    '/v1/mesh/join-tokens',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['mesh'],
        summary: 'Create a one-time join token (creates the cluster ID on the first call)',
        body: Type.Optional(
          Type.Object(
            {
              ttlSeconds: Type.Optional(
                Type.Integer({ minimum: joinTokenTtlMsMin / 1000, maximum: joinTokenTtlMsMax / 1000, description: `Lifetime; default ${joinTokenTtlMsDefault / 1000}` }),
              ),
            },
            { additionalProperties: false },
          ),
        ),
        response: { 201: Type.Object({ token: Type.String({ description: 'Give this to the joining node; shown once' }), ...JoinTokenInfoSchema.properties }), 503: problemRef },
      },
    },
    async (request, reply) => {
      const ttlSeconds = request.body?.ttlSeconds;
      const { token, info } = await tokens.create(ttlSeconds === undefined ? joinTokenTtlMsDefault : ttlSeconds * 1000, { actor: actorOf(request), from: request.ip });
      void reply.code(201);
      return { token, ...info };
    },
  );

  app.get(
    '/v1/mesh/join-tokens',
    {
      config: { auth: 'admin', read: true },
      schema: {
        tags: ['mesh'],
        summary: 'Join tokens of the cluster (never their secrets); before `cluster init`, the ones this node issued',
        querystring: ReadQuerySchema,
        response: { 200: Type.Object({ tokens: Type.Array(JoinTokenInfoSchema) }), 400: problemRef, 503: problemRef },
      },
    },
    async () => ({ tokens: tokens.list() }),
  );

  app.delete(
    '/v1/mesh/join-tokens/:id',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['mesh'],
        summary: 'Revoke a join token',
        params: Type.Object({ id: Type.String({ pattern: '^[0-9a-f]{1,64}$' }) }),
        response: { 200: JoinTokenInfoSchema, 404: problemRef },
      },
    },
    async (request) => tokens.revoke(request.params.id, { actor: actorOf(request), from: request.ip }),
  );

  app.post(
    '/v1/mesh/join',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['mesh'],
        summary: 'Make this node join the cluster of a join token (dials its bootstrap addresses; opens Raft as a learner when the cluster runs Raft)',
        body: Type.Object(
          {
            token: Type.String({ minLength: 1, maxLength: joinTokenCharsMax }),
            name: Type.Optional({ ...NameSchema, description: 'Member name to ask for (a DNS label); default: node.name in lower case' }),
            site: Type.Optional(Type.String({ maxLength: 63, description: 'Site label: voters are spread over distinct sites' })),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ clusterId: Type.String(), issuer: PeerIdSchema, members: Type.Array(PeerIdSchema), raft: Type.Optional(JoinRaftSchema) }),
          400: problemRef,
          403: problemRef,
          409: problemRef,
          410: problemRef,
          502: problemRef,
          503: problemRef,
        },
      },
    },
    async (request) => {
      const doJoin: NonNullable<MeshRouteDeps['join']> = join ?? ((t, joiner) => mesh.join(t, joiner));
      const { clusterId, issuer, members, raft } = await doJoin(request.body.token, { name: request.body.name, site: request.body.site });
      return raft === undefined ? { clusterId, issuer, members } : { clusterId, issuer, members, raft };
    },
  );
}
