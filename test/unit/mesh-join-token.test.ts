// Proves join tokens: encoding round-trips, only a hash of the secret is stored, and malformed, expired, revoked,
// reused, wrong-cluster and unknown tokens are refused with distinct codes; state survives a restart.
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { JoinTokenError } from '../../mesh/errors.js';
import { JoinTokenStore, checkTokenForJoiner, decodeJoinToken, encodeJoinToken, joinTokenPrefix } from '../../mesh/join-token.js';
import { removeTempDirs, tempDir } from '../support/tmp.js';

afterAll(removeTempDirs);

const boot = ['/ip4/127.0.0.1/tcp/8781/p2p/12D3KooWMZ1MWi9SFwVbsWneo9FTEtw5NxYVuh2TGkMtjwJDFBok'];

function store(): { s: JoinTokenStore; dir: string } {
  const dir = tempDir('nc-tok-');
  return { s: new JoinTokenStore(dir), dir };
}

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof JoinTokenError) return err.code;
    throw err;
  }
  return undefined;
}

describe('join tokens', () => {
  it('round-trips and stores only the secret hash, in a 0600 file', () => {
    const { s, dir } = store();
    const { token, info } = s.create({ clusterId: 'c1', bootstrap: boot, ttlMs: 60_000, nowMs: 1000 });
    expect(token.startsWith(joinTokenPrefix)).toBe(true);
    const p = decodeJoinToken(token);
    expect(p).toMatchObject({ v: 1, c: 'c1', i: info.id, b: boot, e: 61_000 });
    const file = join(dir, 'join-tokens.json');
    expect(readFileSync(file, 'utf8')).not.toContain(p.s);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(info.state).toBe('active');
  });

  it('refuses malformed tokens', () => {
    for (const bad of ['', 'hello', `${joinTokenPrefix}***`, `${joinTokenPrefix}${Buffer.from('[1]').toString('base64url')}`, `${joinTokenPrefix}${Buffer.from('{"v":2}').toString('base64url')}`, `${joinTokenPrefix}${'A'.repeat(9000)}`]) {
      expect(code(() => decodeJoinToken(bad))).toBe('join_token_malformed');
    }
    const good = decodeJoinToken(store().s.create({ clusterId: 'c1', bootstrap: boot, ttlMs: 60_000, nowMs: 0 }).token);
    expect(code(() => decodeJoinToken(encodeJoinToken({ ...good, b: [] })))).toBe('join_token_malformed');
  });

  it('admits once, then refuses reuse by another peer but not a retry by the same one', () => {
    const { s } = store();
    const p = decodeJoinToken(s.create({ clusterId: 'c1', bootstrap: boot, ttlMs: 60_000, nowMs: 0 }).token);
    expect(s.redeem(p, 'c1', 'peerA', 10).usedBy).toBe('peerA');
    expect(s.redeem(p, 'c1', 'peerA', 11).usedBy).toBe('peerA');
    expect(code(() => s.redeem(p, 'c1', 'peerB', 12))).toBe('join_token_used');
  });

  it('refuses expired, revoked, foreign-cluster and forged tokens with distinct codes', () => {
    const { s } = store();
    const expired = decodeJoinToken(s.create({ clusterId: 'c1', bootstrap: boot, ttlMs: 1000, nowMs: 0 }).token);
    expect(code(() => s.redeem(expired, 'c1', 'p', 1000))).toBe('join_token_expired');
    expect(code(() => checkTokenForJoiner(expired, null, 1000))).toBe('join_token_expired');

    const created = s.create({ clusterId: 'c1', bootstrap: boot, ttlMs: 60_000, nowMs: 0 });
    s.revoke(created.info.id, 5);
    expect(code(() => s.redeem(decodeJoinToken(created.token), 'c1', 'p', 6))).toBe('join_token_revoked');

    const other = decodeJoinToken(s.create({ clusterId: 'c1', bootstrap: boot, ttlMs: 60_000, nowMs: 0 }).token);
    expect(code(() => s.redeem(other, 'c2', 'p', 1))).toBe('join_token_wrong_cluster');
    expect(code(() => s.redeem({ ...other, c: 'c2' }, 'c1', 'p', 1))).toBe('join_token_wrong_cluster');
    expect(code(() => checkTokenForJoiner(other, 'c9', 1))).toBe('join_token_wrong_cluster');
    expect(code(() => s.redeem({ ...other, s: 'x'.repeat(43) }, 'c1', 'p', 1))).toBe('join_token_invalid');
    expect(code(() => s.redeem({ ...other, i: 'ffff' }, 'c1', 'p', 1))).toBe('join_token_invalid');
    expect(code(() => s.revoke('ffff', 1))).toBe('join_token_not_found');
  });

  it('keeps token state across a restart', () => {
    const { s, dir } = store();
    const created = s.create({ clusterId: 'c1', bootstrap: boot, ttlMs: 60_000, nowMs: 0 });
    s.redeem(decodeJoinToken(created.token), 'c1', 'peerA', 1);
    const reopened = new JoinTokenStore(dir);
    expect(reopened.list(2)).toEqual([expect.objectContaining({ id: created.info.id, state: 'used', usedBy: 'peerA' })]);
    expect(code(() => reopened.redeem(decodeJoinToken(created.token), 'c1', 'peerB', 3))).toBe('join_token_used');
  });
});
