// Cluster benchmark (`npm run bench:cluster` = build, then `node dist/bench/cluster.js [flags]`): the end-to-end
// write path of NovaCron (client → REST on the leader or on a follower → forwarded over the mesh → Raft → applied →
// answered) against a 3-member etcd cluster, with the same closed-loop load generator in the same run.
//
// NovaCron: three real `novacron node start` processes from dist/ on loopback, formed with the CLI (`cluster init`,
// `cluster join-token create`, `cluster join`), measured once the leader reports 3 voters. Writes are
// `PATCH /v1/nodes/{id}` with `{"site": …}` (admin token), answered 200 once applied on the node asked; reads are
// `GET /v1/nodes` (linearizable) and `GET /v1/nodes?stale=true` on one node. HTTP/1.1 keep-alive, one connection
// per client (node:http Agent with `clients` sockets).
// etcd: three `etcd` processes (Debian etcd-server 3.4, defaults: WAL fsync on) on loopback with temp data dirs,
// driven through the etcd3 npm client: put of a small value to one key per client, on the leader and on a follower;
// linearizable and serializable gets on one member. `--etcd-client per-client` (default): one Etcd3 and one TCP
// connection per client, like the HTTP side; `--etcd-client shared`: one Etcd3 multiplexing all calls.
//
// Every load: `--clients` loops (default 64), each with one operation outstanding, `--warmup` s (default 2) then
// `--seconds` s measured (default 10). Reported per target: ops/s, p50/p99 latency, errors, CPU per op of the
// servers and of the bench process; the NovaCron/etcd ratio of writes/s and p50. The last stdout line is one JSON
// object with every figure. Needs etcd (`sudo bash packaging/scripts/setup-host.sh --etcd`); the bench checks for
// it first and says so rather than installing anything itself (`--no-etcd` runs the NovaCron side alone).
// All processes and temp dirs are removed on exit, on failure and on SIGINT/SIGTERM.
import '../node/polyfill.js';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { etcdClients, etcdLeader, etcdVersion, classifyEtcdError, startEtcd, type EtcdClientMode, type EtcdCluster, type EtcdMember } from './cluster-etcd.js';
import { runLoad, type LoadResult, type Operation } from './cluster-load.js';
import { assertBuilt, classifyHttpError, formCluster, HttpApi, HttpStatusError, status, type NovaCluster, type NovaNode } from './cluster-novacron.js';
import { Registry, sleep } from './cluster-procs.js';
import { round } from './raft-ipc.js';

const clientsDefault = 64;
const warmupMsDefault = 2000;
const measureMsDefault = 10_000;
/** Pause between two loads, so the previous one's tail (stragglers, compaction, GC) settles. */
const settleMs = 1000;
/** Bound on the wait for etcd to agree on a leader again before a load on a named role. */
const leaderWaitMs = 10_000;
const etcdKeyPrefix = 'bench/';

type ReadNode = 'leader' | 'follower';

interface Options {
  clients: number;
  warmupMs: number;
  measureMs: number;
  etcdClient: EtcdClientMode;
  readNode: ReadNode;
  etcd: boolean;
  novacron: boolean;
}

/** One measured target: its figures, or why it could not be measured. */
interface TargetResult {
  target: string;
  result: LoadResult | null;
  unavailable?: string;
  /** Raft term of the node asked, before and after the load (a change means an election happened). */
  term?: { before: number; after: number };
}

function log(line: string): void {
  console.log(line);
}

function site(client: number, seq: number): string {
  return `bench-c${client}-${seq}`;
}

// ---------------------------------------------------------------- NovaCron

async function novaTerm(api: HttpApi): Promise<number> {
  return (await status(api)).raft?.term ?? -1;
}

/** One request first: a missing route or a broken contract is reported once instead of as N × seconds errors. */
async function probe(api: HttpApi, method: string, path: string, body: unknown, expectKey?: string): Promise<string | undefined> {
  try {
    const text = await api.call(method, path, body);
    const parsed = JSON.parse(text) as Record<string, unknown>;
    return expectKey === undefined || expectKey in parsed ? undefined : `${method} ${path} answered 2xx without \`${expectKey}\`: ${text.slice(0, 200)}`;
  } catch (err) {
    if (err instanceof HttpStatusError && err.status === 404) return `${method} ${path} answered 404: the route does not exist in this build`;
    return `${method} ${path} failed: ${err instanceof Error ? err.message : String(err)}`;
  }
}

