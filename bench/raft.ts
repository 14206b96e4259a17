// Raft benchmark (`npm run bench:raft`): 3 node processes, LevelDB sync, libp2p loopback; writes/s with 64 proposers, 1-proposer latency; last line JSON.
import '../node/polyfill.js';
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runChild } from './raft-child.js';
import { round, summarize, type ChildHello, type ChildReply, type ChildRequest, type LatencyResult, type PeerInfo, type SampleResult, type StatusResult } from './raft-ipc.js';

const nodeCount = 3;
/** The driver's production default; commit latency does not depend on it (Ready runs on every event), elections do. */
const tickIntervalMs = 100;
const helloTimeoutMs = 30_000;
const leaderTimeoutMs = 30_000;
const requestTimeoutMs = 30_000;
const stopTimeoutMs = 10_000;
const convergeTimeoutMs = 15_000;
const pollMs = 100;

interface Options {
  seconds: number;
  warmupSeconds: number;
  count: number;
  proposers: number;
  commandBytes: number;
}

function positive(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${raw}`);
  return n;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Distributive Omit, so each request variant keeps its own fields. */
type RequestBody = ChildRequest extends infer R ? (R extends ChildRequest ? Omit<R, 'id'> : never) : never;

/** One node process and request/response over its IPC channel. */
class NodeProc {
  readonly hello: Promise<PeerInfo>;
  readonly exited: Promise<void>;
  alive = true;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout }>();

  constructor(
    readonly index: number,
    readonly child: ChildProcess,
  ) {
    let gotHello: (p: PeerInfo) => void = () => undefined;
    let noHello: (e: Error) => void = () => undefined;
    this.hello = new Promise((resolve, reject) => {
      gotHello = resolve;
      noHello = reject;
    });
    this.hello.catch(() => undefined); // observed later; a node dying first must not be an unhandled rejection
    child.on('message', (raw) => {
      const msg = raw as ChildReply | ChildHello;
      if ('hello' in msg) return gotHello(msg.hello);
      const p = this.pending.get(msg.id);
      if (p === undefined) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`node${this.index}: ${msg.error}`));
    });
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.alive = false;
        const err = new Error(`node${this.index} exited (${signal ?? `code ${code}`})`);
        noHello(err);
        for (const [, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(err);
        }
        this.pending.clear();
        resolve();
      });
    });
  }

  request<T>(body: RequestBody, timeoutMs = requestTimeoutMs): Promise<T> {
    if (!this.alive) return Promise.reject(new Error(`node${this.index} is not running`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`node${this.index}: ${body.op} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.child.send({ ...body, id });
    });
  }
}

function log(line: string): void {
  console.log(line);
}

async function waitForLeader(nodes: NodeProc[]): Promise<{ leader: NodeProc; ms: number }> {
  const start = Date.now();
  for (;;) {
    const statuses = await Promise.all(nodes.map((n) => n.request<StatusResult>({ op: 'status' })));
    const leaders = statuses.flatMap((s, i) => (s.status.role === 'leader' ? [i] : []));
    const li = leaders[0];
    // Every node must agree on the leader, or proposals could still bounce off a stale one.
    if (leaders.length === 1 && li !== undefined && statuses.every((s) => s.status.leader === statuses[li]?.status.id)) {
      return { leader: nodes[li] as NodeProc, ms: Date.now() - start };
    }
    if (Date.now() - start > leaderTimeoutMs) throw new Error(`no leader within ${leaderTimeoutMs} ms: ${statuses.map((s) => s.status.role).join(', ')}`);
    await sleep(pollMs);
  }
}

function diffFailures(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(b)) if (v - (a[k] ?? 0) > 0) out[k] = v - (a[k] ?? 0);
  return out;
}

interface NodeWindow {
  node: number;
  role: string;
  fsyncsPerSec: number;
  hardStateOnlyFsyncsPerSec: number;
  entriesPerFsync: number;
  fsyncMsMean: number;
  readyBatchesPerSec: number;
  /** Raft messages sent plus received per second: the transport's load. */
  messagesPerSec: number;
  cpuPct: number;
  eventLoopDelayMs: { mean: number; p99: number };
}

