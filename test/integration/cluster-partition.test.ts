// Proves partition behaviour across network namespaces: a node cut off from the majority serves stale reads and refuses writes and linearizable reads with 503 no_quorum, the majority keeps writing, and the node rejoins cleanly.
// Topology (root and iproute2 needed; no iptables/nft/netem is assumed): a "switch" namespace holds a bridge; each
// node namespace has a veth into that bridge with a mesh address 10.78.0.1<i>/24 (mesh.listen on it, fixed port), so
// the three nodes talk only through the bridge, and a partition is `ip link set <its bridge port> down` in the switch
// namespace (packets are silently dropped, as in a real cut). Each namespace also has a point-to-point veth to the
// root namespace (10.<a>.<i>.2/30, root side .1) and the REST API listens on 0.0.0.0 inside its namespace, so the
// test process reaches every API directly with fetch, including an isolated node's. The CLI runs inside the node's
// namespace with `ip netns exec` against 127.0.0.1, because an uninitialised node serves only loopback callers
// (`cluster init`, `cluster join`). Nothing routes between the API links (the namespaces have no default route), so
// they cannot heal a mesh partition. Case 1 isolates a follower; case 2 isolates the leader (check-quorum step-down,
// a new leader on the majority side). Namespace and link names carry the pid; everything is removed in afterAll.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { assertBuilt, cliPath, collect, waitForLog } from '../support/proc.js';
import { commandWorks, describeIf, isRoot } from '../support/prereq.js';
import { api, logCollector, outcome, pollFor, tokenNames, type Problem } from '../support/cluster-http.js';

const suffix = String(process.pid % 10000);
const apiNet = `10.${64 + (process.pid % 64)}`;
const switchNs = `ncPs${suffix}`;
const apiPort = 8780;
const meshPort = 4001;
const convergeBoundMs = 20_000;
/** How long an isolated node may take to notice it has no quorum (election timeout 0.8–1.6 s, read timeout 5 s). */
const isolationBoundMs = 10_000;

interface NodeProc {
  i: number;
  name: string;
  ns: string;
  dataDir: string;
  url: string;
  child: ChildProcess | null;
  peerId: string;
  log: ReturnType<typeof logCollector> | null;
}

interface Status {
  nodeId: string;
  raft: { role: string; term: number; leader: string | null; commit: number; applied: number } | null;
  members: Array<{ id: string; role: string }>;
}

const nodes: NodeProc[] = [1, 2, 3].map((i) => ({
  i,
  name: `p${i}`,
  ns: `ncP${i}n${suffix}`,
  dataDir: '',
  url: `http://${apiNet}.${i}.2:${apiPort}`,
  child: null,
  peerId: '',
  log: null,
}));
let admin = '';

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

function tryIp(...args: string[]): void {
  try {
    ip(...args);
  } catch {
    // already gone
  }
}

/** The node's port on the switch bridge: down = partitioned from the others. */
const switchPort = (n: NodeProc): string => `ps${n.i}x${suffix}`;

function cleanup(): void {
  for (const n of nodes) {
    if (n.child !== null && n.child.exitCode === null && n.child.signalCode === null) n.child.kill('SIGKILL');
    n.child = null;
  }
  for (const n of nodes) {
    tryIp('link', 'del', `pa${n.i}x${suffix}`);
    tryIp('netns', 'del', n.ns);
  }
  tryIp('netns', 'del', switchNs);
  for (const n of nodes) if (n.dataDir !== '') rmSync(n.dataDir, { recursive: true, force: true });
}

