// The etcd side of the cluster benchmark: three `etcd` processes (Debian's etcd-server, 3.4) on loopback with their
// own ports and temp data dirs, defaults otherwise (WAL fsync on), and etcd3 npm clients. Fault handling of the
// client is a pass-through (no retries, no circuit breaker) and every call has a deadline, so one operation is one
// attempt, as on the HTTP side.
import { execFileSync } from 'node:child_process';
import { Etcd3, type IOptions } from 'etcd3';
import { freePort, sleep, type Proc, type Registry } from './cluster-procs.js';

const etcdBinary = 'etcd';
const memberCount = 3;
/** From spawning the members until every member reports the same leader. */
const etcdReadyTimeoutMs = 30_000;
const pollMs = 200;
/** Per call (a gRPC deadline); a call still unanswered after this counts as an error. */
export const etcdCallTimeoutMs = 10_000;
/** For the control calls (status) while the cluster forms. */
const statusTimeoutMs = 2000;

export type EtcdClientMode = 'per-client' | 'shared';

export interface EtcdMember {
  name: string;
  clientUrl: string;
  dataDir: string;
  proc: Proc;
  /** Member ID as etcd reports it (decimal string). */
  id: string;
}

export interface EtcdCluster {
  members: EtcdMember[];
  version: string;
  readyMs: number;
}

type Policy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/** One attempt per call: runs the call as is (etcd3 only calls `execute` on its policies). */
const passThrough = {
  execute: <T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T): Promise<T> => Promise.resolve().then(() => fn({ signal: new AbortController().signal })),
} as unknown as Policy;

/** The installed etcd's version, or a clear error saying how to install it. */
export function etcdVersion(): string {
  let out: string;
  try {
    out = execFileSync(etcdBinary, ['--version'], { encoding: 'utf8' });
  } catch {
    throw new Error(
      'etcd is not installed (no `etcd` on PATH). The cluster bench compares against a 3-member etcd cluster from Debian\'s etcd-server package; ' +
        'install it with `sudo bash packaging/scripts/setup-host.sh --etcd`, or run with --no-etcd for the NovaCron figures only.',
    );
  }
  return /etcd Version: (\S+)/.exec(out)?.[1] ?? 'unknown';
}

export function etcdClient(url: string, extra: Partial<IOptions> = {}): Etcd3 {
  return new Etcd3({
    hosts: url,
    faultHandling: { global: passThrough, host: () => passThrough },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + etcdCallTimeoutMs }),
    ...extra,
  });
}

export function classifyEtcdError(err: unknown): string {
  if (err instanceof Error) return err.constructor.name === 'Error' ? err.name : err.constructor.name;
  return 'unknown';
}

async function memberStatus(url: string): Promise<{ id: string; leader: string } | null> {
  const c = etcdClient(url, { defaultCallOptions: () => ({ deadline: Date.now() + statusTimeoutMs }) });
  try {
    const s = await c.maintenance.status();
    return { id: s.header.member_id, leader: s.leader };
  } catch {
    return null;
  } finally {
    c.close();
  }
}

/** Starts 3 members on fresh loopback ports and waits until all report the same leader. */
export async function startEtcd(reg: Registry, log: (line: string) => void): Promise<EtcdCluster> {
  const version = etcdVersion();
  const ports = await Promise.all(Array.from({ length: memberCount }, async () => ({ client: await freePort(), peer: await freePort() })));
  const names = ports.map((_, i) => `etcd${i + 1}`);
  const initialCluster = ports.map((p, i) => `${names[i]}=http://127.0.0.1:${p.peer}`).join(',');
  const clusterToken = `nc-bench-${process.pid}-${Date.now()}`;
  const start = Date.now();
  const members = ports.map((p, i) => {
    const name = names[i] as string;
    const dataDir = reg.tempDir(`nc-bench-cluster-${name}-`);
    const clientUrl = `http://127.0.0.1:${p.client}`;
    const peerUrl = `http://127.0.0.1:${p.peer}`;
    const args = [
      '--name', name, '--data-dir', dataDir,
      '--listen-client-urls', clientUrl, '--advertise-client-urls', clientUrl,
      '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl,
      '--initial-cluster', initialCluster, '--initial-cluster-token', clusterToken, '--initial-cluster-state', 'new',
      '--logger', 'zap', '--log-outputs', 'stderr', '--log-level', 'warn',
    ];
    const proc = reg.spawn(name, etcdBinary, args, { ...process.env });
    return { name, clientUrl, dataDir, proc, id: '' };
  });
  for (;;) {
    const dead = members.find((m) => !m.proc.running);
    if (dead !== undefined) throw new Error(`${dead.name} exited while the cluster formed:\n${dead.proc.output()}`);
    const s = await Promise.all(members.map((m) => memberStatus(m.clientUrl)));
    const leader = s[0]?.leader;
    if (leader !== undefined && leader !== '0' && s.every((x) => x !== null && x.leader === leader)) {
      for (const [i, m] of members.entries()) m.id = (s[i] as { id: string }).id;
      break;
    }
    if (Date.now() - start > etcdReadyTimeoutMs) throw new Error(`etcd cluster not ready within ${etcdReadyTimeoutMs} ms: ${JSON.stringify(s)}\n${members.map((m) => `${m.name}:\n${m.proc.output()}`).join('\n')}`);
    await sleep(pollMs);
  }
  for (const m of members) log(`  ${m.name}: ${m.clientUrl} id ${m.id} (pid ${m.proc.child.pid})`);
  return { members, version, readyMs: Date.now() - start };
}

/** The member every member currently names as leader, or null while they disagree. */
export async function etcdLeader(members: readonly EtcdMember[]): Promise<EtcdMember | null> {
  const s = await Promise.all(members.map((m) => memberStatus(m.clientUrl)));
  const leader = s[0]?.leader;
  if (leader === undefined || !s.every((x) => x !== null && x.leader === leader)) return null;
  return members.find((m) => m.id === leader) ?? null;
}

/**
 * Clients for one target member. `per-client`: one Etcd3 per load client, each with its own gRPC channel and TCP
 * connection (a local subchannel pool; grpc-js would otherwise share one connection between equal channels), the
 * counterpart of one keep-alive HTTP connection per client. `shared`: one Etcd3 (one HTTP/2 connection) that
 * multiplexes all clients' calls, the way an application normally uses etcd3.
 */
export function etcdClients(url: string, mode: EtcdClientMode, clients: number): Etcd3[] {
  if (mode === 'shared') return [etcdClient(url)];
  return Array.from({ length: clients }, () => etcdClient(url, { grpcOptions: { 'grpc.use_local_subchannel_pool': 1 } }));
}