function window(index: number, role: string, a: SampleResult, b: SampleResult): NodeWindow {
  const s = (b.atMs - a.atMs) / 1000;
  const saves = b.storage.saves - a.storage.saves;
  return {
    node: index,
    role,
    fsyncsPerSec: round(saves / s, 1),
    hardStateOnlyFsyncsPerSec: round((b.storage.hardStateOnlySaves - a.storage.hardStateOnlySaves) / s, 1),
    entriesPerFsync: round(saves === 0 ? 0 : (b.storage.entries - a.storage.entries) / saves, 1),
    fsyncMsMean: round(saves === 0 ? 0 : (b.storage.saveMs - a.storage.saveMs) / saves),
    readyBatchesPerSec: round((b.counters.readyBatches - a.counters.readyBatches) / s, 1),
    messagesPerSec: round((b.counters.messagesSent - a.counters.messagesSent + b.counters.messagesReceived - a.counters.messagesReceived) / s, 1),
    eventLoopDelayMs: b.eventLoopDelayMs,
    cpuPct: round((100 * (b.cpuUserUs - a.cpuUserUs + b.cpuSystemUs - a.cpuSystemUs)) / 1e3 / (b.atMs - a.atMs), 1),
  };
}

async function throughput(nodes: NodeProc[], leader: NodeProc, o: Options) {
  log(`throughput: ${o.proposers} proposers, ${o.commandBytes}-byte commands, ${o.warmupSeconds} s warm-up, ${o.seconds} s measured`);
  await leader.request({ op: 'load-start', proposers: o.proposers, commandBytes: o.commandBytes });
  await sleep(o.warmupSeconds * 1000);
  const before = await Promise.all(nodes.map((n) => n.request<SampleResult>({ op: 'sample', window: true })));
  const interim: number[] = [];
  for (let left = o.seconds; left > 0; left -= Math.min(left, 2)) {
    await sleep(Math.min(left, 2) * 1000);
    const now = await leader.request<SampleResult>({ op: 'sample', window: false });
    // The intermediate sample only prints progress; its latencies are kept for the window's percentiles.
    interim.push(...now.latenciesMs);
    const b0 = before[leader.index] as SampleResult;
    log(`  ${round((now.atMs - b0.atMs) / 1000, 1)} s: ${now.completed - b0.completed} writes committed`);
  }
  const after = await Promise.all(nodes.map((n) => n.request<SampleResult>({ op: 'sample', window: true })));
  await leader.request({ op: 'load-stop' });
  const a = before[leader.index] as SampleResult;
  const b = after[leader.index] as SampleResult;
  const seconds = (b.atMs - a.atMs) / 1000;
  const writes = b.completed - a.completed;
  const loaded = summarize([...interim, ...b.latenciesMs]);
  const perNode = nodes.map((n) => window(n.index, n === leader ? 'leader' : 'follower', before[n.index] as SampleResult, after[n.index] as SampleResult));
  const proposals = b.counters.proposals - a.counters.proposals;
  const readies = b.counters.readyBatches - a.counters.readyBatches;
  return {
    writes,
    seconds: round(seconds, 3),
    writesPerSec: round(writes / seconds, 1),
    failed: diffFailures(a.failed, b.failed),
    loaded,
    perNode,
    proposalsPerReady: round(readies === 0 ? 0 : proposals / readies, 1),
    leaderChanges: after.reduce((s, x, i) => s + x.counters.leaderChanges - (before[i] as SampleResult).counters.leaderChanges, 0),
  };
}

async function converge(nodes: NodeProc[]): Promise<{ applied: number; checksum: number }> {
  const start = Date.now();
  for (;;) {
    const s = await Promise.all(nodes.map((n) => n.request<StatusResult>({ op: 'status' })));
    const first = s[0] as StatusResult;
    if (s.every((x) => x.status.applied === first.status.applied && x.status.applied === x.status.commit && x.checksum === first.checksum)) {
      return { applied: first.status.applied, checksum: first.checksum };
    }
    if (Date.now() - start > convergeTimeoutMs) {
      throw new Error(`nodes did not converge: ${s.map((x) => `applied ${x.status.applied} commit ${x.status.commit} checksum ${x.checksum.toString(16)}`).join('; ')}`);
    }
    await sleep(pollMs);
  }
}

