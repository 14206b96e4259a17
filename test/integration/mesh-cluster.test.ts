// Proves a real five-process mesh on loopback (mDNS off): nodes join through one bootstrap node with join tokens
// (API and CLI), every view converges to all five, a SIGKILLed node turns unreachable within the TTL, a non-member
// cannot open cluster protocols, and malformed, expired, revoked, reused and foreign-cluster tokens are refused.
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { multiaddr } from '@multiformats/multiaddr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Mesh, MeshStreamRefusedError, decodeJoinToken, encodeJoinToken, membersProtocol, silentLogger } from '../../mesh/index.js';
import { parseLogLines, runCli, spawnCli, waitForLog } from '../support/proc.js';
import { removeTempDirs, tempDir } from '../support/tmp.js';

afterAll(removeTempDirs);

const telemetryIntervalMs = 500;
const ttlMs = 3 * telemetryIntervalMs + 1000;
const convergeBoundMs = 15_000;

interface NodeProc {
  name: string;
  child: ChildProcess;
  url: string;
  peerId: string;
  stdout: () => string;
}

const procs: NodeProc[] = [];
let outsider: Mesh | undefined;

async function startNode(name: string): Promise<NodeProc> {
  const dataDir = tempDir(`nc-mesh-${name}-`);
  const child = spawnCli([
    'node', 'start', '--data-dir', dataDir, '--name', name, '--api-host', '127.0.0.1', '--api-port', '0',
    '--set', 'mesh.listen=/ip4/127.0.0.1/tcp/0', '--set', 'mesh.mdns=false', '--set', `mesh.telemetryIntervalMs=${telemetryIntervalMs}`,
  ]);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  const started = await waitForLog(child, (r) => r.msg === 'node started');
  const p = { name, child, url: started.api as string, peerId: started.peerId as string, stdout: () => out };
  procs.push(p);
  return p;
}

async function api<T>(p: NodeProc, method: string, path: string, body?: unknown): Promise<{ status: number; type: string; body: T }> {
  const res = await fetch(`${p.url}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? null : JSON.stringify(body),
  });
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: (await res.json()) as T };
}

interface ViewBody {
  nodes: Array<{ nodeId: string; status: string; sample: { name: string } }>;
}

async function until(what: string, boundMs: number, check: () => Promise<boolean>): Promise<number> {
  const start = Date.now();
  while (Date.now() - start < boundMs) {
    if (await check()) return Date.now() - start;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not reached within ${boundMs} ms`);
}

async function createToken(p: NodeProc, ttlSeconds?: number): Promise<{ token: string; id: string }> {
  const r = await api<{ token: string; id: string }>(p, 'POST', '/v1/mesh/join-tokens', ttlSeconds === undefined ? {} : { ttlSeconds });
  expect(r.status).toBe(201);
  return r.body;
}

function cliError(stderr: string): { code?: string; status?: number } {
  const line = stderr.split('\n').find((l) => l.startsWith('{')) ?? '{}';
  return (JSON.parse(line) as { error?: { code?: string; status?: number } }).error ?? {};
}

beforeAll(async () => {
  await Promise.all(['n1', 'n2', 'n3', 'n4', 'n5', 'n6'].map((n) => startNode(n)));
}, 60_000);

afterAll(async () => {
  await outsider?.stop();
  for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
});

