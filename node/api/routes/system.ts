// Liveness, readiness and version: public (config.auth, see node/api/auth.ts), so that supervisors and load balancers can probe.
import Type, { type Static } from 'typebox';
import type { Api } from '../server.js';
import { NotReadyError } from '../../errors.js';

export const CheckSchema = Type.Object({
  name: Type.String(),
  ok: Type.Boolean(),
  required: Type.Boolean({ description: 'A failing required check makes the node not ready' }),
  detail: Type.String(),
});
export type Check = Static<typeof CheckSchema>;

export const VersionSchema = Type.Object({
  version: Type.String({ description: 'NovaCron version of this node' }),
  apiVersion: Type.String(),
  node: Type.Object({ name: Type.String(), id: Type.Optional(Type.String({ description: 'Node ID: the libp2p peer ID of this node' })) }),
  runtime: Type.Object({ node: Type.String(), platform: Type.String(), arch: Type.String() }),
  qemu: Type.Object({
    binary: Type.String(),
    version: Type.Union([Type.String(), Type.Null()]),
    supported: Type.Boolean(),
    detail: Type.String(),
  }),
  uptimeSeconds: Type.Number(),
});
export type VersionInfo = Static<typeof VersionSchema>;

export interface SystemRouteDeps {
  checks(): Check[];
  version(): VersionInfo;
}

const problemRef = { $ref: 'Problem#' } as const;

export function registerSystemRoutes(app: Api, deps: SystemRouteDeps): void {
  app.get(
    '/healthz',
    {
      config: { auth: 'public' },
      schema: {
        tags: ['system'],
        summary: 'Liveness: the process is up and its event loop answers',
        response: { 200: Type.Object({ status: Type.Literal('ok') }) },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/readyz',
    {
      config: { auth: 'public' },
      schema: {
        tags: ['system'],
        summary: 'Readiness: every required component of this node is working',
        response: { 200: Type.Object({ status: Type.Literal('ready'), checks: Type.Array(CheckSchema) }), 503: problemRef },
      },
    },
    async () => {
      const checks = deps.checks();
      const failing = checks.filter((c) => c.required && !c.ok);
      if (failing.length > 0) {
        throw new NotReadyError(failing.map((c) => `${c.name}: ${c.detail}`).join('; '), { details: { checks } });
      }
      return { status: 'ready' as const, checks };
    },
  );

  app.get(
    '/v1/version',
    {
      config: { auth: 'public' },
      schema: {
        tags: ['system'],
        summary: 'Version of this node, its runtime and its QEMU',
        response: { 200: VersionSchema },
      },
    },
    async () => deps.version(),
  );
}
