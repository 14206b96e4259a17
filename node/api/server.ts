// The HTTP API shell: Fastify with TypeBox schemas (validation, TS types and OpenAPI from one source),
// problem+json errors through node/api/problem.ts, and request logs with pino.
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Ajv, type Options as AjvOptions } from 'ajv';
import addFormatsModule from 'ajv-formats';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type RawReplyDefaultExpression, type RawRequestDefaultExpression, type RawServerDefault } from 'fastify';
import type { Logger } from '../log.js';
import { NotFoundError } from '../errors.js';
import { apiVersion, novacronVersion } from '../version.js';
import { ProblemSchema, problemContentType, toProblem } from './problem.js';
import { bearerSchemeName, installAuth, type AuthDeps } from './auth.js';
import { installReadConsistency, type ReadPoint } from './consistency.js';

export type Api = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, FastifyBaseLogger, TypeBoxTypeProvider>;

export const requestTimeoutMs = 30_000;
export const keepAliveTimeoutMs = 65_000;
/** At shutdown, requests in flight get this long to finish; then every connection still open is cut. */
export const apiDrainMs = 2_000;

// ajv-formats is CommonJS: at run time the default import is the plugin function, while its typings
// describe the module namespace; normalise both shapes.
type FormatsPlugin = (ajv: Ajv) => Ajv;
const formatsExport = addFormatsModule as unknown as FormatsPlugin | { default: FormatsPlugin };
const addFormats: FormatsPlugin = typeof formatsExport === 'function' ? formatsExport : formatsExport.default;

export interface ApiOptions {
  logger: Logger;
  bodyLimitBytes: number;
  /** Called once per answered request with the route template (not the raw URL) for metrics. */
  onRequestDone?: (method: string, route: string, status: number, durationS: number) => void;
  /** Bearer-token auth (node/api/auth.ts); without it every route is open (in-process tests of the shell). */
  auth?: AuthDeps;
  /** Read points for routes marked `read: true` (node/api/consistency.ts); without it they read local state. */
  readPoint?: ReadPoint;
}

function makeAjv(options: AjvOptions): Ajv {
  const ajv = new Ajv({
    allErrors: true,
    // Unknown fields are an error, never silently dropped: removeAdditional stays off.
    removeAdditional: false,
    useDefaults: true,
    strict: false,
    ...options,
  });
  addFormats(ajv);
  return ajv;
}

export async function createApi(options: ApiOptions): Promise<Api> {
  const app = Fastify({
    // Widened so Fastify's generics use FastifyBaseLogger; pino's own Logger type is not assignable there.
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-assertion
    loggerInstance: options.logger.child({ component: 'api' }) as FastifyBaseLogger,
    // Fastify's own per-request lines are replaced by one onResponse line below.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: options.bodyLimitBytes,
    requestTimeout: requestTimeoutMs,
    keepAliveTimeout: keepAliveTimeoutMs,
    return503OnClosing: true,
  }).withTypeProvider<TypeBoxTypeProvider>();

  // Bodies are typed exactly; query strings and path params arrive as text and are coerced.
  const strictAjv = makeAjv({ coerceTypes: false });
  const coercingAjv = makeAjv({ coerceTypes: 'array' });
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? strictAjv : coercingAjv).compile(schema));

  app.addSchema(ProblemSchema);
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'NovaCron API',
        version: novacronVersion,
        description: 'REST API served by every NovaCron node. Errors are application/problem+json (RFC 9457).',
      },
      components: {
        securitySchemes: {
          [bearerSchemeName]: {
            type: 'http',
            scheme: 'bearer',
            description: 'API token (`ncadm_…`/`ncapi_…`) with role viewer, operator or admin (admin ⊃ operator ⊃ viewer)',
          },
        },
      },
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  });

  if (options.auth !== undefined) installAuth(app, options.auth);
  if (options.readPoint !== undefined) installReadConsistency(app, options.readPoint);
  if (options.readPoint !== undefined) installReadConsistency(app, options.readPoint);

  app.setErrorHandler((err, request, reply) => {
    const { problem, unexpected } = toProblem(err, request.url);
    if (unexpected) request.log.error({ err, url: request.url, method: request.method }, 'request failed');
    void reply.code(problem.status).type(problemContentType).send(problem);
  });
  app.setNotFoundHandler((request) => {
    throw new NotFoundError(`no route for ${request.method} ${request.url.split('?')[0] ?? ''}`);
  });

  app.addHook('onResponse', (request, reply, done) => {
    options.onRequestDone?.(request.method, request.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000);
    const entry = { method: request.method, url: request.url, status: reply.statusCode, durationMs: Math.round(reply.elapsedTime * 10) / 10 };
    if (reply.statusCode >= 500) request.log.warn(entry, 'request');
    else request.log.debug(entry, 'request');
    done();
  });

  app.get(
    `/${apiVersion}/openapi.json`,
    { config: { auth: 'public' }, schema: { tags: ['system'], summary: 'The OpenAPI 3 document of this API, generated from the route schemas', hide: true } },
    async () => app.swagger(),
  );
  return app;
}

/**
 * Stops the API: no new connections, requests in flight may finish for `drainMs`, then whatever is still open is
 * closed. Without the bound, a keep-alive connection Node does not count as idle holds close() until the client
 * drops it (up to keepAliveTimeoutMs), which outlasts the node's whole shutdown budget.
 */
export async function closeApi(app: Api, drainMs: number = apiDrainMs): Promise<void> {
  const closing = app.close();
  const timer = setTimeout(() => {
    app.server.getConnections((err, count) => {
      app.log.info({ connections: err === null ? count : null, drainMs }, 'API connections still open after the drain: closing them');
      app.server.closeAllConnections();
    });
  }, drainMs);
  try {
    await closing;
  } finally {
    clearTimeout(timer);
  }
}
