// Read consistency for GET routes that declare `config: { read: true }`: linearizable by default (a ReadIndex
// point is reached before the handler reads the local state), or `?stale=true` to read this node's state as it is
// (what a node cut off from the majority can still serve). Every such answer says how it was served
// (`NovaCron-Read-Consistency`) and how old the data may be (`NovaCron-Data-Age-Ms`).
import Type from 'typebox';
import type { ReadInfo } from '../cluster/service.js';
import type { Api } from './server.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** A read of the replicated state: served after a read point unless `?stale=true`. */
    read?: boolean;
  }
}

export const readConsistencyHeader = 'novacron-read-consistency';
export const dataAgeHeader = 'novacron-data-age-ms';

/** Query parameters every state read accepts (spread into a route's querystring schema). */
export const ReadQueryProperties = {
  stale: Type.Optional(
    Type.Boolean({
      default: false,
      description: 'Serve this node\'s state as it is, without a linearizable read point (works without quorum); the NovaCron-Data-Age-Ms header says how old it may be',
    }),
  ),
};

export const ReadQuerySchema = Type.Object(ReadQueryProperties, { additionalProperties: false });

export type ReadPoint = (stale: boolean) => Promise<ReadInfo>;

export function installReadConsistency(app: Api, readPoint: ReadPoint): void {
  app.addHook('preHandler', async (request, reply) => {
    if (request.routeOptions.config.read !== true || request.method !== 'GET') return;
    const query = request.query as { stale?: unknown } | undefined;
    const info = await readPoint(query?.stale === true);
    void reply.header(readConsistencyHeader, info.consistency);
    if (info.dataAgeMs !== null) void reply.header(dataAgeHeader, String(info.dataAgeMs));
  });
}
