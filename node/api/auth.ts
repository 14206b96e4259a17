// Bearer-token authentication and role checks for every route, in one place. Each route declares the role
// it needs in its Fastify `config.auth`; one onRequest hook enforces it before the body is parsed, and one
// onRoute hook marks protected routes with the OpenAPI `bearerAuth` security requirement.
import { isIP } from 'node:net';
import type { FastifyRequest } from 'fastify';
import type { Actor, ApiRole } from '../../consensus/cluster/index.js';
import { ForbiddenError, NotReadyError, UnauthorizedError } from '../errors.js';
import type { Api } from './server.js';

/**
 * What a route needs:
 * - `public`: anyone (probes, version, OpenAPI, metrics);
 * - `bootstrap`: founding a cluster: unauthenticated from loopback (the handler refuses a second init), from
 *   anywhere else an admin token once the cluster exists;
 * - `viewer` < `operator` < `admin`: a bearer token with at least that role. A node that is not initialised
 *   has no tokens yet: it serves these unauthenticated to loopback callers only (the local CLI).
 */
export type RouteAuth = 'public' | 'bootstrap' | ApiRole;

/** Routes that do not declare `config.auth` need the strongest role: a forgotten declaration fails closed. */
export const routeAuthDefault: RouteAuth = 'admin';

const roleRank: Readonly<Record<ApiRole, number>> = { viewer: 1, operator: 2, admin: 3 };

/** admin ⊃ operator ⊃ viewer. */
export function roleSatisfies(have: ApiRole, need: ApiRole): boolean {
  return roleRank[have] >= roleRank[need];
}

/** Who made a request: a verified API token, or a loopback caller on a node without a cluster. */
export type Principal = { kind: 'token'; tokenId: string; name: string; role: ApiRole } | { kind: 'local' };

export interface TokenInfo {
  id: string;
  name: string;
  role: ApiRole;
}

export interface AuthDeps {
  /** True once the node belongs to a cluster (tokens exist): from then on bearer tokens are required. */
  enforced(): boolean;
  /** The live (not revoked) token whose secret this is, or null. Hashing is the caller's job (see node.ts). */
  lookup(secret: string): TokenInfo | null;
  /** True while a reopened cluster log is still being replayed (tokens may not be known yet): refuse with 503, not 401. */
  loading?: () => boolean;
}

/** Longest Authorization header value looked at; anything longer is refused without hashing. */
export const bearerSecretCharsMax = 512;

export const bearerSchemeName = 'bearerAuth';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The role this route needs; see RouteAuth. */
    auth?: RouteAuth;
  }
  interface FastifyRequest {
    /** Set by the auth hook; null on public routes. */
    principal: Principal | null;
  }
}

/** 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const a = address.startsWith('::ffff:') ? address.slice(7) : address;
  if (isIP(a) === 4) return a.startsWith('127.');
  return a === '::1';
}

function bearerSecret(header: string | undefined): string | null {
  if (header === undefined) return null;
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
  return m?.[1] ?? null;
}

function unauthorized(message: string): UnauthorizedError {
  return new UnauthorizedError(message);
}

/** Decides one request; throws UnauthorizedError/ForbiddenError, returns the principal otherwise. */
export function authenticate(deps: AuthDeps, need: RouteAuth, request: Pick<FastifyRequest, 'headers' | 'socket'>): Principal | null {
  if (need === 'public') return null;
  const loopback = isLoopback(request.socket.remoteAddress);
  const header = request.headers.authorization;
  if (!deps.enforced()) {
    if (loopback) return { kind: 'local' };
    throw unauthorized('this node is not initialised (no cluster yet): only loopback callers are served until `novacron cluster init` or `cluster join`');
  }
  if (need === 'bootstrap' && loopback && header === undefined) return { kind: 'local' };
  if (header === undefined) throw unauthorized('missing bearer token: send Authorization: Bearer <token> (CLI: --token or NOVACRON_TOKEN)');
  const secret = bearerSecret(header);
  if (secret === null || secret.length > bearerSecretCharsMax) throw unauthorized('malformed Authorization header: expected Bearer <token>');
  const token = deps.lookup(secret);
  if (token === null) {
    if (deps.loading?.() === true) throw new NotReadyError('this node is still replaying the cluster log; retry shortly');
    throw unauthorized('unknown or revoked token');
  }
  const required: ApiRole = need === 'bootstrap' ? 'admin' : need;
  if (!roleSatisfies(token.role, required)) {
    throw new ForbiddenError(`token "${token.name}" has role ${token.role}; this needs ${required}`, { details: { role: token.role, required } });
  }
  return { kind: 'token', tokenId: token.id, name: token.name, role: token.role };
}

/** The `actor` of a command proposed for this request. */
export function actorOf(request: FastifyRequest): Actor {
  const p = request.principal;
  if (p?.kind === 'token') return { kind: 'token', id: p.tokenId, name: p.name };
  return { kind: 'system', id: 'local' };
}

/** Installs the auth hooks. Call before routes are registered (the onRoute hook only sees later routes). */
export function installAuth(app: Api, deps: AuthDeps): void {
  app.decorateRequest('principal', null);
  app.addHook('onRoute', (route) => {
    const need = route.config?.auth ?? routeAuthDefault;
    if (need === 'public' || route.schema === undefined) return;
    route.schema = { ...route.schema, security: [{ [bearerSchemeName]: [] }] };
  });
  app.addHook('onRequest', async (request, reply) => {
    const need = request.routeOptions.config.auth ?? routeAuthDefault;
    try {
      request.principal = authenticate(deps, need, request);
    } catch (err) {
      if (err instanceof UnauthorizedError) void reply.header('www-authenticate', 'Bearer realm="novacron"');
      throw err;
    }
  });
}
