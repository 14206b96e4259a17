// Mesh benchmark: telemetry convergence (publish → the last other node receives it, p50/p99) for 5 nodes in one
// process and for 20 nodes as 20 processes (one node per process, as deployed), all on loopback TCP, and bulk
// stream throughput between two nodes (Noise + Yamux over loopback TCP).
// The last line printed is one JSON object with the figures.
//
// Why 20 processes: 20 libp2p nodes in one Node.js process share one event loop (lags of 0.5-1.7 s on 2 cores),
// so libp2p's connection monitor (5 s minimum ping timeout) aborts healthy connections and most samples miss some
// node; that measures the harness, not the mesh. `node dist/bench/mesh.js --in-process-20` adds that run anyway.
import '../node/polyfill.js';
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Mesh, silentLogger, singleHostMeshConfig, telemetryIntervalMsDefault, telemetryTopic, type MeshConfig } from '../mesh/index.js';

// The node's default interval.
const telemetryIntervalMs = telemetryIntervalMsDefault;
const warmupMs = 3000;
const measureMs = 20_000;
const convergeTimeoutMs = 60_000;
const bulkBytes = 512 * 1024 * 1024;
const bulkChunkBytes = 64 * 1024;
const bulkProtocol = '/novacron/bench-bulk/1.0.0';
/** Processes hosting the 20-node run (`--processes K`; 0 = all in the bench's own process). */
const processesDefault = 4;

const dirs: string[] = [];

function config(members: string[] = []): MeshConfig {
  return singleHostMeshConfig({ members, telemetryIntervalMs });
}

async function makeMesh(name: string, members: string[] = []): Promise<Mesh> {
  const dir = mkdtempSync(join(tmpdir(), 'nc-bench-'));
  dirs.push(dir);
  const m = await Mesh.create({ config: config(members), identityDir: join(dir, 'identity'), dataDir: dir, nodeName: name, version: 'bench', logger: silentLogger });
  await m.start();
  return m;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

interface ConvergenceResult {
  nodes: number;
  /** Node.js processes hosting the nodes; 1 = all in the bench's own process. */
  processes: number;
  /** Samples published in the window that every other node received; these give p50/p99. */
  samples: number;
  /** Samples published in the window that some node never received. */
  incomplete: number;
  p50Ms: number;
  p99Ms: number;
  /** From the first join (nodes already listening) until every node's view holds a sample of every node. */
  formMs: number;
  /** Of formMs, the n − 1 joins, one after another through node 0. */
  joinMs: number;
  /** CPU used per node during the measurement, in cores (0.05 = 5 % of one core). */
  cpuPerNode: number;
}

/** One receipt: sample `key` ("<node>/<seq>"), its send time and when this node received it. */
type Receipt = [key: string, sentAtMs: number, atMs: number];

/** What the convergence run needs of a node, whether it lives in this process or in a child. */
interface BenchNode {
  peerId: string;
  createJoinToken(): Promise<string>;
  join(token: string): Promise<void>;
  /** Nodes among `ids` of which this node's view holds a sample. */
  seen(ids: string[]): Promise<number>;
  /** The process hosting this node. */
  host: string;
  /** CPU seconds the process hosting this node has used (user + system). */
  cpuSeconds(): Promise<number>;
  record(on: boolean): Promise<void>;
  receipts(): Promise<Receipt[]>;
  stop(): Promise<void>;
}

/** Records telemetry receipts of one mesh while `on`. */
class Recorder {
  on = false;
  readonly receipts: Receipt[] = [];
  constructor(mesh: Mesh) {
    mesh.pubsub.addEventListener('message', (evt) => {
      if (!this.on || evt.detail.topic !== telemetryTopic) return;
      const s = JSON.parse(new TextDecoder().decode(evt.detail.data)) as { nodeId: string; seq: number; sentAtMs: number };
      this.receipts.push([`${s.nodeId}/${s.seq}`, s.sentAtMs, Date.now()]);
    });
  }
}

function seenIn(mesh: Mesh, ids: string[]): number {
  return mesh.viewList().filter((e) => ids.includes(e.nodeId)).length;
}

function cpuSecondsNow(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

async function inProcessNode(name: string): Promise<BenchNode> {
  const m = await makeMesh(name);
  const rec = new Recorder(m);
  return {
    peerId: m.peerId,
    createJoinToken: async () => m.createJoinToken(60_000).token,
    join: async (token) => void (await m.join(token)),
    host: 'bench',
    seen: async (ids) => seenIn(m, ids),
    cpuSeconds: async () => cpuSecondsNow(),
    record: async (on) => void (rec.on = on),
    receipts: async () => rec.receipts,
    stop: () => m.stop(),
  };
}

// ---- one node per process: the parent drives children over IPC ----

type ChildRequest =
  | { id: number; node: number; op: 'token' }
  | { id: number; node: number; op: 'join'; token: string }
  | { id: number; node: number; op: 'seen'; ids: string[] }
  | { id: number; node: number; op: 'cpu' }
  | { id: number; node: number; op: 'record'; on: boolean }
  | { id: number; node: number; op: 'receipts' }
  | { id: number; node: number; op: 'stop' };
/** A request before the parent numbers it (Omit over each member of the union). */
type ChildCall = ChildRequest extends infer R ? (R extends ChildRequest ? Omit<R, 'id'> : never) : never;
type ChildReply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

/** A child process hosting the nodes `names`; it answers requests addressed to one of them by index. */
async function childMain(names: string[]): Promise<void> {
  const meshes: Mesh[] = [];
  for (const name of names) meshes.push(await makeMesh(name));
  const recs = meshes.map((m) => new Recorder(m));
  const send = (msg: unknown): void => void process.send?.(msg);
  process.on('message', (raw: ChildRequest) => {
    const m = meshes[raw.node]!;
    const rec = recs[raw.node]!;
    void (async (): Promise<unknown> => {
      switch (raw.op) {
        case 'token': return m.createJoinToken(60_000).token;
        case 'join': return void (await m.join(raw.token));
        case 'seen': return seenIn(m, raw.ids);
        case 'cpu': return cpuSecondsNow();
        case 'record': return void (rec.on = raw.on);
        case 'receipts': return rec.receipts;
        case 'stop':
          await Promise.all(meshes.map((x) => x.stop()));
          for (const d of dirs) rmSync(d, { recursive: true, force: true });
          setImmediate(() => process.exit(0));
          return undefined;
      }
    })().then(
      (result) => send({ id: raw.id, ok: true, result } satisfies ChildReply),
      (err: unknown) => send({ id: raw.id, ok: false, error: err instanceof Error ? err.message : String(err) } satisfies ChildReply),
    );
  });
  process.on('disconnect', () => process.exit(1));
  send({ hello: meshes.map((m) => m.peerId) });
}

/** Forks one process hosting the nodes `names`. */
async function processGroup(names: string[]): Promise<BenchNode[]> {
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--child', ...names], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const host = `pid ${child.pid}`;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  const peerIds = await new Promise<string[]>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`bench process of ${names.join(',')} exited with ${code}`)));
    child.on('message', (msg: ChildReply | { hello: string[] }) => {
      if ('hello' in msg) return resolve(msg.hello);
      const p = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.ok) p?.resolve(msg.result);
      else p?.reject(new Error(`${host}: ${msg.error}`));
    });
  });
  const call = <T>(req: ChildCall): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      child.send({ ...req, id });
    });
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      const exited = new Promise((r) => child.once('exit', r));
      await call<undefined>({ node: 0, op: 'stop' }).catch(() => child.kill());
      await exited;
    })());
  return peerIds.map((peerId, node) => ({
    peerId,
    host,
    createJoinToken: () => call<string>({ node, op: 'token' }),
    join: (token) => call<undefined>({ node, op: 'join', token }),
    seen: (ids) => call<number>({ node, op: 'seen', ids }),
    cpuSeconds: () => call<number>({ node, op: 'cpu' }),
    record: (on) => call<undefined>({ node, op: 'record', on }),
    receipts: () => call<Receipt[]>({ node, op: 'receipts' }),
    stop,
  }));
}