async function main(o: Options): Promise<void> {
  const script = fileURLToPath(import.meta.url);
  const dirs: string[] = [];
  const nodes: NodeProc[] = [];
  let cleaning: Promise<void> | null = null;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      const start = Date.now();
      const stops = await Promise.allSettled(nodes.filter((n) => n.alive).map((n) => n.request({ op: 'stop' }, stopTimeoutMs)));
      for (const s of stops) if (s.status === 'rejected') process.stderr.write(`stop: ${String(s.reason)}\n`);
      for (const n of nodes) if (n.alive) n.child.kill('SIGKILL');
      await Promise.all(nodes.map((n) => n.exited));
      // Only after every process is gone: LevelDB holds its files open until then.
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
      // stderr: stdout's last line is reserved for the JSON figures.
      process.stderr.write(`nodes stopped and data removed in ${Date.now() - start} ms\n`);
    })());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stderr.write(`${sig}: stopping the nodes\n`);
      void cleanup().finally(() => process.exit(130));
    });
  }

  try {
    const cpu = cpus();
    // The load average shows whether other work shared the machine: fsync and CPU contention move these figures.
    const loadAtStart = round(loadavg()[0] ?? NaN);
    log(`raft bench: ${nodeCount} node processes, LevelDB sync writes, libp2p TCP+Noise+Yamux on 127.0.0.1; ${cpu.length} × ${cpu[0]?.model ?? 'cpu'}, Node ${process.version}, load average ${loadAtStart}`);
    for (let i = 0; i < nodeCount; i++) {
      const dir = mkdtempSync(join(tmpdir(), `nc-bench-raft-${i}-`));
      dirs.push(dir);
      // Children write warnings to stderr; their stdout goes there too so the parent's last stdout line stays the JSON.
      const child = fork(script, ['--child', '--index', String(i), '--dir', dir], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
      child.stdout?.pipe(process.stderr);
      nodes.push(new NodeProc(i, child));
    }
    const peers = await Promise.race([
      Promise.all(nodes.map((n) => n.hello)),
      sleep(helloTimeoutMs).then(() => Promise.reject(new Error(`nodes did not start within ${helloTimeoutMs} ms`))),
    ]);
    for (const [i, p] of peers.entries()) log(`node${i}: ${p.peerId} ${p.addrs.join(' ')}`);
    await Promise.all(nodes.map((n) => n.request({ op: 'peers', peers })));
    const voters = peers.map((p) => p.peerId);
    await Promise.all(nodes.map((n) => n.request({ op: 'open', voters, dial: peers.slice(n.index + 1), seed: n.index + 1, tickIntervalMs })));
    const { leader, ms: electionMs } = await waitForLeader(nodes);
    log(`leader: node${leader.index} after ${electionMs} ms`);

    const t = await throughput(nodes, leader, o);
    log(`throughput: ${t.writesPerSec} writes/s (${t.writes} in ${t.seconds} s); latency under load p50 ${t.loaded.p50} ms, p99 ${t.loaded.p99} ms`);
    for (const w of t.perNode) {
      log(`  node${w.node} ${w.role}: ${w.fsyncsPerSec} fsync/s (${w.hardStateOnlyFsyncsPerSec} without entries), ${w.entriesPerFsync} entries/fsync, ${w.fsyncMsMean} ms/fsync, ${w.readyBatchesPerSec} Ready/s, ${w.messagesPerSec} msg/s, CPU ${w.cpuPct}%, event-loop delay mean ${w.eventLoopDelayMs.mean} ms p99 ${w.eventLoopDelayMs.p99} ms`);
    }
    if (Object.keys(t.failed).length > 0 || t.leaderChanges > 0) log(`  failed proposals: ${JSON.stringify(t.failed)}; leader changes: ${t.leaderChanges}`);

    log(`latency: 1 proposer, ${o.count} sequential writes`);
    const lat = await leader.request<LatencyResult>({ op: 'latency', count: o.count, commandBytes: o.commandBytes }, requestTimeoutMs + o.count * 1000);
    const l = summarize(lat.latenciesMs);
    log(`latency: p50 ${l.p50} ms, p99 ${l.p99} ms, mean ${l.mean} ms, max ${l.max} ms`);
    if (Object.keys(lat.failed).length > 0) log(`  failed proposals: ${JSON.stringify(lat.failed)}`);

    const c = await converge(nodes);
    log(`all ${nodeCount} nodes applied ${c.applied} entries with checksum ${c.checksum.toString(16)}`);

    const leaderWindow = t.perNode[leader.index] as NodeWindow;
    const followers = t.perNode.filter((w) => w.role === 'follower');
    console.log(
      JSON.stringify({
        bench: 'raft',
        nodes: nodeCount,
        storage: 'leveldb-sync',
        transport: 'libp2p-tcp-noise-yamux',
        commandBytes: o.commandBytes,
        proposers: o.proposers,
        writesPerSec: t.writesPerSec,
        writes: t.writes,
        durationS: t.seconds,
        warmupS: o.warmupSeconds,
        loadedLatencyMs: { p50: t.loaded.p50, p99: t.loaded.p99, mean: t.loaded.mean },
        latencyMs: { p50: l.p50, p99: l.p99, mean: l.mean, max: l.max, count: l.count },
        groupCommit: {
          leaderFsyncsPerSec: leaderWindow.fsyncsPerSec,
          leaderEntriesPerFsync: leaderWindow.entriesPerFsync,
          leaderFsyncMsMean: leaderWindow.fsyncMsMean,
          followerFsyncsPerSec: round(followers.reduce((s, w) => s + w.fsyncsPerSec, 0) / Math.max(1, followers.length), 1),
          followerHardStateOnlyFsyncsPerSec: round(followers.reduce((s, w) => s + w.hardStateOnlyFsyncsPerSec, 0) / Math.max(1, followers.length), 1),
          followerEntriesPerFsync: round(followers.reduce((s, w) => s + w.entriesPerFsync, 0) / Math.max(1, followers.length), 1),
          proposalsPerReady: t.proposalsPerReady,
          leaderMessagesPerWrite: round(leaderWindow.messagesPerSec / t.writesPerSec, 1),
        },
        cpuPct: Object.fromEntries(t.perNode.map((w) => [w.role === 'leader' ? 'leader' : `follower${w.node}`, w.cpuPct])),
        failedProposals: Object.values(t.failed).reduce((a, b) => a + b, 0) + Object.values(lat.failed).reduce((a, b) => a + b, 0),
        leaderChanges: t.leaderChanges,
        electionMs,
        tickIntervalMs,
        cores: cpus().length,
        loadAvg1: { start: loadAtStart, end: round(loadavg()[0] ?? NaN) },
        node: process.version,
      }),
    );
  } finally {
    await cleanup();
  }
}

const { values } = parseArgs({
  options: {
    child: { type: 'boolean', default: false },
    index: { type: 'string' },
    dir: { type: 'string' },
    seconds: { type: 'string' },
    warmup: { type: 'string' },
    count: { type: 'string' },
    proposers: { type: 'string' },
    'command-bytes': { type: 'string' },
  },
});

if (values.child) {
  if (values.dir === undefined || values.index === undefined) throw new Error('--child needs --index and --dir');
  await runChild(Number(values.index), values.dir);
} else {
  try {
    await main({
      seconds: positive('seconds', values.seconds, 10),
      warmupSeconds: positive('warmup', values.warmup, 2),
      count: Math.round(positive('count', values.count, 1000)),
      proposers: Math.round(positive('proposers', values.proposers, 64)),
      commandBytes: Math.round(positive('command-bytes', values['command-bytes'], 256)),
    });
    process.exit(0);
  } catch (err) {
    process.stderr.write(`raft bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  }
}
