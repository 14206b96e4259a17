// Proves forming a cluster through Raft with real node processes and the CLI: node 1 runs `cluster init`, node 2
// joins with a token from node 1 and node 3 with a token from node 2 (a follower: join tokens live in Raft, so any
// member admits); joiners become learners under the name and site they ask for and the leader promotes them to 3
// voters; writes are accepted on followers (forwarded to the leader) and read back linearizably on another node; a
// 4th node stays a learner (3 voters below 5 members), is removed with `node remove` from a follower and then gets
// nothing (its streams are refused), like a peer that never was a member trying to propose; node 2 restarted on its
// data dir reopens Raft and catches up.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { multiaddr } from '@multiformats/multiaddr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mesh, MeshStreamRefusedError, silentLogger } from '../../mesh/index.js';
import { clusterProtocol } from '../../node/cluster/service.js';
import { collect, runCli, spawnCli, waitForLog } from '../support/proc.js';
import { pollFor, type NodeProc } from '../support/cluster-http.js';

/** Bound for joins, promotion and catch-up on loopback. */
const convergeBoundMs = 15_000;
/** How far a follower's commit/applied may trail node 1's in one status snapshot. */
const indexSlack = 5;

interface Status {
  initialised: boolean;
  clusterId: string | null;
  nodeId: string;
  raft: { role: string; term: number; leader: string | null; commit: number; applied: number } | null;
  members: Array<{ id: string; role: string }>;
}

const procs: NodeProc[] = [];
let admin = '';

async function startNode(name: string, dataDir = mkdtempSync(join(tmpdir(), `nc-join-${name}-`))): Promise<NodeProc> {
  const child = spawnCli([
    'node', 'start', '--data-dir', dataDir, '--name', name, '--api-host', '127.0.0.1', '--api-port', '0',
    '--set', 'mesh.listen=/ip4/127.0.0.1/tcp/0', '--set', 'mesh.mdns=false',
  ]);
  const started = await waitForLog(child, (r) => r.msg === 'node started');
  return { name, dataDir, child, url: started.api as string, peerId: started.peerId as string };
}

async function cli(p: NodeProc, args: string[], token?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCli([...args, '--api', p.url, '--json', ...(token === undefined ? [] : ['--token', token])]);
}

async function status(p: NodeProc, token = admin): Promise<Status | null> {
  const r = await cli(p, ['cluster', 'status'], token);
  return r.code === 0 ? (JSON.parse(r.stdout) as Status) : null;
}

function until<T>(what: string, check: () => Promise<T | null | undefined | false>): Promise<T> {
  return pollFor(what, convergeBoundMs, check, 200);
}

async function joinToken(issuer: NodeProc): Promise<string> {
  const r = await cli(issuer, ['cluster', 'join-token', 'create'], admin);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { token: string }).token;
}

beforeAll(async () => {
  procs.push(...(await Promise.all(['j1', 'j2', 'j3'].map((n) => startNode(n)))));
}, 60_000);

let outsider: Mesh | null = null;

afterAll(async () => {
  await outsider?.stop();
  for (const p of procs) {
    if (p.child.exitCode === null) p.child.kill('SIGKILL');
    rmSync(p.dataDir, { recursive: true, force: true });
  }
});