async function novaLoad(target: string, node: NovaNode, cluster: NovaCluster, o: Options, kind: 'write' | 'read' | 'read-stale'): Promise<TargetResult> {
  const api = new HttpApi(node.url, cluster.adminToken, o.clients);
  const ids = cluster.nodes.map((n) => n.peerId);
  const readPath = kind === 'read-stale' ? '/v1/nodes?stale=true' : '/v1/nodes';
  try {
    const unavailable =
      kind === 'write'
        ? await probe(api, 'PATCH', `/v1/nodes/${encodeURIComponent(node.peerId)}`, { site: 'bench-probe' }, 'node')
        : await probe(api, 'GET', readPath, undefined);
    if (unavailable !== undefined) {
      log(`  ${target}: not measured: ${unavailable}`);
      return { target, result: null, unavailable };
    }
    const op: Operation =
      kind === 'write'
        ? async (c, seq) => void (await api.call('PATCH', `/v1/nodes/${encodeURIComponent(ids[c % ids.length] as string)}`, { site: site(c, seq) }))
        : async () => void (await api.call('GET', readPath));
    const before = await novaTerm(api);
    const result = await runLoad(op, {
      name: target,
      clients: o.clients,
      warmupMs: o.warmupMs,
      measureMs: o.measureMs,
      classify: classifyHttpError,
      log,
      serverCpuSeconds: () => cluster.nodes.reduce((s, n) => s + n.proc.cpuSeconds(), 0),
    });
    return { target, result, term: { before, after: await novaTerm(api) } };
  } finally {
    api.close();
  }
}

async function novaRole(cluster: NovaCluster): Promise<{ leader: NovaNode; follower: NovaNode }> {
  const api = new HttpApi((cluster.nodes[0] as NovaNode).url, cluster.adminToken, 1);
  try {
    const s = await status(api);
    const leader = cluster.nodes.find((n) => n.peerId === s.raft?.leader);
    const follower = cluster.nodes.find((n) => n !== leader);
    if (leader === undefined || follower === undefined) throw new Error(`no leader known to ${cluster.nodes[0]?.name}: ${JSON.stringify(s.raft)}`);
    return { leader, follower };
  } finally {
    api.close();
  }
}

async function novacronSide(reg: Registry, o: Options): Promise<{ formMs: number; targets: TargetResult[] }> {
  log('novacron: forming a 3-node cluster (node start, cluster init, join-token create, cluster join)');
  const cluster = await formCluster(reg, log);
  log(`novacron: 3 voters after ${cluster.formMs} ms (cluster ${cluster.clusterId})`);
  const targets: TargetResult[] = [];
  try {
    for (const role of ['leader', 'follower'] as const) {
      const node = (await novaRole(cluster))[role];
      log(`novacron writes via the ${role} (${node.name}): PATCH /v1/nodes/{id}, ${o.clients} clients`);
      targets.push(await novaLoad(`novacron-write-${role}`, node, cluster, o, 'write'));
      await sleep(settleMs);
    }
    const reader = (await novaRole(cluster))[o.readNode];
    for (const kind of ['read', 'read-stale'] as const) {
      log(`novacron reads on the ${o.readNode} (${reader.name}): GET /v1/nodes${kind === 'read-stale' ? '?stale=true' : ''}, ${o.clients} clients`);
      targets.push(await novaLoad(`novacron-${kind}-${o.readNode}`, reader, cluster, o, kind));
      await sleep(settleMs);
    }
  } finally {
    // Stopped before the etcd side runs, so idle nodes do not take CPU from it.
    const procs = cluster.nodes.map((n) => n.proc);
    await reg.stop(procs);
    reg.removeDirs(cluster.nodes.map((n) => n.dataDir));
  }
  return { formMs: cluster.formMs, targets };
}

// ---------------------------------------------------------------- etcd

async function etcdRole(cluster: EtcdCluster, role: ReadNode): Promise<EtcdMember> {
  const start = Date.now();
  for (;;) {
    const leader = await etcdLeader(cluster.members);
    if (leader !== null) return role === 'leader' ? leader : (cluster.members.find((m) => m !== leader) as EtcdMember);
    if (Date.now() - start > leaderWaitMs) throw new Error(`etcd members do not agree on a leader within ${leaderWaitMs} ms`);
    await sleep(200);
  }
}

