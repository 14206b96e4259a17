// Proves NAT traversal through circuit relay v2: nodes B and C sit in network namespaces that reach only the relay
// node A (no route between them); C still connects to B through A's circuit address and B's telemetry appears in
// C's view (and C's in B's). Needs root and iproute2; the namespaces are removed even when the test fails.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cliPath, collect, waitForLog, assertBuilt } from '../support/proc.js';
import { commandWorks, describeIf, isRoot } from '../support/prereq.js';
import { removeTempDirs, tempDir } from '../support/tmp.js';

afterAll(removeTempDirs);

const suffix = String(process.pid % 10000);
const ns = { a: `ncA${suffix}`, b: `ncB${suffix}`, c: `ncC${suffix}` };
const apiPort = 8780;
const convergeBoundMs = 45_000;
const children: ChildProcess[] = [];

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

function cleanup(): void {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const n of Object.values(ns)) {
    try {
      ip('netns', 'del', n);
    } catch {
      // not there: nothing to remove
    }
  }
}

function setupNamespaces(): void {
  cleanup();
  for (const n of Object.values(ns)) {
    ip('netns', 'add', n);
    ip('-n', n, 'link', 'set', 'lo', 'up');
  }
  // A—B on 10.77.1.0/24 and A—C on 10.77.2.0/24; A does not forward, so B and C cannot reach each other.
  const pairs: Array<[string, string, string, string, string]> = [
    [ns.b, `vab${suffix}`, `vba${suffix}`, '10.77.1.1/24', '10.77.1.2/24'],
    [ns.c, `vac${suffix}`, `vca${suffix}`, '10.77.2.1/24', '10.77.2.2/24'],
  ];
  for (const [other, aSide, otherSide, aAddr, otherAddr] of pairs) {
    ip('link', 'add', aSide, 'netns', ns.a, 'type', 'veth', 'peer', 'name', otherSide, 'netns', other);
    ip('-n', ns.a, 'addr', 'add', aAddr, 'dev', aSide);
    ip('-n', other, 'addr', 'add', otherAddr, 'dev', otherSide);
    ip('-n', ns.a, 'link', 'set', aSide, 'up');
    ip('-n', other, 'link', 'set', otherSide, 'up');
  }
  execFileSync('ip', ['netns', 'exec', ns.a, 'sysctl', '-qw', 'net.ipv4.ip_forward=0']);
}

function inNs(n: string, args: string[]): ChildProcess {
  assertBuilt();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NOVACRON_')));
  const child = spawn('ip', ['netns', 'exec', n, process.execPath, cliPath, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  return child;
}

async function startNode(n: string, name: string, extra: string[]): Promise<void> {
  const dataDir = tempDir(`nc-relay-${name}-`);
  const child = inNs(n, [
    'node', 'start', '--data-dir', dataDir, '--name', name, '--api-host', '127.0.0.1', '--api-port', String(apiPort),
    '--set', 'mesh.mdns=false', '--set', 'mesh.telemetryIntervalMs=500', ...extra,
  ]);
  children.push(child);
  await waitForLog(child, (r) => r.msg === 'node started', 30_000);
}

async function cli<T>(n: string, args: string[]): Promise<T> {
  const r = await collect(inNs(n, [...args, '--api', `http://127.0.0.1:${apiPort}`, '--json']), 30_000);
  if (r.code !== 0) throw new Error(`novacron ${args.join(' ')} in ${n} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

interface Status {
  peerId: string;
  addresses: string[];
}

describeIf({ root: isRoot(), iproute2: commandWorks('ip', ['-V']) })('mesh through a circuit relay across network namespaces', () => {
  beforeAll(() => setupNamespaces());
  afterAll(() => cleanup());

  it('reaches a node with no direct route through the relay, and its telemetry reaches the view', async () => {
    await startNode(ns.a, 'relay-a', ['--set', 'mesh.relay.enabled=true']);
    await Promise.all([
      startNode(ns.b, 'edge-b', ['--set', 'mesh.relay.reserve=true', '--set', 'mesh.relay.enabled=false']),
      startNode(ns.c, 'edge-c', ['--set', 'mesh.relay.reserve=true', '--set', 'mesh.relay.enabled=false']),
    ]);
    for (const n of [ns.b, ns.c]) {
      const { token } = await cli<{ token: string }>(ns.a, ['cluster', 'join-token', 'create']);
      await cli(n, ['cluster', 'join', token]);
    }
    const statusB = await fetchStatus(ns.b);
    const statusC = await fetchStatus(ns.c);

    const start = Date.now();
    let ok = false;
    let last = '';
    while (Date.now() - start < convergeBoundMs) {
      const viewC = await fetchJson<{ nodes: Array<{ nodeId: string; status: string }> }>(ns.c, '/v1/mesh/view');
      const viewB = await fetchJson<{ nodes: Array<{ nodeId: string; status: string }> }>(ns.b, '/v1/mesh/view');
      const connC = await fetchJson<{ peers: Array<{ peer: string; relayed: boolean; addrs: string[] }> }>(ns.c, '/v1/mesh/peers');
      const relayedToB = connC.peers.find((p) => p.peer === statusB.peerId);
      last = JSON.stringify({ relayedToB, viewC: viewC.nodes.map((x) => [x.nodeId.slice(-6), x.status]) });
      if (
        relayedToB?.relayed === true &&
        viewC.nodes.some((x) => x.nodeId === statusB.peerId && x.status === 'reachable') &&
        viewB.nodes.some((x) => x.nodeId === statusC.peerId && x.status === 'reachable')
      ) {
        expect(relayedToB.addrs.some((a) => a.includes('/p2p-circuit'))).toBe(true);
        ok = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(ok, `C never reached B through the relay: ${last}`).toBe(true);
    // B has a relay reservation on A and advertises a circuit address.
    expect((await fetchStatus(ns.b)).addresses.some((a) => a.includes('/p2p-circuit'))).toBe(true);
  }, 120_000);
});

async function fetchJson<T>(n: string, path: string): Promise<T> {
  // The API listens inside the namespace: curl-free, ask node itself to fetch from there.
  const script = `fetch('http://127.0.0.1:${apiPort}${path}').then(r=>r.text()).then(t=>process.stdout.write(t))`;
  const child = spawn('ip', ['netns', 'exec', n, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  const r = await collect(child, 15_000);
  if (r.code !== 0) throw new Error(`fetch ${path} in ${n} failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

async function fetchStatus(n: string): Promise<Status> {
  return fetchJson<Status>(n, '/v1/mesh/status');
}
