// Join tokens: `nctoken1.<base64url(JSON)>` carrying the cluster ID, bootstrap multiaddrs, a token ID, a
// one-time secret and an expiry. The issuer keeps only SHA-256 of the secret and compares in constant
// time. Every refusal has its own code (malformed, expired, revoked, used, wrong cluster, invalid).
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import { JoinTokenCode, JoinTokenError, MeshStateError } from './errors.js';
import { readJsonState, writeJsonState } from './state-file.js';

export const joinTokenPrefix = 'nctoken1.';
export const joinTokenSecretBytes = 32;
export const joinTokenIdBytes = 8;
export const joinTokenTtlMsDefault = 60 * 60 * 1000;
export const joinTokenTtlMsMax = 7 * 24 * 60 * 60 * 1000;
export const joinTokenTtlMsMin = 1000;
/** Longest encoded token accepted: bounds decoding work on hostile input. */
export const joinTokenCharsMax = 8192;
/** Bootstrap addresses carried by one token. */
export const joinTokenBootstrapMax = 16;
/** Token records kept by the issuer (active and spent); the oldest spent ones are pruned first. */
export const joinTokensStoredMax = 1024;
export const joinTokensFileName = 'join-tokens.json';

export interface JoinTokenPayload {
  v: 1;
  /** Cluster ID. */
  c: string;
  /** Token ID (hex): how the issuer finds the record; also what `revoke` takes. */
  i: string;
  /** Secret (base64url); only its hash is stored. */
  s: string;
  /** Bootstrap multiaddrs, each ending in /p2p/<issuer peer id>. */
  b: string[];
  /** Expiry, Unix ms. */
  e: number;
}

export function encodeJoinToken(p: JoinTokenPayload): string {
  return joinTokenPrefix + Buffer.from(JSON.stringify(p), 'utf8').toString('base64url');
}

function malformed(why: string): JoinTokenError {
  return new JoinTokenError(JoinTokenCode.malformed, `join token is malformed: ${why}`);
}