function setupNetwork(): void {
  ip('netns', 'add', switchNs);
  ip('-n', switchNs, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
  ip('-n', switchNs, 'link', 'set', 'br0', 'up');
  for (const n of nodes) {
    ip('netns', 'add', n.ns);
    ip('-n', n.ns, 'link', 'set', 'lo', 'up');
    // Mesh: node namespace <-> switch bridge.
    const meshIf = `pm${n.i}x${suffix}`;
    ip('link', 'add', meshIf, 'netns', n.ns, 'type', 'veth', 'peer', 'name', switchPort(n), 'netns', switchNs);
    ip('-n', switchNs, 'link', 'set', switchPort(n), 'master', 'br0');
    ip('-n', switchNs, 'link', 'set', switchPort(n), 'up');
    ip('-n', n.ns, 'addr', 'add', `10.78.0.1${n.i}/24`, 'dev', meshIf);
    ip('-n', n.ns, 'link', 'set', meshIf, 'up');
    // API: root namespace <-> node namespace, point to point.
    const rootIf = `pa${n.i}x${suffix}`;
    const nsIf = `pn${n.i}x${suffix}`;
    ip('link', 'add', rootIf, 'type', 'veth', 'peer', 'name', nsIf, 'netns', n.ns);
    ip('addr', 'add', `${apiNet}.${n.i}.1/30`, 'dev', rootIf);
    ip('link', 'set', rootIf, 'up');
    ip('-n', n.ns, 'addr', 'add', `${apiNet}.${n.i}.2/30`, 'dev', nsIf);
    ip('-n', n.ns, 'link', 'set', nsIf, 'up');
  }
}

async function startNode(n: NodeProc): Promise<void> {
  assertBuilt();
  n.dataDir = mkdtempSync(join(tmpdir(), `nc-part-${n.name}-`));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NOVACRON_')));
  const child = spawn(
    'ip',
    [
      'netns', 'exec', n.ns, process.execPath, cliPath, 'node', 'start', '--data-dir', n.dataDir, '--name', n.name,
      '--api-host', '0.0.0.0', '--api-port', String(apiPort),
      '--set', `mesh.listen=/ip4/10.78.0.1${n.i}/tcp/${meshPort}`, '--set', 'mesh.mdns=false', '--set', 'mesh.relay.enabled=false',
    ],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  n.child = child;
  n.log = logCollector(child);
  const started = await waitForLog(child, (r) => r.msg === 'node started', 30_000);
  n.peerId = started.peerId as string;
}

/** The CLI inside the node's namespace, against its API on loopback. */
async function cli(n: NodeProc, args: string[]): Promise<unknown> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NOVACRON_')));
  const full = [...args, '--api', `http://127.0.0.1:${apiPort}`, '--json', ...(admin === '' ? [] : ['--token', admin])];
  const r = await collect(spawn('ip', ['netns', 'exec', n.ns, process.execPath, cliPath, ...full], { env, stdio: ['ignore', 'pipe', 'pipe'] }), 30_000);
  if (r.code !== 0) throw new Error(`novacron ${args.join(' ')} on ${n.name} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as unknown;
}

async function status(n: NodeProc): Promise<Status | null> {
  const r = await api<Status>(n.url, 'GET', '/v1/cluster/status', { token: admin, timeoutMs: 5_000 });
  return r.status === 200 ? r.body : null;
}

function nameOf(peerId: string | null | undefined): string {
  return nodes.find((n) => n.peerId === peerId)?.name ?? String(peerId);
}

async function createToken(n: NodeProc, name: string): ReturnType<typeof api> {
  return api(n.url, 'POST', '/v1/tokens', { token: admin, body: { name, role: 'viewer' }, timeoutMs: 20_000 });
}

/** Writes `count` tokens through the given nodes in turn; every one must be acknowledged. */
async function majorityWrites(through: NodeProc[], prefix: string, count: number): Promise<string[]> {
  const names: string[] = [];
  for (let k = 0; k < count; k++) {
    const name = `${prefix}-${k}`;
    const r = await createToken(through[k % through.length]!, name);
    expect(r.status, `${name} through ${through[k % through.length]!.name}: ${outcome(r)}`).toBe(201);
    names.push(name);
  }
  return names;
}

function partition(n: NodeProc): void {
  ip('-n', switchNs, 'link', 'set', switchPort(n), 'down');
}

function heal(n: NodeProc): void {
  ip('-n', switchNs, 'link', 'set', switchPort(n), 'up');
}

/** What an isolated node must answer: stale reads with their age; 503 no_quorum problem+json for writes and linearizable reads. */
async function expectIsolatedBehaviour(n: NodeProc, knownName: string): Promise<{ noQuorumAfterMs: number; writeRefusedInMs: number; dataAgeMs: number | null }> {
  const t0 = performance.now();
  const refusedRead = await pollFor(`${n.name} refuses a linearizable read with no_quorum`, isolationBoundMs, async () => {
    const r = await api<Problem>(n.url, 'GET', '/v1/tokens', { token: admin, timeoutMs: 15_000 });
    return r.status === 503 ? r : null;
  });
  const noQuorumAfterMs = Math.round(performance.now() - t0);
  expect(refusedRead.headers.get('content-type')).toContain('application/problem+json');
  expect(refusedRead.body.code).toBe('no_quorum');

  const stale = await api<{ tokens: Array<{ name: string }> }>(n.url, 'GET', '/v1/tokens?stale=true', { token: admin });
  expect(stale.status, outcome(stale)).toBe(200);
  expect(stale.headers.get('novacron-read-consistency')).toBe('stale');
  const age = stale.headers.get('novacron-data-age-ms');
  expect(age ?? '(header missing)', `${n.name}: novacron-data-age-ms header on a stale read (raft role ${(await status(n))?.raft?.role})`).toMatch(/^\d+$/);
  expect(stale.body.tokens.map((t) => t.name)).toContain(knownName);

  const w0 = performance.now();
  const write = await createToken(n, `isolated-${n.name}`);
  const writeRefusedInMs = Math.round(performance.now() - w0);
  expect(write.status, outcome(write)).toBe(503);
  expect(write.headers.get('content-type')).toContain('application/problem+json');
  expect((write.body as Problem).code).toBe('no_quorum');
  expect((write.body as Problem).status).toBe(503);
  return { noQuorumAfterMs, writeRefusedInMs, dataAgeMs: age === null ? null : Number(age) };
}

/** After a heal: the node's linearizable read works and shows every name written meanwhile. Returns the time it took. */
async function expectRejoined(n: NodeProc, names: string[], leader: string): Promise<number> {
  const t0 = performance.now();
  await pollFor(`${n.name} rejoined: linearizable read with every write made meanwhile`, convergeBoundMs, async () => {
    const have = await tokenNames(n.url, admin);
    return have !== null && names.every((x) => have.includes(x));
  }, 200);
  await pollFor(`${n.name} follows ${nameOf(leader)}`, convergeBoundMs, async () => (await status(n))?.raft?.leader === leader);
  return Math.round(performance.now() - t0);
}

describeIf({ root: isRoot(), ip: commandWorks('ip', ['netns', 'list']) })('a partitioned node across network namespaces', () => {
  beforeAll(async () => {
    cleanup();
    setupNetwork();
    await Promise.all(nodes.map((n) => startNode(n)));
    const [n1, n2, n3] = nodes as [NodeProc, NodeProc, NodeProc];
    admin = ((await cli(n1, ['cluster', 'init'])) as { adminToken: string }).adminToken;
    for (const joiner of [n2, n3]) {
      const { token } = (await cli(n1, ['cluster', 'join-token', 'create'])) as { token: string };
      await cli(joiner, ['cluster', 'join', token]);
    }
    await pollFor('3 voters', convergeBoundMs, async () => {
      const s = await status(n1);
      return s !== null && s.members.length === 3 && s.members.every((m) => m.role === 'voter') && s.raft?.role === 'leader';
    }, 200);
    for (const n of [n2, n3]) await pollFor(`${n.name} follows p1`, convergeBoundMs, async () => (await status(n))?.raft?.leader === n1.peerId);
  }, 90_000);

  afterAll(() => cleanup());

  it('an isolated follower serves stale reads, refuses writes and linearizable reads (503 no_quorum), and rejoins cleanly', async () => {
    const [n1, n2, n3] = nodes as [NodeProc, NodeProc, NodeProc];
    // A write through the follower works before the partition.
    expect((await createToken(n3, 'before-partition')).status).toBe(201);
    await pollFor('p3 has applied it', 5_000, async () => (await tokenNames(n3.url, admin, true))?.includes('before-partition'));
    const before = await Promise.all(nodes.map((n) => status(n)));
    const leader = before[0]!.raft!.leader!;
    expect(leader).toBe(n1.peerId);

    partition(n3);
    const iso = await expectIsolatedBehaviour(n3, 'before-partition');
    // The majority keeps accepting writes, through the leader and through the other follower.
    const during = await majorityWrites([n1, n2], 'during-follower-cut', 10);
    const mid = await status(n1);
    expect(mid?.raft).toMatchObject({ role: 'leader', term: before[0]!.raft!.term });
    const isolatedMid = await status(n3);

    heal(n3);
    const rejoinMs = await expectRejoined(n3, during, leader);
    const after = await Promise.all(nodes.map((n) => status(n)));
    // The refused write was not made anywhere.
    expect(await tokenNames(n1.url, admin)).not.toContain(`isolated-${n3.name}`);
    console.log(
      `[cluster-partition] follower cut: no_quorum on p3 ${iso.noQuorumAfterMs} ms after the cut; write refused in ${iso.writeRefusedInMs} ms; ` +
        `stale data age ${String(iso.dataAgeMs)} ms; p3 during the cut: ${JSON.stringify(isolatedMid?.raft)}; rejoined in ${rejoinMs} ms after the heal; ` +
        `terms before ${before.map((s) => s?.raft?.term).join('/')} after ${after.map((s) => s?.raft?.term).join('/')}; leader ${nameOf(leader)} -> ${after.map((s) => nameOf(s?.raft?.leader)).join('/')}`,
    );
    // Pre-vote: the isolated follower's failed campaigns do not bump the term, so the heal causes no election.
    for (const s of after) expect(s?.raft).toMatchObject({ leader, term: before[0]!.raft!.term });
  }, 90_000);

  it('an isolated leader steps down and refuses writes; the majority elects a new leader and keeps writing', async () => {
    const [n1, n2, n3] = nodes as [NodeProc, NodeProc, NodeProc];
    const before = await status(n1);
    expect(before?.raft?.role).toBe('leader');
    const termBefore = before!.raft!.term;

    const t0 = performance.now();
    partition(n1);
    const newLeader = await pollFor('the majority elects a new leader', isolationBoundMs, async () => {
      const s = await status(n2);
      return s?.raft?.leader === n2.peerId || s?.raft?.leader === n3.peerId ? s.raft.leader : null;
    }, 50);
    const electedMs = Math.round(performance.now() - t0);
    const during = await majorityWrites([n2, n3], 'during-leader-cut', 10);
    const firstWriteMs = Math.round(performance.now() - t0);
    const stepDown = await pollFor('the old leader steps down (check-quorum)', isolationBoundMs, async () => {
      const s = await status(n1);
      return s?.raft != null && s.raft.role !== 'leader' ? s.raft : null;
    }, 50);
    const stepDownMs = Math.round(performance.now() - t0);
    const iso = await expectIsolatedBehaviour(n1, 'before-partition');
    const majority = await status(n2);

    heal(n1);
    const rejoinMs = await expectRejoined(n1, during, newLeader);
    const after = await Promise.all(nodes.map((n) => status(n)));
    expect(await tokenNames(n2.url, admin)).not.toContain(`isolated-${n1.name}`);
    console.log(
      `[cluster-partition] leader cut: new leader ${nameOf(newLeader)} ${electedMs} ms after the cut (10 writes done at ${firstWriteMs} ms); old leader stepped down at ${stepDownMs} ms ` +
        `(${JSON.stringify(stepDown)}); no_quorum on p1 ${iso.noQuorumAfterMs} ms later; write refused in ${iso.writeRefusedInMs} ms; stale data age ${String(iso.dataAgeMs)} ms; ` +
        `rejoined in ${rejoinMs} ms after the heal; terms ${termBefore} -> majority ${majority?.raft?.term} -> after ${after.map((s) => s?.raft?.term).join('/')}; ` +
        `leaders after ${after.map((s) => nameOf(s?.raft?.leader)).join('/')}`,
    );
    expect(majority?.raft?.term).toBeGreaterThan(termBefore);
    // The healed old leader follows the new one without another election.
    for (const s of after) expect(s?.raft).toMatchObject({ leader: newLeader, term: majority!.raft!.term });
  }, 90_000);
});
