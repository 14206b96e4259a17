// Proves the pure parts of the cluster service: what counts as an initialised Raft store, the durable bootstrap
// configuration, the first admin token (random secret, only its hash leaves), the cluster.init command (valid
// against the state machine, which applies it), and member names and addresses.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ClusterStateMachine, encodeCommand, hashSecret } from '../../consensus/cluster/index.js';
import {
  ClusterBootstrapError,
  apiTokenPrefix,
  buildInitCommand,
  generateApiTokenSecret,
  isStoreInitialised,
  memberAddresses,
  memberAddressesMax,
  memberNameFrom,
  readBootstrapConf,
  writeBootstrapConf,
} from '../../node/cluster/bootstrap.js';
import { hash32 } from '../../node/cluster/service.js';
import { formatInit, formatStatus } from '../../node/cli/commands/cluster.js';
import { problemKinds, toProblem } from '../../node/api/problem.js';
import { NotLeaderError } from '../../consensus/core/errors.js';
import { ClusterError } from '../../consensus/cluster/errors.js';

const peer = '12D3KooWMKxtkcFCgBiKoiSxPPvQbQ8omxLXE9VY7FJFeFHKTXNJ';
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('isStoreInitialised', () => {
  const empty = { hardState: { term: 0, vote: null, commit: 0 }, snapshot: null, lastIndex: 0 };
  it('is false for a fresh store and true once it holds a term, entries or a snapshot', () => {
    expect(isStoreInitialised(empty)).toBe(false);
    expect(isStoreInitialised({ ...empty, hardState: { term: 1, vote: peer, commit: 0 } })).toBe(true);
    expect(isStoreInitialised({ ...empty, lastIndex: 3 })).toBe(true);
    expect(isStoreInitialised({ ...empty, snapshot: { index: 5, term: 2, conf: { voters: [peer], learners: [], votersOutgoing: [] } } })).toBe(true);
  });
});

describe('bootstrap configuration file', () => {
  it('round-trips durably and is absent on a node that never founded a cluster', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nc-boot-'));
    dirs.push(dir);
    expect(readBootstrapConf(dir)).toBeNull();
    writeBootstrapConf(dir, [peer]);
    expect(readBootstrapConf(dir)).toEqual({ voters: [peer], learners: [], votersOutgoing: [] });
    expect(JSON.parse(readFileSync(join(dir, 'bootstrap.json'), 'utf8'))).toEqual({ version: 1, voters: [peer] });
  });

  it('refuses a damaged or foreign file rather than guessing a configuration', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nc-boot-'));
    dirs.push(dir);
    for (const text of ['{', '{"version":2,"voters":["a"]}', '{"version":1,"voters":[]}', '{"version":1,"voters":[1]}']) {
      writeFileSync(join(dir, 'bootstrap.json'), text);
      expect(() => readBootstrapConf(dir)).toThrow(ClusterBootstrapError);
    }
  });
});

describe('admin token secret', () => {
  it('is prefixed random base64url whose hash is what the state keeps', () => {
    const a = generateApiTokenSecret();
    const b = generateApiTokenSecret();
    expect(a.secret).toMatch(new RegExp(`^${apiTokenPrefix}[A-Za-z0-9_-]{43}$`));
    expect(a.secret).not.toBe(b.secret);
    expect(a.secretHash).toBe(hashSecret(a.secret));
    const fixed = generateApiTokenSecret((n) => new Uint8Array(n).fill(0));
    expect(fixed.secret).toBe(`${apiTokenPrefix}${'A'.repeat(43)}`);
  });
});

describe('member names and addresses', () => {
  it('turns a node name into a DNS label', () => {
    expect(memberNameFrom('Edge-A')).toBe('edge-a');
    expect(memberNameFrom('--x_y--')).toBe('x-y');
    expect(memberNameFrom('___')).toBe('node');
    expect(memberNameFrom(`a${'b'.repeat(70)}`)).toHaveLength(63);
  });

  it('bounds, dedupes and drops oversized addresses', () => {
    const many = Array.from({ length: 40 }, (_, i) => `/ip4/10.0.0.${i}/tcp/1`);
    expect(memberAddresses([...many, many[0] ?? ''])).toHaveLength(memberAddressesMax);
    expect(memberAddresses(['/ip4/1.2.3.4/tcp/1', '/ip4/1.2.3.4/tcp/1', '', 'x'.repeat(600)])).toEqual(['/ip4/1.2.3.4/tcp/1']);
  });
});

describe('buildInitCommand', () => {
  it('makes a valid cluster.init that the state machine applies: this node a voter, one admin token', () => {
    const token = generateApiTokenSecret();
    const cmd = buildInitCommand({ clusterId: 'c6b1a0a2-0000-4000-8000-000000000001', nodeId: peer, nodeName: 'edge-a', addresses: ['/ip4/127.0.0.1/tcp/4001'], adminTokenHash: token.secretHash, at: 1_700_000_000_000, from: '127.0.0.1' });
    expect(cmd.actor).toMatchObject({ kind: 'system', id: peer });
    const sm = new ClusterStateMachine();
    sm.apply(encodeCommand(cmd), 2);
    expect(sm.getClusterId()).toBe(cmd.clusterId);
    expect(sm.listMembers().map((m) => [m.id, m.role, m.name])).toEqual([[peer, 'voter', 'edge-a']]);
    expect(sm.verifyApiToken(hashSecret(token.secret))?.role).toBe('admin');
    // Only the hash is in the log.
    expect(new TextDecoder().decode(encodeCommand(cmd))).not.toContain(token.secret);
    expect(() => sm.apply(encodeCommand(cmd), 3)).toThrow(expect.objectContaining({ code: 'cluster_already_initialized' }) as Error);
  });
});

describe('hash32', () => {
  it('is stable and spreads peer ids', () => {
    expect(hash32(peer)).toBe(hash32(peer));
    expect(hash32(peer)).not.toBe(hash32(`${peer}x`));
  });
});

describe('problem mapping of cluster and Raft errors', () => {
  it('maps cluster refusals and no-quorum errors to 409 and 503', () => {
    expect(toProblem(new ClusterError('cluster_already_initialized', 'x')).problem.status).toBe(409);
    expect(problemKinds.proposal_timeout?.status).toBe(503);
    expect(problemKinds.proposal_timeout?.title).toMatch(/no quorum/i);
    const notLeader = toProblem(new NotLeaderError(peer)).problem;
    expect(notLeader).toMatchObject({ status: 503, code: 'not_leader', leader: peer });
  });
});

describe('CLI formatting', () => {
  it('prints the admin token once with a warning, and a status table marking the leader', () => {
    const member = { id: peer, name: 'edge-a', role: 'voter', addresses: ['/ip4/127.0.0.1/tcp/1'], site: '', joinedAt: 0, status: 'active' };
    const raft = { role: 'leader', term: 1, leader: peer, commit: 2, applied: 2, snapshotIndex: 0 };
    const text = formatInit({ clusterId: 'c1', adminToken: 'ncadm_abc', adminTokenId: 't1', node: member, raft });
    expect(text.match(/ncadm_abc/g)).toHaveLength(1);
    expect(text).toMatch(/WARNING/);
    const status = formatStatus({ initialised: true, clusterId: 'c1', nodeId: peer, raft, members: [member], apiTokens: 1 });
    expect(status).toMatch(/voter \(leader\)/);
    expect(formatStatus({ initialised: false, clusterId: null, nodeId: peer, raft: null, members: [], apiTokens: 0 })).toMatch(/not running/);
  });
});