async function etcdLoad(target: string, member: EtcdMember, cluster: EtcdCluster, o: Options, kind: 'write' | 'read' | 'read-serializable'): Promise<TargetResult> {
  const clients = etcdClients(member.clientUrl, o.etcdClient, o.clients);
  const pick = (c: number) => clients[clients.length === 1 ? 0 : c] as (typeof clients)[number];
  try {
    // The read keys must exist; this also opens every client's connection before the warm-up.
    await Promise.all(Array.from({ length: o.clients }, (_, c) => pick(c).put(`${etcdKeyPrefix}c${c}`).value(site(c, 0)).exec()));
    const op: Operation =
      kind === 'write'
        ? async (c, seq) => void (await pick(c).put(`${etcdKeyPrefix}c${c}`).value(site(c, seq)).exec())
        : async (c) => void (await pick(c).get(`${etcdKeyPrefix}c${c}`).serializable(kind === 'read-serializable').exec());
    const result = await runLoad(op, {
      name: target,
      clients: o.clients,
      warmupMs: o.warmupMs,
      measureMs: o.measureMs,
      classify: classifyEtcdError,
      log,
      serverCpuSeconds: () => cluster.members.reduce((s, m) => s + m.proc.cpuSeconds(), 0),
    });
    return { target, result };
  } finally {
    for (const c of clients) c.close();
  }
}

async function etcdSide(reg: Registry, o: Options): Promise<{ version: string; readyMs: number; targets: TargetResult[] }> {
  log('etcd: starting 3 members on loopback');
  const cluster = await startEtcd(reg, log);
  log(`etcd ${cluster.version}: leader agreed after ${cluster.readyMs} ms`);
  const targets: TargetResult[] = [];
  try {
    for (const role of ['leader', 'follower'] as const) {
      const m = await etcdRole(cluster, role);
      log(`etcd writes via the ${role} (${m.name}): put, ${o.clients} clients (${o.etcdClient})`);
      targets.push(await etcdLoad(`etcd-write-${role}`, m, cluster, o, 'write'));
      await sleep(settleMs);
    }
    const reader = await etcdRole(cluster, o.readNode);
    for (const kind of ['read', 'read-serializable'] as const) {
      log(`etcd reads on the ${o.readNode} (${reader.name}): ${kind === 'read' ? 'linearizable' : 'serializable'} get, ${o.clients} clients (${o.etcdClient})`);
      targets.push(await etcdLoad(`etcd-${kind}-${o.readNode}`, reader, cluster, o, kind));
      await sleep(settleMs);
    }
  } finally {
    await reg.stop(cluster.members.map((m) => m.proc));
    reg.removeDirs(cluster.members.map((m) => m.dataDir));
  }
  return { version: cluster.version, readyMs: cluster.readyMs, targets };
}

// ---------------------------------------------------------------- report

function cell(x: number | undefined, digits = 1): string {
  return x === undefined || !Number.isFinite(x) ? '—' : String(round(x, digits));
}

function table(targets: TargetResult[]): string[] {
  const head = ['target', 'ops/s', 'p50 ms', 'p99 ms', 'errors', 'server CPU µs/op', 'bench CPU µs/op'];
  const rows = targets.map((t) => {
    const r = t.result;
    if (r === null) return [t.target, 'not measured', '', '', '', '', ''];
    const errs = r.errorCount === 0 ? '0' : `${r.errorCount} ${JSON.stringify(r.errors)}`;
    return [t.target, cell(r.opsPerSec), cell(r.latencyMs.p50, 2), cell(r.latencyMs.p99, 2), errs, cell(r.serverCpuUsPerOp, 0), cell(r.clientCpuUsPerOp, 0)];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)];
}

function ratio(a: number | undefined, b: number | undefined): number | null {
  return a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? null : round(a / b, 3);
}

function figures(t: TargetResult | undefined) {
  if (t === undefined) return null;
  const r = t.result;
  if (r === null) return { unavailable: t.unavailable ?? 'not measured' };
  return {
    opsPerSec: r.opsPerSec,
    ops: r.ops,
    seconds: r.seconds,
    p50Ms: r.latencyMs.p50,
    p99Ms: r.latencyMs.p99,
    meanMs: r.latencyMs.mean,
    maxMs: r.latencyMs.max,
    errors: r.errorCount,
    errorsByKind: r.errors,
    serverCpuUsPerOp: r.serverCpuUsPerOp,
    benchCpuUsPerOp: r.clientCpuUsPerOp,
    ...(t.term === undefined ? {} : { termChanged: t.term.after !== t.term.before }),
  };
}

