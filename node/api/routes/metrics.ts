// Prometheus exposition: this node's metrics, or with ?scope=cluster every node's telemetry from the gossip view.
import Type from 'typebox';
import type { Api } from '../server.js';

export interface MetricsRouteDeps {
  local(): Promise<string>;
  cluster(): Promise<string>;
  contentType: string;
}

export function registerMetricsRoutes(app: Api, deps: MetricsRouteDeps): void {
  app.get(
    '/metrics',
    {
      // Public like most exporters (Prometheus scrapes without credentials); it carries no secrets or VM specs.
      config: { auth: 'public' },
      schema: {
        summary: 'Prometheus metrics',
        description:
          'Text exposition format. scope=local (default): this node (Raft, mesh, API, process). ' +
          'scope=cluster: the latest telemetry of every node in the cluster view, labelled by node, so one scrape covers the cluster.',
        tags: ['system'],
        querystring: Type.Object(
          { scope: Type.Optional(Type.Union([Type.Literal('local'), Type.Literal('cluster')], { default: 'local' })) },
          { additionalProperties: false },
        ),
        response: { 200: Type.String({ description: 'Prometheus text format 0.0.4' }) },
      },
    },
    async (request, reply) => {
      const body = request.query.scope === 'cluster' ? await deps.cluster() : await deps.local();
      return reply.type(deps.contentType).send(body);
    },
  );
}