async function startNodes(n: number, processes: number): Promise<BenchNode[]> {
  const names = Array.from({ length: n }, (_, i) => `n${i}`);
  if (processes === 0) return await Promise.all(names.map((name) => inProcessNode(name)));
  // Node i lives in process i % processes; node 0 (the issuer) is in the first.
  const groups = Array.from({ length: processes }, (_, g) => names.filter((_, i) => i % processes === g));
  const hosted = await Promise.all(groups.map((g) => processGroup(g)));
  return names.map((_, i) => hosted[i % processes]![Math.floor(i / processes)]!);
}

async function convergence(n: number, processes: number): Promise<ConvergenceResult> {
  const nodes = await startNodes(n, processes);
  // Formation is timed from the first join: starting 20 Node.js processes at once on 2 cores takes longer than that.
  const formStart = Date.now();
  try {
    const first = nodes[0]!;
    for (const node of nodes.slice(1)) await node.join(await first.createJoinToken());
    const joinMs = Date.now() - formStart;
    const ids = nodes.map((node) => node.peerId);
    for (;;) {
      const seen = await Promise.all(nodes.map((node) => node.seen(ids)));
      if (seen.every((c) => c === n)) break;
      if (Date.now() - formStart > convergeTimeoutMs) throw new Error(`views did not converge for ${n} nodes within ${convergeTimeoutMs} ms; nodes seen per view: ${seen.join(',')}`);
      await sleep(100);
    }
    const formMs = Date.now() - formStart;
    await sleep(warmupMs);

    const windowStart = Date.now();
    const cpuStart = await Promise.all(nodes.map((node) => node.cpuSeconds()));
    await Promise.all(nodes.map((node) => node.record(true)));
    await sleep(measureMs);
    await Promise.all(nodes.map((node) => node.record(false)));
    const cpuEnd = await Promise.all(nodes.map((node) => node.cpuSeconds()));
    const windowSeconds = (Date.now() - windowStart) / 1000;
    // Nodes in one process report the same process total: count each process once.
    const perHost = new Map<string, number>();
    nodes.forEach((node, i) => perHost.set(node.host, (cpuEnd[i] ?? 0) - (cpuStart[i] ?? 0)));
    const cpuUsed = [...perHost.values()].reduce((a, b) => a + b, 0);
    const cpuPerNode = cpuUsed / windowSeconds / n;
    // Samples sent in the window, given one more interval to arrive everywhere before receipts are collected.
    const windowEnd = Date.now() - telemetryIntervalMs;
    // key → [sentAtMs, arrival times at the other nodes]
    const arrivals = new Map<string, { sentAtMs: number; at: number[] }>();
    for (const receipts of await Promise.all(nodes.map((node) => node.receipts()))) {
      for (const [key, sentAtMs, at] of receipts) {
        const a = arrivals.get(key) ?? { sentAtMs, at: [] };
        a.at.push(at);
        arrivals.set(key, a);
      }
    }
    const latencies: number[] = [];
    let incomplete = 0;
    for (const a of arrivals.values()) {
      if (a.sentAtMs < windowStart || a.sentAtMs > windowEnd) continue;
      if (a.at.length === n - 1) latencies.push(Math.max(...a.at) - a.sentAtMs);
      else incomplete += 1;
    }
    latencies.sort((x, y) => x - y);
    return { nodes: n, processes: Math.max(1, processes), samples: latencies.length, incomplete, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99), formMs, joinMs, cpuPerNode: Number(cpuPerNode.toFixed(3)) };
  } finally {
    await Promise.all(nodes.map((node) => node.stop()));
  }
}