export function decodeJoinToken(token: string): JoinTokenPayload {
  const t = token.trim();
  if (t.length > joinTokenCharsMax) throw malformed(`longer than ${joinTokenCharsMax} characters`);
  if (!t.startsWith(joinTokenPrefix)) throw malformed(`does not start with "${joinTokenPrefix}"`);
  const body = t.slice(joinTokenPrefix.length);
  if (!/^[A-Za-z0-9_-]+$/.test(body)) throw malformed('not base64url');
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as unknown;
  } catch {
    throw malformed('payload is not JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw malformed('payload is not an object');
  const p = raw as Record<string, unknown>;
  if (p.v !== 1) throw malformed('unknown version');
  if (typeof p.c !== 'string' || p.c.length === 0 || p.c.length > 128) throw malformed('bad cluster ID');
  if (typeof p.i !== 'string' || !/^[0-9a-f]{1,64}$/.test(p.i)) throw malformed('bad token ID');
  if (typeof p.s !== 'string' || !/^[A-Za-z0-9_-]{16,128}$/.test(p.s)) throw malformed('bad secret');
  if (!Array.isArray(p.b) || p.b.length === 0 || p.b.length > joinTokenBootstrapMax || !p.b.every((a) => typeof a === 'string' && a.startsWith('/') && a.length < 512)) {
    throw malformed('bad bootstrap addresses');
  }
  if (typeof p.e !== 'number' || !Number.isSafeInteger(p.e) || p.e <= 0) throw malformed('bad expiry');
  return { v: 1, c: p.c, i: p.i, s: p.s, b: p.b as string[], e: p.e };
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

export type JoinTokenState = 'active' | 'expired' | 'used' | 'revoked';

export interface JoinTokenRecord {
  id: string;
  secretHash: string;
  clusterId: string;
  bootstrap: string[];
  createdAtMs: number;
  expiresAtMs: number;
  usedAtMs: number | null;
  usedBy: string | null;
  revokedAtMs: number | null;
}

export interface JoinTokenInfo {
  id: string;
  state: JoinTokenState;
  createdAt: string;
  expiresAt: string;
  usedAt: string | null;
  usedBy: string | null;
  revokedAt: string | null;
}

export function tokenState(r: JoinTokenRecord, nowMs: number): JoinTokenState {
  if (r.revokedAtMs !== null) return 'revoked';
  if (r.usedAtMs !== null) return 'used';
  if (nowMs >= r.expiresAtMs) return 'expired';
  return 'active';
}

function info(r: JoinTokenRecord, nowMs: number): JoinTokenInfo {
  const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
  return {
    id: r.id,
    state: tokenState(r, nowMs),
    createdAt: new Date(r.createdAtMs).toISOString(),
    expiresAt: new Date(r.expiresAtMs).toISOString(),
    usedAt: iso(r.usedAtMs),
    usedBy: r.usedBy,
    revokedAt: iso(r.revokedAtMs),
  };
}

/** The joiner's own check before dialling: an expired token or one of another cluster is refused locally. */
export function checkTokenForJoiner(p: JoinTokenPayload, localClusterId: string | null, nowMs: number): void {
  if (localClusterId !== null && localClusterId !== p.c) {
    throw new JoinTokenError(JoinTokenCode.wrongCluster, `join token is for cluster ${p.c}, but this node belongs to cluster ${localClusterId}`);
  }
  if (nowMs >= p.e) throw new JoinTokenError(JoinTokenCode.expired, `join token ${p.i} expired at ${new Date(p.e).toISOString()}`);
}

/** The issuer's token records, persisted in <dataDir>/identity/join-tokens.json. */
export class JoinTokenStore {
  private readonly file: string;
  private records: JoinTokenRecord[] = [];

  constructor(identityDir: string) {
    this.file = join(identityDir, joinTokensFileName);
    const raw = readJsonState(this.file);
    if (raw !== undefined) {
      const s = raw as { v?: unknown; tokens?: unknown };
      if (s.v !== 1 || !Array.isArray(s.tokens)) throw new MeshStateError(`${this.file} has an unknown format`);
      this.records = s.tokens as JoinTokenRecord[];
    }
  }

  create(opts: { clusterId: string; bootstrap: string[]; ttlMs: number; nowMs: number }): { token: string; info: JoinTokenInfo } {
    const ttlMs = Math.min(Math.max(opts.ttlMs, joinTokenTtlMsMin), joinTokenTtlMsMax);
    const id = randomBytes(joinTokenIdBytes).toString('hex');
    const secret = randomBytes(joinTokenSecretBytes).toString('base64url');
    const bootstrap = opts.bootstrap.slice(0, joinTokenBootstrapMax);
    const record: JoinTokenRecord = {
      id,
      secretHash: hashSecret(secret),
      clusterId: opts.clusterId,
      bootstrap,
      createdAtMs: opts.nowMs,
      expiresAtMs: opts.nowMs + ttlMs,
      usedAtMs: null,
      usedBy: null,
      revokedAtMs: null,
    };
    this.records.push(record);
    this.prune(opts.nowMs);
    this.save();
    const token = encodeJoinToken({ v: 1, c: opts.clusterId, i: id, s: secret, b: bootstrap, e: record.expiresAtMs });
    return { token, info: info(record, opts.nowMs) };
  }

  list(nowMs: number): JoinTokenInfo[] {
    return this.records.map((r) => info(r, nowMs));
  }

  revoke(id: string, nowMs: number): JoinTokenInfo {
    const r = this.records.find((x) => x.id === id);
    if (r === undefined) throw new JoinTokenError(JoinTokenCode.notFound, `no join token with ID ${id}`);
    r.revokedAtMs ??= nowMs;
    this.save();
    return info(r, nowMs);
  }

  /**
   * Checks a presented token and marks it used by `peer`. The order of checks makes the answer as specific
   * as possible: cluster, then identity (ID and secret), then revoked, used, expired.
   */
  redeem(p: JoinTokenPayload, clusterId: string | null, peer: string, nowMs: number): JoinTokenRecord {
    if (clusterId === null || p.c !== clusterId) {
      throw new JoinTokenError(JoinTokenCode.wrongCluster, `join token is for cluster ${p.c}, this node is in ${clusterId ?? 'no cluster'}`);
    }
    const r = this.records.find((x) => x.id === p.i);
    const presented = Buffer.from(hashSecret(p.s), 'hex');
    // Compare against a dummy hash when the ID is unknown so that timing does not tell IDs apart.
    const expected = Buffer.from(r?.secretHash ?? '0'.repeat(64), 'hex');
    const secretOk = expected.length === presented.length && timingSafeEqual(expected, presented);
    if (r === undefined || !secretOk) throw new JoinTokenError(JoinTokenCode.invalid, 'join token is not one this node issued');
    const state = tokenState(r, nowMs);
    if (state === 'revoked') throw new JoinTokenError(JoinTokenCode.revoked, `join token ${r.id} was revoked`);
    if (state === 'used') {
      // Idempotent for the peer that used it (a retry after a lost answer); refused for anyone else.
      if (r.usedBy === peer) return r;
      throw new JoinTokenError(JoinTokenCode.used, `join token ${r.id} was already used`);
    }
    if (state === 'expired') throw new JoinTokenError(JoinTokenCode.expired, `join token ${r.id} expired at ${new Date(r.expiresAtMs).toISOString()}`);
    r.usedAtMs = nowMs;
    r.usedBy = peer;
    this.save();
    return r;
  }

  private prune(nowMs: number): void {
    if (this.records.length <= joinTokensStoredMax) return;
    const spent = this.records.filter((r) => tokenState(r, nowMs) !== 'active').sort((a, b) => a.createdAtMs - b.createdAtMs);
    const drop = new Set(spent.slice(0, this.records.length - joinTokensStoredMax).map((r) => r.id));
    this.records = this.records.filter((r) => !drop.has(r.id));
    if (this.records.length > joinTokensStoredMax) this.records = this.records.slice(-joinTokensStoredMax);
  }

  private save(): void {
    writeJsonState(this.file, { v: 1, tokens: this.records });
  }
}