async function main(o: Options): Promise<number> {
  // Preconditions before anything starts.
  const etcdVer = o.etcd ? etcdVersion() : null;
  if (o.novacron) assertBuilt();
  const reg = new Registry();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stderr.write(`${sig}: stopping every process of the bench\n`);
      void reg.cleanup().finally(() => process.exit(130));
    });
  }
  try {
    const cpu = cpus();
    const loadStart = round(loadavg()[0] ?? NaN);
    log(
      `cluster bench: ${o.clients} clients, ${o.warmupMs / 1000} s warm-up + ${o.measureMs / 1000} s per target; ${cpu.length} × ${cpu[0]?.model ?? 'cpu'}, Node ${process.version}, load average ${loadStart}` +
        (etcdVer === null ? '' : `; etcd ${etcdVer}, etcd3 clients: ${o.etcdClient}`),
    );
    const nova = o.novacron ? await novacronSide(reg, o) : null;
    const etcd = o.etcd ? await etcdSide(reg, o) : null;
    const all = [...(nova?.targets ?? []), ...(etcd?.targets ?? [])];
    const by = (name: string) => all.find((t) => t.target === name);
    const nw = (role: string) => by(`novacron-write-${role}`)?.result ?? undefined;
    const ew = (role: string) => by(`etcd-write-${role}`)?.result ?? undefined;
    const ratios = {
      writesPerSec: { leader: ratio(nw('leader')?.opsPerSec, ew('leader')?.opsPerSec), follower: ratio(nw('follower')?.opsPerSec, ew('follower')?.opsPerSec) },
      p50: { leader: ratio(nw('leader')?.latencyMs.p50, ew('leader')?.latencyMs.p50), follower: ratio(nw('follower')?.latencyMs.p50, ew('follower')?.latencyMs.p50) },
    };

    log('');
    for (const l of table(all)) log(l);
    log(`NovaCron/etcd writes/s: leader ${ratios.writesPerSec.leader ?? '—'}, follower ${ratios.writesPerSec.follower ?? '—'}; p50: leader ${ratios.p50.leader ?? '—'}, follower ${ratios.p50.follower ?? '—'}`);
    const unavailable = all.filter((t) => t.result === null);
    for (const t of unavailable) log(`not measured: ${t.target}: ${t.unavailable}`);
    for (const t of all) if (t.term !== undefined && t.term.before !== t.term.after) log(`note: ${t.target}: Raft term changed during the load (${t.term.before} → ${t.term.after})`);

    const rp = o.readNode;
    console.log(
      JSON.stringify({
        bench: 'cluster',
        clients: o.clients,
        warmupS: o.warmupMs / 1000,
        durationS: o.measureMs / 1000,
        readNode: rp,
        novacron:
          nova === null
            ? null
            : {
                nodes: 3,
                formMs: nova.formMs,
                writes: { leader: figures(by('novacron-write-leader')), follower: figures(by('novacron-write-follower')) },
                reads: { linearizable: figures(by(`novacron-read-${rp}`)), stale: figures(by(`novacron-read-stale-${rp}`)) },
              },
        etcd:
          etcd === null
            ? null
            : {
                members: 3,
                version: etcd.version,
                clientMode: o.etcdClient,
                readyMs: etcd.readyMs,
                writes: { leader: figures(by('etcd-write-leader')), follower: figures(by('etcd-write-follower')) },
                reads: { linearizable: figures(by(`etcd-read-${rp}`)), serializable: figures(by(`etcd-read-serializable-${rp}`)) },
              },
        ratioNovacronOverEtcd: ratios,
        cores: cpu.length,
        loadAvg1: { start: loadStart, end: round(loadavg()[0] ?? NaN) },
        node: process.version,
      }),
    );
    // 2: the run finished but some target could not be measured (e.g. a route missing from this build).
    return unavailable.length > 0 ? 2 : 0;
  } finally {
    const t0 = Date.now();
    await reg.cleanup();
    // stderr: stdout's last line is reserved for the JSON figures.
    process.stderr.write(`processes stopped and temp dirs removed in ${Date.now() - t0} ms\n`);
  }
}

function positive(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${raw}`);
  return n;
}

function oneOf<T extends string>(name: string, raw: string | undefined, allowed: readonly T[], fallback: T): T {
  if (raw === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(raw)) throw new Error(`--${name} must be one of ${allowed.join(', ')}, got ${raw}`);
  return raw as T;
}

try {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string' },
      warmup: { type: 'string' },
      clients: { type: 'string' },
      'etcd-client': { type: 'string' },
      'read-node': { type: 'string' },
      'no-etcd': { type: 'boolean', default: false },
      'no-novacron': { type: 'boolean', default: false },
    },
  });
  const code = await main({
    measureMs: Math.round(positive('seconds', values.seconds, measureMsDefault / 1000) * 1000),
    warmupMs: Math.round(positive('warmup', values.warmup, warmupMsDefault / 1000) * 1000),
    clients: Math.round(positive('clients', values.clients, clientsDefault)),
    etcdClient: oneOf('etcd-client', values['etcd-client'], ['per-client', 'shared'] as const, 'per-client'),
    readNode: oneOf('read-node', values['read-node'], ['follower', 'leader'] as const, 'follower'),
    etcd: !values['no-etcd'],
    novacron: !values['no-novacron'],
  });
  process.exit(code);
} catch (err) {
  process.stderr.write(`cluster bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
}