interface ThroughputResult {
  bytes: number;
  seconds: number;
  mbPerSec: number;
  cpuSecondsPerGB: number;
}

async function throughput(): Promise<ThroughputResult> {
  const a = await makeMesh('a');
  const b = await makeMesh('b', [a.peerId]);
  a.setMemberProvider({ isMember: (p) => p === b.peerId });
  await a.libp2p.dial(b.libp2p.getMultiaddrs()[0]!);
  let received = 0;
  let finished: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (finished = resolve));
  await b.protocols.handleBulk(bulkProtocol, async (s) => {
    for await (const chunk of s.read()) received += chunk.byteLength;
    await s.closeWrite();
    finished();
  });
  const chunk = new Uint8Array(bulkChunkBytes).map((_, i) => i & 0xff);
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  const s = await a.protocols.openBulk(b.peerId, bulkProtocol);
  for (let sent = 0; sent < bulkBytes; sent += chunk.byteLength) await s.write(chunk);
  await s.closeWrite();
  await done;
  const seconds = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  if (received !== bulkBytes) throw new Error(`received ${received} of ${bulkBytes} bytes`);
  await Promise.all([a.stop(), b.stop()]);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  return { bytes: bulkBytes, seconds, mbPerSec: bulkBytes / 1e6 / seconds, cpuSecondsPerGB: cpuSeconds / (bulkBytes / 1e9) };
}

function describe(c: ConvergenceResult): string {
  const where = c.processes === 1 ? `${c.nodes} nodes in one process` : `${c.nodes} nodes in ${c.processes} processes`;
  return `telemetry convergence, ${where}: p50 ${c.p50Ms} ms, p99 ${c.p99Ms} ms over ${c.samples} samples, ${c.incomplete} incomplete (formed in ${c.formMs} ms, of which joins ${c.joinMs} ms; ${(c.cpuPerNode * 100).toFixed(1)} % of a core per node)`;
}

async function run(n: number, processes: number): Promise<ConvergenceResult | null> {
  try {
    const c = await convergence(n, processes);
    console.log(describe(c));
    return c;
  } catch (err) {
    console.log(`telemetry convergence, ${n} nodes in ${Math.max(1, processes)} process(es): FAILED: ${err instanceof Error ? err.message : String(err)}`);
    return null;
  }
}

function flag(name: string): string | undefined {
  const at = process.argv.indexOf(name);
  return at >= 0 ? process.argv[at + 1] : undefined;
}

const childAt = process.argv.indexOf('--child');
if (childAt >= 0) {
  await childMain(process.argv.slice(childAt + 1));
} else {
  const processes = Number(flag('--processes') ?? processesDefault);
  try {
    const c5 = await run(5, 0);
    const c20 = await run(20, processes);
    const c20InProcess = process.argv.includes('--in-process-20') ? await run(20, 0) : undefined;
    const t = await throughput();
    console.log(`bulk stream, loopback TCP + Noise + Yamux: ${t.mbPerSec.toFixed(1)} MB/s, ${t.cpuSecondsPerGB.toFixed(2)} CPU s/GB (both ends, one process)`);
    console.log(
      JSON.stringify({
        bench: 'mesh',
        telemetryIntervalMs,
        convergence5: c5,
        convergence20: c20,
        ...(c20InProcess === undefined ? {} : { convergence20InProcess: c20InProcess }),
        bulk: { mbPerSec: Number(t.mbPerSec.toFixed(1)), cpuSecondsPerGB: Number(t.cpuSecondsPerGB.toFixed(2)), bytes: t.bytes },
      }),
    );
  } finally {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
  process.exit(0);
}