describe('joining an initialised cluster through Raft', () => {
  it('admits joiners as learners, promotes them to voters and replicates the state to them', async () => {
    const [n1, n2, n3] = procs as [NodeProc, NodeProc, NodeProc];
    const init = await cli(n1, ['cluster', 'init']);
    expect(init.code, init.stderr).toBe(0);
    const { adminToken, clusterId } = JSON.parse(init.stdout) as { adminToken: string; clusterId: string };
    admin = adminToken;

    for (const [joiner, issuer, site] of [[n2, n1, 'site-a'], [n3, n2, 'site-b']] as const) {
      const token = await joinToken(issuer);
      const r = await cli(joiner, ['cluster', 'join', token, '--site', site]);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { clusterId: string; issuer: string; raft?: { clusterId: string; leader: string; voters: string[] } };
      expect(out).toMatchObject({ clusterId, issuer: issuer.peerId, raft: { clusterId, leader: n1.peerId } });
      expect(out.raft?.voters).toContain(n1.peerId);
      // The token was used up through Raft: a second use is refused, wherever it is presented.
      const again = await cli(procs[0] === joiner ? n3 : joiner, ['cluster', 'join', token]);
      expect(again.code).not.toBe(0);
    }

    // Promotion: the leader keeps 3 voters, so both caught-up learners become voters.
    const s1 = await until('3 voters on node 1', async () => {
      const s = await status(n1);
      return s !== null && s.members.length === 3 && s.members.every((m) => m.role === 'voter') ? s : null;
    });
    expect(s1.members.map((m) => m.id).sort()).toEqual([n1.peerId, n2.peerId, n3.peerId].sort());
    expect(s1.raft).toMatchObject({ role: 'leader', leader: n1.peerId });
    const nodes = JSON.parse((await cli(n3, ['node', 'list'], admin)).stdout) as Array<{ id: string; name: string; site: string; raftRole: string }>;
    expect(nodes.map((n) => [n.name, n.site, n.raftRole]).sort()).toEqual([['j1', '', 'leader'], ['j2', 'site-a', 'voter'], ['j3', 'site-b', 'voter']]);

    for (const p of [n2, n3]) {
      const s = await until(`${p.name} caught up`, async () => {
        const [mine, lead] = [await status(p), await status(n1)];
        if (mine?.raft == null || lead?.raft == null) return null;
        const close = lead.raft.commit - mine.raft.commit <= indexSlack && lead.raft.applied - mine.raft.applied <= indexSlack;
        return close && mine.members.length === 3 ? mine : null;
      });
      expect(s).toMatchObject({ initialised: true, clusterId, nodeId: p.peerId });
      expect(s.raft).toMatchObject({ role: 'follower', leader: n1.peerId });
    }

    // Writes on a follower go to the leader and are answered once applied there: the next read on another node has it.
    const created = await cli(n2, ['token', 'create', '--name', 'after-join', '--role', 'viewer'], admin);
    expect(created.code, created.stderr).toBe(0);
    const viewer = (JSON.parse(created.stdout) as { secret: string }).secret;
    const listed = await cli(n3, ['token', 'list'], admin);
    expect(JSON.parse(listed.stdout)).toMatchObject({ tokens: expect.arrayContaining([expect.objectContaining({ name: 'after-join' })]) as unknown });
    expect((await status(n3, viewer))?.clusterId).toBe(clusterId);
    const moved = await cli(n3, ['node', 'set', 'j1', '--site', 'site-c'], admin);
    expect(moved.code, moved.stderr).toBe(0);
    expect(JSON.parse(moved.stdout)).toMatchObject({ name: 'j1', site: 'site-c' });

    // A peer that is not a member cannot propose: its stream is refused and nothing is applied.
    const outsiderDir = mkdtempSync(join(tmpdir(), 'nc-join-outsider-'));
    outsider = await Mesh.create({
      config: {
        listen: ['/ip4/127.0.0.1/tcp/0'], announce: [], bootstrap: [], mdns: false, members: [], telemetryIntervalMs: 1000, telemetryTtlMs: 0, maxConnections: 16,
        relay: { enabled: false, reserve: false, maxReservations: 1, reservationTtlMs: 60_000, dataLimitBytes: 1 << 20, durationLimitMs: 60_000 },
      },
      identityDir: join(outsiderDir, 'identity'), dataDir: outsiderDir, nodeName: 'outsider', version: 'test', logger: silentLogger,
    });
    await outsider.start();
    const n1Addr = ((await (await fetch(`${n1.url}/v1/mesh/status`, { headers: { authorization: `Bearer ${admin}` } })).json()) as { addresses: string[] }).addresses[0] ?? '';
    await outsider.libp2p.dial(multiaddr(n1Addr));
    const forged = { type: 'token.create', at: Date.now(), actor: { kind: 'system', id: 'x' }, from: null, id: 'forged-token', name: 'forged', role: 'admin', secretHash: 'a'.repeat(64) };
    const refusedPropose = await outsider.protocols
      .request(n1.peerId, clusterProtocol, { op: 'propose', command: forged }, { validate: (v) => v, timeoutMs: 5000 })
      .catch((e: unknown) => e);
    expect(refusedPropose).toBeInstanceOf(MeshStreamRefusedError);
    const tokens = JSON.parse((await cli(n1, ['token', 'list'], admin)).stdout) as { tokens: Array<{ name: string }> };
    expect(tokens.tokens.map((t) => t.name)).not.toContain('forged');
    await outsider.stop();
    outsider = null;
    rmSync(outsiderDir, { recursive: true, force: true });

    // A 4th node joins through a follower and stays a learner: 3 voters until there are 5 members.
    const spare = await startNode('j4');
    procs.push(spare);
    const joined = await cli(spare, ['cluster', 'join', await joinToken(n3)]);
    expect(joined.code, joined.stderr).toBe(0);
    await until('j4 replicated as a learner', async () => {
      const r = await cli(n1, ['node', 'show', 'j4'], admin);
      return r.code === 0 && (JSON.parse(r.stdout) as { raftRole: string; match: number | null }).raftRole === 'learner';
    });
    await new Promise((r) => setTimeout(r, 1_500)); // a few reconcile rounds: no promotion beyond 3 voters
    expect((await status(n1))?.members.filter((m) => m.role === 'voter')).toHaveLength(3);

    // Removed from a follower: out of the Raft configuration and the member list; then it gets nothing.
    const removed = await cli(n2, ['node', 'remove', 'j4'], admin);
    expect(removed.code, removed.stderr).toBe(0);
    await until('j4 gone from every node', async () => {
      const all = await Promise.all([n1, n2, n3].map((p) => status(p)));
      return all.every((s) => s !== null && s.members.length === 3 && !s.members.some((m) => m.id === spare.peerId));
    });
    const meshStatus = async (p: NodeProc): Promise<{ refusedStreams: number }> =>
      (await (await fetch(`${p.url}/v1/mesh/status`, { headers: { authorization: `Bearer ${admin}` } })).json()) as { refusedStreams: number };
    const refusedBefore = (await Promise.all([n1, n2, n3].map(meshStatus))).reduce((a, s) => a + s.refusedStreams, 0);
    // Cut off from its leader, the removed node campaigns; every member refuses its streams.
    await until('members refuse the removed node', async () => (await Promise.all([n1, n2, n3].map(meshStatus))).reduce((a, s) => a + s.refusedStreams, 0) > refusedBefore);
    const audit = JSON.parse((await cli(n1, ['audit', '--limit', '1000'], admin)).stdout) as { records: Array<{ action: string; target: string; outcome: string }> };
    expect(audit.records).toContainEqual(expect.objectContaining({ action: 'member.remove', target: spare.peerId, outcome: 'ok' }));
    expect(audit.records.filter((r) => r.action === 'joinToken.use' && r.outcome === 'ok')).toHaveLength(3);
  }, 90_000);

  it('a restarted joiner reopens Raft and catches up', async () => {
    const [n1, n2] = procs as [NodeProc, NodeProc];
    const done = collect(n2.child, 15_000);
    n2.child.kill('SIGTERM');
    expect((await done).code).toBe(0);
    // Written while node 2 is down (2 of 3 voters are up): it must catch up after its restart.
    const created = await cli(n1, ['token', 'create', '--name', 'while-down', '--role', 'viewer'], admin);
    expect(created.code, created.stderr).toBe(0);
    const viewer = (JSON.parse(created.stdout) as { secret: string }).secret;
    const restarted = await startNode('j2', n2.dataDir);
    procs[1] = restarted;
    const s = await until('restarted node 2 caught up', async () => {
      const [mine, lead] = [await status(restarted, viewer), await status(n1)];
      if (mine?.raft == null || lead?.raft == null) return null;
      return mine.raft.leader === n1.peerId && lead.raft.applied - mine.raft.applied <= indexSlack ? mine : null;
    });
    expect(s).toMatchObject({ initialised: true, nodeId: n2.peerId });
    expect(s.members).toHaveLength(3);
  }, 60_000);
});
