// The cluster over REST: founding it (`POST /v1/cluster/init`, which prints the first admin token once) and its
// status as this node sees it (Raft role, term, leader, commit and apply index, members).
import Type, { type Static } from 'typebox';
import { NameSchema, SettingsSchema, type Member } from '../../../consensus/cluster/index.js';
import { actorOf } from '../auth.js';
import { ReadQuerySchema } from '../consistency.js';
import type { Api } from '../server.js';
import type { ClusterService } from '../../cluster/service.js';

const problemRef = { $ref: 'Problem#' } as const;

const PeerIdSchema = Type.String({ description: 'libp2p peer ID (= node ID)' });

export const ClusterMemberSchema = Type.Object({
  id: PeerIdSchema,
  name: Type.String(),
  role: Type.Union([Type.Literal('voter'), Type.Literal('learner')]),
  addresses: Type.Array(Type.String()),
  site: Type.String(),
  joinedAt: Type.Integer({ description: 'ms since the epoch' }),
  status: Type.String(),
});

export const RaftStatusSchema = Type.Object({
  role: Type.String({ description: 'leader, follower, candidate or pre-candidate' }),
  term: Type.Integer(),
  leader: Type.Union([PeerIdSchema, Type.Null()]),
  commit: Type.Integer({ description: 'Highest log index known committed' }),
  applied: Type.Integer({ description: 'Highest log index applied to this node\'s state' }),
  snapshotIndex: Type.Integer(),
});

export const ClusterStatusSchema = Type.Object({
  initialised: Type.Boolean({ description: 'This node holds the state of an initialised cluster' }),
  clusterId: Type.Union([Type.String(), Type.Null()]),
  nodeId: PeerIdSchema,
  raft: Type.Union([RaftStatusSchema, Type.Null()], { description: 'null while this node runs without Raft' }),
  members: Type.Array(ClusterMemberSchema),
  apiTokens: Type.Integer({ description: 'API tokens not revoked' }),
});

export const ClusterInitBodySchema = Type.Optional(
  Type.Object(
    { name: Type.Optional({ ...NameSchema, description: 'Member name of this node (a DNS label); default: node.name in lower case' }) },
    { additionalProperties: false },
  ),
);

const ClusterInitResultSchema = Type.Object({
  clusterId: Type.String(),
  adminToken: Type.String({ description: 'Bearer token with the admin role: shown this once, never stored in clear' }),
  adminTokenId: Type.String(),
  node: ClusterMemberSchema,
  raft: RaftStatusSchema,
});

function memberOut(m: Member): Static<typeof ClusterMemberSchema> {
  return { ...m, addresses: [...m.addresses] };
}

export interface ClusterRouteDeps {
  cluster: ClusterService;
}

export function registerClusterRoutes(app: Api, { cluster }: ClusterRouteDeps): void {
  app.post(
    '/v1/cluster/init',
    {
      // Unauthenticated from loopback (the local CLI founds the cluster; a second init is refused with 409).
      config: { auth: 'bootstrap' },
      schema: {
        tags: ['cluster'],
        summary: 'Found a cluster with this node as its one voter; returns the first admin token once',
        body: ClusterInitBodySchema,
        response: { 201: ClusterInitResultSchema, 400: problemRef, 401: problemRef, 403: problemRef, 409: problemRef, 503: problemRef },
      },
    },
    async (request, reply) => {
      const result = await cluster.init({ name: request.body?.name, from: request.ip });
      void reply.code(201).header('cache-control', 'no-store');
      const { raft } = result;
      return {
        ...result,
        node: memberOut(result.node),
        raft: { role: raft.role, term: raft.term, leader: raft.leader, commit: raft.commit, applied: raft.applied, snapshotIndex: raft.snapshotIndex },
      };
    },
  );

  app.get(
    '/v1/cluster/status',
    {
      config: { auth: 'viewer' },
      schema: {
        tags: ['cluster'],
        summary: 'Cluster ID, this node\'s Raft role, term, leader, commit and apply index, and the members',
        response: { 200: ClusterStatusSchema, 401: problemRef, 403: problemRef },
      },
    },
    async () => {
      const status = cluster.status();
      return { ...status, members: status.members.map(memberOut) };
    },
  );

  app.get(
    '/v1/cluster/settings',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['cluster'],
        summary: 'Cluster settings: most voters the leader keeps, and how long a voter may be unreachable before it is replaced',
        querystring: ReadQuerySchema,
        response: { 200: SettingsSchema, 400: problemRef, 401: problemRef, 403: problemRef, 503: problemRef },
      },
    },
    async () => ({ ...cluster.getSettings() }),
  );

  app.patch(
    '/v1/cluster/settings',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['cluster'],
        summary: 'Change cluster settings; answered once applied on this node',
        body: Type.Partial(SettingsSchema, { minProperties: 1 }),
        response: { 200: SettingsSchema, 400: problemRef, 401: problemRef, 403: problemRef, 409: problemRef, 503: problemRef, 504: problemRef },
      },
    },
    async (request) => ({ ...(await cluster.updateSettings(request.body, { actor: actorOf(request), from: request.ip })) }),
  );
}
