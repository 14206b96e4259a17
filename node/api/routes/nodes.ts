// The cluster's nodes over REST: list and show (the member record, its Raft role, and how this node sees it:
// reachability, RTT, replication, latest telemetry), rename or move to a site, and remove. Reads are linearizable
// unless `?stale=true`; writes go to the leader from any node.
import Type, { type Static } from 'typebox';
import { NameSchema } from '../../../consensus/cluster/index.js';
import { TelemetrySampleSchema } from '../../../mesh/telemetry.js';
import { actorOf } from '../auth.js';
import { ReadQuerySchema } from '../consistency.js';
import type { Api } from '../server.js';
import type { ClusterService, NodeView } from '../../cluster/service.js';
import { ClusterMemberSchema } from './cluster.js';

const problemRef = { $ref: 'Problem#' } as const;
const authProblems = { 401: problemRef, 403: problemRef } as const;

export const NodeViewSchema = Type.Object({
  ...ClusterMemberSchema.properties,
  raftRole: Type.Union([Type.Literal('leader'), Type.Literal('voter'), Type.Literal('learner'), Type.Literal('none')], {
    description: 'Role in the Raft configuration this node knows (none: not in it yet, or removed)',
  }),
  self: Type.Boolean({ description: 'The node answering this request' }),
  reachable: Type.Boolean({ description: 'Connected to the answering node, or its telemetry is fresh' }),
  rttMs: Type.Union([Type.Number(), Type.Null()], { description: 'Smoothed RTT from the answering node' }),
  match: Type.Union([Type.Integer(), Type.Null()], { description: 'Replicated log index (only when the leader answers)' }),
  telemetry: Type.Union([Type.Object({ ageMs: Type.Number(), sample: TelemetrySampleSchema }), Type.Null()]),
});

const NodeRefParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128, description: 'Node id or name' }) });

export const NodeUpdateBodySchema = Type.Object(
  {
    name: Type.Optional({ ...NameSchema, description: 'New member name (a DNS label, unique in the cluster)' }),
    site: Type.Optional(Type.String({ maxLength: 63, description: 'Site label: the leader spreads voters over distinct sites' })),
  },
  { additionalProperties: false, minProperties: 1 },
);

function nodeOut(n: NodeView): Static<typeof NodeViewSchema> {
  return { ...n, addresses: [...n.addresses] };
}

export interface NodeRouteDeps {
  cluster: ClusterService;
}

export function registerNodeRoutes(app: Api, { cluster }: NodeRouteDeps): void {
  app.get(
    '/v1/nodes',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['nodes'],
        summary: 'Every member node with its Raft role, reachability, RTT and latest telemetry',
        querystring: ReadQuerySchema,
        response: { 200: Type.Object({ nodes: Type.Array(NodeViewSchema) }), 400: problemRef, ...authProblems, 503: problemRef },
      },
    },
    async () => ({ nodes: cluster.listNodes().map(nodeOut) }),
  );

  app.get(
    '/v1/nodes/:id',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['nodes'],
        summary: 'One member node, by id or name',
        params: NodeRefParams,
        querystring: ReadQuerySchema,
        response: { 200: Type.Object({ node: NodeViewSchema }), 400: problemRef, ...authProblems, 404: problemRef, 503: problemRef },
      },
    },
    async (request) => ({ node: nodeOut(cluster.getNode(request.params.id)) }),
  );

  app.patch(
    '/v1/nodes/:id',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['nodes'],
        summary: 'Rename a node or set its site; answered once applied on this node',
        params: NodeRefParams,
        body: NodeUpdateBodySchema,
        response: { 200: Type.Object({ node: NodeViewSchema }), 400: problemRef, ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef, 504: problemRef },
      },
    },
    async (request) => ({ node: nodeOut(await cluster.updateNode(request.params.id, request.body, { actor: actorOf(request), from: request.ip })) }),
  );

  app.delete(
    '/v1/nodes/:id',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['nodes'],
        summary: 'Remove a node from the cluster (Raft configuration first, then the member list); the last voter cannot be removed',
        params: NodeRefParams,
        response: { 200: Type.Object({ node: ClusterMemberSchema }), ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef, 504: problemRef },
      },
    },
    async (request) => {
      const m = await cluster.removeNode(request.params.id, { actor: actorOf(request), from: request.ip });
      return { node: { ...m, addresses: [...m.addresses] } };
    },
  );
}