describe('five-node mesh', () => {
  it('forms from one bootstrap node with join tokens and every view holds all five', async () => {
    const [n1, n2, n3, n4, n5] = procs as [NodeProc, NodeProc, NodeProc, NodeProc, NodeProc];
    // Through the CLI for one node, through the API for the rest.
    const t2 = await createToken(n1);
    const viaCli = await runCli(['cluster', 'join', t2.token, '--api', n2.url, '--json']);
    expect(viaCli.code, viaCli.stderr).toBe(0);
    expect((JSON.parse(viaCli.stdout) as { issuer: string }).issuer).toBe(n1.peerId);
    for (const p of [n3, n4, n5]) {
      const t = await createToken(n1);
      const r = await api<{ clusterId: string }>(p, 'POST', '/v1/mesh/join', { token: t.token });
      expect(r.status).toBe(200);
    }
    const five = [n1, n2, n3, n4, n5];
    const ids = new Set(five.map((p) => p.peerId));
    const tookMs = await until('all five in every view', convergeBoundMs, async () => {
      const views = await Promise.all(five.map((p) => api<ViewBody>(p, 'GET', '/v1/mesh/view')));
      return views.every((v) => ids.size === v.body.nodes.filter((n) => ids.has(n.nodeId) && n.status === 'reachable').length);
    });
    expect(tookMs).toBeLessThan(convergeBoundMs);

    const list = await runCli(['node', 'list', '--api', n3.url]);
    expect(list.code).toBe(0);
    for (const p of five) expect(list.stdout).toContain(p.peerId);
    const peers = await api<{ peers: Array<{ peer: string; member: boolean }> }>(n1, 'GET', '/v1/mesh/peers');
    expect(peers.body.peers.filter((x) => x.member).length).toBeGreaterThanOrEqual(4);
  }, 60_000);

  it('refuses cluster protocols to a peer that is not a member and logs its peer id', async () => {
    const n1 = procs[0]!;
    const status = await api<{ addresses: string[] }>(n1, 'GET', '/v1/mesh/status');
    const dir = tempDir('nc-outsider-');
    outsider = await Mesh.create({
      config: {
        listen: ['/ip4/127.0.0.1/tcp/0'], announce: [], bootstrap: [], mdns: false, members: [], telemetryIntervalMs, telemetryTtlMs: 0, maxConnections: 16,
        relay: { enabled: false, reserve: false, maxReservations: 1, reservationTtlMs: 60_000, dataLimitBytes: 1 << 20, durationLimitMs: 60_000 },
      },
      identityDir: join(dir, 'identity'), dataDir: dir, nodeName: 'outsider', version: 'test', logger: silentLogger,
    });
    await outsider.start();
    // The outsider knows n1's address (as anyone on the network could) and dials it directly.
    await outsider.libp2p.dial(multiaddr(status.body.addresses[0]));
    const err = await outsider.protocols
      .request(n1.peerId, membersProtocol, { clusterId: 'x', members: [] }, { validate: (v) => v, timeoutMs: 5000 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MeshStreamRefusedError);
    const outsiderId = outsider.peerId;
    await until('refusal logged', 5000, async () =>
      parseLogLines(n1.stdout()).some((r) => r.msg === 'refused cluster protocol stream from a non-member peer' && r.peer === outsiderId && r.protocol === membersProtocol),
    );
  }, 30_000);

  it('refuses malformed, expired, revoked, reused and foreign-cluster tokens with distinct codes', async () => {
    const [n1, , , , , n6] = procs as [NodeProc, NodeProc, NodeProc, NodeProc, NodeProc, NodeProc];
    const join = (token: string) => runCli(['cluster', 'join', token, '--api', n6.url, '--json']);

    const malformed = await api<{ code: string }>(n6, 'POST', '/v1/mesh/join', { token: 'nctoken1.not-a-token' });
    expect(malformed.status).toBe(400);
    expect(malformed.type).toContain('application/problem+json');
    expect(malformed.body.code).toBe('join_token_malformed');
    const badCli = await join('hello');
    expect(badCli.code).toBe(4);
    expect(cliError(badCli.stderr).code).toBe('join_token_malformed');

    const shortLived = await createToken(n1, 1);
    await new Promise((r) => setTimeout(r, 1200));
    const expired = await join(shortLived.token);
    expect(expired.code).toBe(4);
    expect(cliError(expired.stderr)).toMatchObject({ code: 'join_token_expired', status: 410 });

    const toRevoke = await createToken(n1);
    const revokeCli = await runCli(['cluster', 'join-token', 'revoke', toRevoke.id, '--api', n1.url]);
    expect(revokeCli.code).toBe(0);
    const revoked = await join(toRevoke.token);
    expect(revoked.code).toBe(4);
    expect(cliError(revoked.stderr)).toMatchObject({ code: 'join_token_revoked', status: 403 });

    // A token n2 already used in the first test, presented by another node.
    const tokens = await runCli(['cluster', 'join-token', 'list', '--api', n1.url, '--json']);
    const used = (JSON.parse(tokens.stdout) as Array<{ id: string; state: string }>).filter((t) => t.state === 'used');
    expect(used.length).toBe(4);
    const fresh = await createToken(n1);
    const ok = await api(procs[1]!, 'POST', '/v1/mesh/join', { token: fresh.token }); // n2 uses it (already a member: allowed)
    expect(ok.status).toBe(200);
    const reused = await join(fresh.token);
    expect(reused.code).toBe(4);
    expect(cliError(reused.stderr)).toMatchObject({ code: 'join_token_used', status: 409 });

    const genuine = await createToken(n1);
    const forged = encodeJoinToken({ ...decodeJoinToken(genuine.token), c: '00000000-0000-0000-0000-000000000000' });
    const foreign = await api<{ code: string }>(n6, 'POST', '/v1/mesh/join', { token: forged });
    expect(foreign.status).toBe(409);
    expect(foreign.body.code).toBe('join_token_wrong_cluster');

    const unknownRevoke = await runCli(['cluster', 'join-token', 'revoke', 'abcdef', '--api', n1.url]);
    expect(unknownRevoke.code).toBe(4);
    // n6 is still outside the cluster.
    const status = await api<{ clusterId: string | null }>(n6, 'GET', '/v1/mesh/status');
    expect(status.body.clusterId).toBeNull();
  }, 60_000);

  it('marks a SIGKILLed node unreachable within the TTL', async () => {
    const [n1, n2, n3, n4, n5] = procs as [NodeProc, NodeProc, NodeProc, NodeProc, NodeProc];
    n5.child.kill('SIGKILL');
    const killedAt = Date.now();
    await until('n5 unreachable everywhere', ttlMs + 3000, async () => {
      const views = await Promise.all([n1, n2, n3, n4].map((p) => api<ViewBody>(p, 'GET', '/v1/mesh/view')));
      return views.every((v) => v.body.nodes.find((n) => n.nodeId === n5.peerId)?.status === 'unreachable');
    });
    // The TTL counts from the last sample, which arrived at most one interval before the kill.
    expect(Date.now() - killedAt).toBeLessThanOrEqual(ttlMs + 1500);
    const views = await Promise.all([n1, n2, n3, n4].map((p) => api<ViewBody>(p, 'GET', '/v1/mesh/view')));
    for (const v of views) expect(v.body.nodes.filter((n) => n.status === 'reachable').length).toBe(4);
  }, 30_000);
});
