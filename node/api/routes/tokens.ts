// API tokens and the audit log over REST: create (the secret is returned once), list (never hashes or
// secrets), revoke, and the audit records (who, what, when, from where, outcome) paged by sequence number.
// Writes go through the cluster service's propose with the authenticated token as the actor.
import Type, { type Static } from 'typebox';
import { ApiRoleSchema, auditPageMax, type ApiToken, type AuditRecord } from '../../../consensus/cluster/index.js';
import { actorOf } from '../auth.js';
import { ReadQueryProperties, ReadQuerySchema } from '../consistency.js';
import type { Api } from '../server.js';
import type { ClusterService } from '../../cluster/service.js';

const problemRef = { $ref: 'Problem#' } as const;
const authProblems = { 401: problemRef, 403: problemRef } as const;

/** Audit records per page when the caller does not say. */
export const auditPageDefault = 100;

export const ApiTokenSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  role: ApiRoleSchema,
  createdAt: Type.Integer({ description: 'ms since the epoch' }),
  revokedAt: Type.Union([Type.Integer(), Type.Null()], { description: 'ms since the epoch, or null while live' }),
});

export const TokenCreateBodySchema = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 128, description: 'What the token is for (shown in lists and the audit log)' }),
    role: ApiRoleSchema,
  },
  { additionalProperties: false },
);

const TokenCreatedSchema = Type.Object({
  token: ApiTokenSchema,
  secret: Type.String({ description: 'The bearer secret (`ncapi_…`): shown this once, never stored in clear' }),
});

export const AuditRecordSchema = Type.Object({
  seq: Type.Integer({ description: 'Contiguous from 1' }),
  at: Type.Integer({ description: 'When: the proposer\'s clock, ms since the epoch' }),
  actor: Type.Object({
    kind: Type.Union([Type.Literal('token'), Type.Literal('node'), Type.Literal('system')]),
    id: Type.String({ description: 'Token id, node id or `local`' }),
    name: Type.Optional(Type.String()),
  }),
  action: Type.String({ description: 'The command, e.g. token.create' }),
  target: Type.String({ description: 'Id of the record changed (or the cluster id)' }),
  from: Type.Union([Type.String(), Type.Null()], { description: 'Client address the change came from' }),
  outcome: Type.Union([Type.Literal('ok'), Type.Literal('refused')], { description: '`refused`: the change reached the log but was refused (nothing changed)' }),
  error: Type.Optional(Type.String({ description: 'Why it was refused: the error code' })),
});

const AuditPageSchema = Type.Object({
  records: Type.Array(AuditRecordSchema),
  firstSeq: Type.Integer({ description: 'Oldest seq still held (older records were dropped by the bounded ring)' }),
  nextSeq: Type.Integer({ description: 'Seq the next record will get' }),
});

function tokenOut(t: ApiToken): Static<typeof ApiTokenSchema> {
  return { id: t.id, name: t.name, role: t.role, createdAt: t.createdAt, revokedAt: t.revokedAt };
}

function auditOut(r: AuditRecord): Static<typeof AuditRecordSchema> {
  return { ...r, actor: { ...r.actor } };
}

export interface TokenRouteDeps {
  cluster: ClusterService;
}

export function registerTokenRoutes(app: Api, { cluster }: TokenRouteDeps): void {
  app.post(
    '/v1/tokens',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['auth'],
        summary: 'Create an API token; its secret is returned once',
        body: TokenCreateBodySchema,
        response: { 201: TokenCreatedSchema, 400: problemRef, ...authProblems, 409: problemRef, 503: problemRef },
      },
    },
    async (request, reply) => {
      const created = await cluster.createToken(request.body, { actor: actorOf(request), from: request.ip });
      void reply.code(201).header('cache-control', 'no-store');
      return { token: tokenOut(created.token), secret: created.secret };
    },
  );

  app.get(
    '/v1/tokens',
    {
      config: { auth: 'admin', read: true },
      schema: {
        tags: ['auth'],
        summary: 'API tokens, live and revoked (never their secrets or hashes)',
        querystring: ReadQuerySchema,
        response: { 200: Type.Object({ tokens: Type.Array(ApiTokenSchema) }), 400: problemRef, ...authProblems, 503: problemRef },
      },
    },
    async () => ({ tokens: cluster.listTokens().map(tokenOut) }),
  );

  app.delete(
    '/v1/tokens/:id',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['auth'],
        summary: 'Revoke an API token (the last live admin token cannot be revoked)',
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }),
        response: { 200: Type.Object({ token: ApiTokenSchema }), ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef },
      },
    },
    async (request) => ({ token: tokenOut(await cluster.revokeToken(request.params.id, { actor: actorOf(request), from: request.ip })) }),
  );

  app.get(
    '/v1/audit',
    {
      config: { auth: 'operator', read: true },
      schema: {
        tags: ['auth'],
        summary: 'Audit records (who, what, when, from where, outcome), oldest first, after a sequence number',
        querystring: Type.Object(
          {
            ...ReadQueryProperties,
            after: Type.Optional(Type.Integer({ minimum: 0, default: 0, description: 'Return records with seq > after' })),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: auditPageMax, default: auditPageDefault })),
          },
          { additionalProperties: false },
        ),
        response: { 200: AuditPageSchema, 400: problemRef, ...authProblems, 503: problemRef },
      },
    },
    async (request) => {
      const page = cluster.auditPage(request.query.after ?? 0, request.query.limit ?? auditPageDefault);
      return { records: page.records.map(auditOut), firstSeq: page.firstSeq, nextSeq: page.nextSeq };
    },
  );
}
