// Mesh benchmark: telemetry convergence (publish → last node's view, p50/p99) for 5 and 20 in-process nodes on
// loopback TCP, and bulk stream throughput between two nodes (Noise + Yamux over loopback TCP).
// The last line printed is one JSON object with the figures.
import '../node/polyfill.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Mesh, silentLogger, telemetryTopic, type MeshConfig } from '../mesh/index.js';

// The node's default interval: 20 libp2p nodes in one Node.js process on 2 cores cannot keep a 500 ms cadence.
const telemetryIntervalMs = 2000;
const warmupMs = 3000;
const measureMs = 20_000;
const convergeTimeoutMs = 60_000;
const bulkBytes = 512 * 1024 * 1024;
const bulkChunkBytes = 64 * 1024;
const bulkProtocol = '/novacron/bench-bulk/1.0.0';

const dirs: string[] = [];

function config(members: string[] = []): MeshConfig {
  return {
    listen: ['/ip4/127.0.0.1/tcp/0'], announce: [], bootstrap: [], mdns: false, members, telemetryIntervalMs, telemetryTtlMs: 0, maxConnections: 256,
    relay: { enabled: false, reserve: false, maxReservations: 1, reservationTtlMs: 60_000, dataLimitBytes: 1 << 20, durationLimitMs: 60_000 },
  };
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
  samples: number;
  p50Ms: number;
  p99Ms: number;
  formMs: number;
}

async function convergence(n: number): Promise<ConvergenceResult> {
  const formStart = Date.now();
  const meshes: Mesh[] = [];
  meshes.push(await makeMesh('n0'));
  for (let i = 1; i < n; i++) meshes.push(await makeMesh(`n${i}`));
  const first = meshes[0]!;
  for (const [i, m] of meshes.slice(1).entries()) {
    await m.join(first.createJoinToken(60_000).token);
    void i;
  }
  const ids = meshes.map((m) => m.peerId);
  while (!meshes.every((m) => m.viewList().filter((e) => ids.includes(e.nodeId) && e.status === 'reachable').length === n)) {
    if (Date.now() - formStart > convergeTimeoutMs) {
      const seen = meshes.map((m) => m.viewList().filter((e) => e.status === 'reachable').length);
      await Promise.all(meshes.map((m) => m.stop()));
      throw new Error(`views did not converge for ${n} nodes within ${convergeTimeoutMs} ms; reachable per view: ${seen.join(',')}`);
    }
    await sleep(100);
  }
  const formMs = Date.now() - formStart;
  await sleep(warmupMs);

  // arrivals: "<node>/<seq>" → [sentAtMs, receivers' arrival times]
  const arrivals = new Map<string, { sentAtMs: number; at: number[] }>();
  let measuring = true;
  for (const m of meshes) {
    m.pubsub.addEventListener('message', (evt) => {
      if (!measuring || evt.detail.topic !== telemetryTopic) return;
      const s = JSON.parse(new TextDecoder().decode(evt.detail.data)) as { nodeId: string; seq: number; sentAtMs: number };
      const key = `${s.nodeId}/${s.seq}`;
      const a = arrivals.get(key) ?? { sentAtMs: s.sentAtMs, at: [] };
      a.at.push(Date.now());
      arrivals.set(key, a);
    });
  }
  await sleep(measureMs);
  measuring = false;
  const latencies: number[] = [];
  for (const a of arrivals.values()) if (a.at.length === n - 1) latencies.push(Math.max(...a.at) - a.sentAtMs);
  latencies.sort((x, y) => x - y);
  await Promise.all(meshes.map((m) => m.stop()));
  return { nodes: n, samples: latencies.length, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99), formMs };
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

try {
  const c5 = await convergence(5);
  console.log(`telemetry convergence, 5 in-process nodes: p50 ${c5.p50Ms} ms, p99 ${c5.p99Ms} ms over ${c5.samples} samples (formed in ${c5.formMs} ms)`);
  const c20 = await convergence(20).catch((err: unknown) => {
    console.log(`telemetry convergence, 20 in-process nodes: FAILED: ${err instanceof Error ? err.message : String(err)}`);
    return null;
  });
  if (c20 !== null) console.log(`telemetry convergence, 20 in-process nodes: p50 ${c20.p50Ms} ms, p99 ${c20.p99Ms} ms over ${c20.samples} samples (formed in ${c20.formMs} ms)`);
  const t = await throughput();
  console.log(`bulk stream, loopback TCP + Noise + Yamux: ${t.mbPerSec.toFixed(1)} MB/s, ${t.cpuSecondsPerGB.toFixed(2)} CPU s/GB (both ends, one process)`);
  console.log(
    JSON.stringify({
      bench: 'mesh',
      telemetryIntervalMs,
      convergence5: c5,
      convergence20: c20,
      bulk: { mbPerSec: Number(t.mbPerSec.toFixed(1)), cpuSecondsPerGB: Number(t.cpuSecondsPerGB.toFixed(2)), bytes: t.bytes },
    }),
  );
} finally {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
process.exit(0);
