// Proves joining an initialised cluster through Raft with three real node processes: node 1 runs `cluster init`,
// nodes 2 and 3 join with join tokens created on node 1 (CLI); the leader admits each as a learner and promotes
// caught-up learners to voters, so within a bound node 1's status shows 3 voters and nodes 2 and 3 report the same
// cluster id, node 1 as leader and commit/applied close to node 1's; a join presented to a follower is refused with
// not_leader naming the leader; an API token created on node 1 after the joins is accepted by node 2 (replicated
// state); node 2 restarted on its data dir reopens Raft and catches up.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, runCli, spawnCli, waitForLog } from '../support/proc.js';

/** Bound for joins, promotion and catch-up on loopback. */
const convergeBoundMs = 15_000;
/** How far a follower's commit/applied may trail node 1's in one status snapshot. */
const indexSlack = 5;

interface NodeProc {
  name: string;
  dataDir: string;
  child: ChildProcess;
  url: string;
  peerId: string;
}

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

async function until<T>(what: string, check: () => Promise<T | null | undefined | false>): Promise<T> {
  const start = Date.now();
  while (Date.now() - start < convergeBoundMs) {
    const v = await check();
    if (v !== null && v !== undefined && v !== false) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what} not reached within ${convergeBoundMs} ms`);
}

async function joinToken(issuer: NodeProc): Promise<string> {
  const r = await cli(issuer, ['cluster', 'join-token', 'create'], admin);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { token: string }).token;
}

beforeAll(async () => {
  procs.push(...(await Promise.all(['j1', 'j2', 'j3'].map((n) => startNode(n)))));
}, 60_000);

afterAll(() => {
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

    for (const joiner of [n2, n3]) {
      const r = await cli(joiner, ['cluster', 'join', await joinToken(n1)]);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { clusterId: string; issuer: string; raft?: { clusterId: string; leader: string; voters: string[] } };
      expect(out).toMatchObject({ clusterId, issuer: n1.peerId, raft: { clusterId, leader: n1.peerId } });
      expect(out.raft?.voters).toContain(n1.peerId);
    }

    // Promotion: the leader keeps 3 voters, so both caught-up learners become voters.
    const s1 = await until('3 voters on node 1', async () => {
      const s = await status(n1);
      return s !== null && s.members.length === 3 && s.members.every((m) => m.role === 'voter') ? s : null;
    });
    expect(s1.members.map((m) => m.id).sort()).toEqual([n1.peerId, n2.peerId, n3.peerId].sort());
    expect(s1.raft).toMatchObject({ role: 'leader', leader: n1.peerId });

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

    // A join presented to a follower is refused with not_leader naming the leader (the token is not used up).
    const spare = await startNode('j4');
    procs.push(spare);
    const followerToken = await joinToken(n2);
    const refused = await cli(spare, ['cluster', 'join', followerToken]);
    expect(refused.code).toBe(5);
    const err = (JSON.parse(refused.stderr.split('\n').find((l) => l.startsWith('{')) ?? '{}') as { error?: { code?: string; message?: string } }).error;
    expect(err?.code).toBe('not_leader');
    expect(err?.message).toContain(n1.peerId);

    // State created on node 1 after the joins reaches node 2's state machine.
    const created = await cli(n1, ['token', 'create', '--name', 'after-join', '--role', 'viewer'], admin);
    expect(created.code, created.stderr).toBe(0);
    const viewer = (JSON.parse(created.stdout) as { secret: string }).secret;
    await until('node 2 accepts the new token', async () => (await status(n2, viewer)) !== null);
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
