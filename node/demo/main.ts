// `make demo`: starts a local 3-node NovaCron cluster (later also the UI and a demo VM) in the foreground: the
// first run founds it on node 1 and joins nodes 2 and 3 with join tokens; it prints where to reach every node and
// an admin token, and stops everything on Ctrl-C. API ports: --port, +1, +2; mesh ports: --port+1000, +1, +2.
import '../polyfill.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

export const demoReadyTimeoutMs = 30_000;
const readyPollIntervalMs = 200;

const here = dirname(fileURLToPath(import.meta.url));
const cliPath = resolve(here, '../cli/main.js');

async function waitHealthy(url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`node exited with code ${child.exitCode} before it became healthy`);
    try {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, readyPollIntervalMs));
  }
  throw new Error(`node at ${url} did not become healthy within ${timeoutMs} ms`);
}

/** Nodes of the demo cluster: enough for a Raft majority to survive one failure. */
export const demoNodes = 3;
/** Bound for the two joiners to become voters. */
const votersTimeoutMs = 30_000;

interface DemoNode {
  name: string;
  dataDir: string;
  url: string;
  child: ChildProcess;
  log: string;
}

async function api<T>(url: string, method: string, path: string, token: string | null, body?: unknown, timeoutMs = demoReadyTimeoutMs): Promise<{ status: number; body: T }> {
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${url}${path}`, {
    method,
    headers,
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  return { status: res.status, body: (text === '' ? {} : JSON.parse(text)) as T };
}

function fail(what: string, r: { status: number; body: unknown }): never {
  const detail = (r.body as { detail?: string }).detail ?? JSON.stringify(r.body);
  throw new Error(`${what} answered ${r.status}: ${detail}`);
}

interface Status {
  initialised: boolean;
  raft: { leader: string | null } | null;
  members: Array<{ id: string; role: string }>;
}

/**
 * Forms the cluster where it is not formed yet (node 1 founds it, the others join with tokens from node 1) and
 * keeps the admin token in <demo dir>/admin-token (0600): the API shows a token once, and a restarted demo
 * should still print a working one. Safe to run again after a half-finished first run.
 */
async function ensureCluster(nodes: DemoNode[], tokenFile: string): Promise<string> {
  const [first, ...others] = nodes as [DemoNode, ...DemoNode[]];
  let token = existsSync(tokenFile) ? readFileSync(tokenFile, 'utf8').trim() : null;
  if (token === null) {
    const init = await api<{ adminToken?: string }>(first.url, 'POST', '/v1/cluster/init', null, {});
    if (init.status !== 201 || typeof init.body.adminToken !== 'string') fail('cluster init', init);
    token = init.body.adminToken;
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  }
  for (const node of others) {
    // An uninitialised node answers loopback callers (token or not); one that runs Raft already joined (it may
    // still be replaying its log, so `initialised` alone is not the test).
    const s = await api<Status>(node.url, 'GET', '/v1/cluster/status', token);
    if (s.status !== 200) fail(`${node.name} status`, s);
    if (s.body.initialised || s.body.raft !== null) continue;
    const created = await api<{ token?: string }>(first.url, 'POST', '/v1/mesh/join-tokens', token, { ttlSeconds: 600 });
    if (created.status !== 201 || typeof created.body.token !== 'string') fail('join-token create', created);
    const joined = await api(node.url, 'POST', '/v1/mesh/join', null, { token: created.body.token });
    if (joined.status !== 200) fail(`${node.name} join`, joined);
  }
  // Ready means usable: 3 voters, and every node knows the leader (a restarted demo elects one first).
  const deadline = Date.now() + votersTimeoutMs;
  for (;;) {
    const all = await Promise.all(nodes.map((n) => api<Status>(n.url, 'GET', '/v1/cluster/status', token)));
    const voters = all[0]?.body.members?.filter((m) => m.role === 'voter').length ?? 0;
    if (all.every((s) => s.status === 200 && s.body.raft?.leader != null) && voters >= Math.min(3, nodes.length)) return token;
    if (Date.now() > deadline) throw new Error(`the cluster did not reach 3 voters with a leader within ${votersTimeoutMs} ms`);
    await new Promise((r) => setTimeout(r, readyPollIntervalMs));
  }
}

/** Mesh ports sit this far above the API ports: fixed, so a restarted demo finds its members where they were. */
export const demoMeshPortOffset = 1000;

/** Name of the demo VM. */
export const demoVmName = 'demo';
/** Bound for building the demo guest (first run), importing it and booting it under TCG. */
const demoVmTimeoutMs = 300_000;

interface VmOut {
  id: string;
  name: string;
  desired: string;
  owner: string | null;
  observed: { state: string; reason: string } | null;
}

/**
 * Makes sure the demo VM exists (first run: builds the demo guest, imports it as images on node 1, creates the VM
 * wherever placement puts it) and waits until its owner reports it running; the owner comes back as a node name.
 * A VM the user deleted is recreated.
 */
async function ensureDemoVm(first: DemoNode, token: string): Promise<VmOut> {
  const existing = await api<{ vms?: VmOut[] }>(first.url, 'GET', '/v1/vms', token);
  if (existing.status !== 200) fail('vm list', existing);
  let vm: VmOut | null = existing.body.vms?.find((v) => v.name === demoVmName) ?? null;
  if (vm === null) {
    process.stdout.write('demo: building and importing the demo guest, then starting VM "demo"...\n');
    const imported = await api<{ spec?: unknown }>(first.url, 'POST', '/v1/demo-guest/import', token, {}, demoVmTimeoutMs);
    if (imported.status !== 200 || imported.body.spec === undefined) fail('demo guest import', imported);
    const created = await api<{ vm?: VmOut }>(first.url, 'POST', '/v1/vms', token, { name: demoVmName, spec: imported.body.spec });
    if (created.status !== 201 || created.body.vm === undefined) fail('vm create', created);
    vm = created.body.vm;
  } else if (vm.desired !== 'running') {
    // A demo stopped with Ctrl-C stopped its VM; start it again.
    const started = await api(first.url, 'POST', `/v1/vms/${vm.id}/start`, token, {});
    if (started.status !== 200) fail('vm start', started);
  }
  const deadline = Date.now() + demoVmTimeoutMs;
  const id = vm.id;
  let last: VmOut = vm;
  for (;;) {
    const r: { status: number; body: { vm?: VmOut } } = await api<{ vm?: VmOut }>(first.url, 'GET', `/v1/vms/${id}`, token);
    if (r.status === 200 && r.body.vm !== undefined) {
      const now: VmOut = r.body.vm;
      last = now;
      if (now.observed?.state === 'running') {
        const nodes = await api<{ nodes?: Array<{ id: string; name: string }> }>(first.url, 'GET', '/v1/nodes', token);
        return { ...now, owner: nodes.body.nodes?.find((n) => n.id === now.owner)?.name ?? now.owner };
      }
      if (now.observed?.state === 'error') throw new Error(`the demo VM failed: ${now.observed.reason}`);
    }
    if (Date.now() > deadline) throw new Error(`the demo VM was not running within ${demoVmTimeoutMs} ms (last: ${last.observed?.state ?? 'not reported'})`);
    await new Promise((res) => setTimeout(res, readyPollIntervalMs));
  }
}

/** Bound for the demo VM to stop when the demo does. */
const demoVmStopTimeoutMs = 30_000;

async function stopDemoVm(first: DemoNode, token: string, id: string): Promise<void> {
  const r = await api(first.url, 'POST', `/v1/vms/${id}/stop`, token, {});
  if (r.status !== 200) fail('vm stop', r);
  const deadline = Date.now() + demoVmStopTimeoutMs;
  while (Date.now() < deadline) {
    const s = await api<{ vm?: VmOut }>(first.url, 'GET', `/v1/vms/${id}?stale=true`, token);
    if (s.body.vm?.observed?.state === 'stopped') return;
    await new Promise((res) => setTimeout(res, readyPollIntervalMs));
  }
  throw new Error(`the demo VM did not stop within ${demoVmStopTimeoutMs} ms`);
}

/** Lines of a node's log shown when it fails: enough for the error and the lines leading to it. */
const failedLogTailLines = 30;

function logTail(path: string): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-failedLogTailLines).join('\n');
  } catch (err) {
    return `(cannot read it: ${(err as Error).message})`;
  }
}

function startNode(root: string, index: number, port: number, meshPort: number): DemoNode {
  const name = `demo-${index}`;
  const dataDir = join(root, `node${index}`);
  mkdirSync(join(dataDir, 'logs'), { recursive: true, mode: 0o700 });
  const log = join(dataDir, 'logs', 'stdout.log');
  const out = openSync(log, 'a');
  const child = spawn(
    process.execPath,
    [
      cliPath, 'node', 'start', '--data-dir', dataDir, '--name', name, '--api-host', '127.0.0.1', '--api-port', String(port),
      // Loopback only, and no mDNS: the demo's nodes find each other through join tokens, not the LAN.
      '--set', `mesh.listen=/ip4/127.0.0.1/tcp/${meshPort}`, '--set', 'mesh.mdns=false',
    ],
    // Its own process group: Ctrl-C reaches the demo only, which then stops each node once, in order.
    { stdio: ['ignore', out, out], detached: true },
  );
  return { name, dataDir, url: `http://127.0.0.1:${port}`, child, log };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: '.demo' },
      port: { type: 'string', default: '8780' },
    },
  });
  const root = resolve(values.dir ?? '.demo');
  const port = Number(values.port);
  const nodes = Array.from({ length: demoNodes }, (_, i) => startNode(root, i + 1, port + i, port + demoMeshPortOffset + i));
  const stop = (): void => {
    for (const n of nodes) if (n.child.exitCode === null) n.child.kill('SIGTERM');
  };
  let token: string | null = null;
  let vm: VmOut | null = null;
  let stopping = false;
  // Ctrl-C: stop the demo VM first (VMs outlive their node by design, and a demo should not leave QEMU behind),
  // then the nodes. A second Ctrl-C stops the nodes at once.
  const shutdown = (): void => {
    if (stopping || token === null || vm === null) {
      stop();
      return;
    }
    stopping = true;
    process.stdout.write('demo: stopping the demo VM, then the nodes...\n');
    void stopDemoVm(nodes[0] as DemoNode, token, vm.id).then(stop, (err: unknown) => {
      process.stderr.write(`demo: could not stop the demo VM: ${(err as Error).message}\n`);
      stop();
    });
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
  const tokenFile = join(root, 'admin-token');
  try {
    await Promise.all(nodes.map((n) => waitHealthy(n.url, n.child, demoReadyTimeoutMs)));
    token = await ensureCluster(nodes, tokenFile);
    vm = await ensureDemoVm(nodes[0] as DemoNode, token);
  } catch (err) {
    process.stderr.write(`demo: ${(err as Error).message}; see ${nodes.map((n) => n.log).join(' ')}\n`);
    stop();
    return 1;
  }
  const url = nodes[0]?.url ?? '';
  process.stdout.write(
    [
      '',
      `NovaCron demo is running: a ${demoNodes}-node cluster on this machine.`,
      ...nodes.map((n) => `  ${n.name}:   ${n.url}  (API on every node; logs ${n.log})`),
      `  OpenAPI:  ${url}/v1/openapi.json`,
      `  Health:   ${url}/healthz  ${url}/readyz`,
      `  Admin token (also in ${tokenFile}):`,
      `            ${token}`,
      `  Demo VM:  "${vm.name}" running on ${vm.owner ?? '?'}`,
      `  CLI:      export NOVACRON_API=${url} NOVACRON_TOKEN=$(cat ${tokenFile})`,
      `            node ${cliPath} node list`,
      `            node ${cliPath} vm list`,
      `            node ${cliPath} vm console ${vm.name} --follow`,
      '',
      'Press Ctrl-C to stop.',
      '',
    ].join('\n'),
  );
  const codes = await Promise.all(nodes.map((n) => new Promise<number>((res) => (n.child.exitCode !== null ? res(n.child.exitCode) : n.child.on('exit', (c) => res(c ?? 1))))));
  const worst = codes.find((c) => c !== 0) ?? 0;
  process.stdout.write(`demo: nodes stopped (exit ${codes.join(', ')})\n`);
  // A node that did not stop cleanly says why in its log; show the end of it rather than leave the user to look.
  nodes.forEach((n, i) => {
    if (codes[i] !== 0) process.stderr.write(`demo: ${n.name} exited ${codes[i] ?? '?'}; the end of ${n.log}:\n${logTail(n.log)}\n`);
  });
  return worst;
}

process.exitCode = await main();
