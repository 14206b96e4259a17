// The NovaCron side of the cluster benchmark: three real `novacron node start` processes on loopback formed into a
// cluster with the CLI (`cluster init`, `cluster join-token create`, `cluster join`), and a keep-alive HTTP client
// for the REST API (node:http with one Agent per target: at most `clients` sockets, reused between requests).
import { Agent, request as httpRequest } from 'node:http';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { sleep, type Proc, type Registry } from './cluster-procs.js';

export const cliPath = fileURLToPath(new URL('../node/cli/main.js', import.meta.url));
const nodeCount = 3;
const nodeStartTimeoutMs = 30_000;
const cliTimeoutMs = 30_000;
/** From the last join until the leader reports 3 voters and every node knows the leader and has caught up. */
const formTimeoutMs = 30_000;
const pollMs = 200;
/** How far a follower's applied index may trail the leader's when the cluster counts as formed. */
const appliedSlack = 5;
/** Per HTTP request; a request still unanswered after this counts as a `timeout` error. */
export const httpTimeoutMs = 10_000;

export class HttpStatusError extends Error {
  constructor(
    readonly status: number,
    body: string,
  ) {
    super(`HTTP ${status}: ${body.slice(0, 300)}`);
    this.name = 'HttpStatusError';
  }
}

/** Keep-alive HTTP client of one node's API: at most `maxSockets` connections, each reused. */
export class HttpApi {
  private readonly agent: Agent;
  private readonly host: string;
  private readonly port: number;

  constructor(
    readonly baseUrl: string,
    private readonly token: string,
    maxSockets: number,
  ) {
    const u = new URL(baseUrl);
    this.host = u.hostname;
    this.port = Number(u.port);
    this.agent = new Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets });
  }

  /** Resolves with the body of a 2xx answer; rejects with HttpStatusError otherwise. */
  call(method: string, path: string, body?: unknown): Promise<string> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string | number> = { authorization: `Bearer ${this.token}` };
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = Buffer.byteLength(payload);
    }
    return new Promise<string>((resolve, reject) => {
      const req = httpRequest({ host: this.host, port: this.port, method, path, headers, agent: this.agent, timeout: httpTimeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve(text);
          else reject(new HttpStatusError(status, text));
        });
      });
      req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${httpTimeoutMs} ms`), { code: 'timeout' })));
      req.on('error', reject);
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

export function classifyHttpError(err: unknown): string {
  if (err instanceof HttpStatusError) return `http_${err.status}`;
  if (err instanceof Error) return (err as NodeJS.ErrnoException).code ?? err.name;
  return 'unknown';
}

export interface NovaNode {
  name: string;
  url: string;
  peerId: string;
  dataDir: string;
  proc: Proc;
}

export interface ClusterStatus {
  clusterId: string | null;
  nodeId: string;
  raft: { role: string; term: number; leader: string | null; commit: number; applied: number } | null;
  members: Array<{ id: string; role: string; site: string }>;
}

export interface NovaCluster {
  nodes: NovaNode[];
  adminToken: string;
  clusterId: string;
  formMs: number;
}

function childEnv(): NodeJS.ProcessEnv {
  // As test/support/proc.ts: no NOVACRON_* from the caller's environment leaks into the nodes or the CLI.
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('NOVACRON_')));
  return { ...base, NOVACRON_MESH_LISTEN: '/ip4/127.0.0.1/tcp/0', NOVACRON_MESH_MDNS: 'false' };
}

export function assertBuilt(): void {
  if (!existsSync(cliPath)) throw new Error(`${cliPath} is missing: run \`npm run build\` (npm run bench:cluster does it)`);
}

/** Runs the CLI against `node` with `--json` and returns its parsed stdout; throws with its output on failure. */
async function cli<T>(reg: Registry, node: NovaNode, args: string[], token?: string): Promise<T> {
  const p = reg.spawn(`cli ${args.slice(0, 2).join(' ')}`, process.execPath, [cliPath, ...args, '--api', node.url, '--json', ...(token === undefined ? [] : ['--token', token])], childEnv());
  let stdout = '';
  p.child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  const timer = setTimeout(() => p.child.kill('SIGKILL'), cliTimeoutMs);
  const { code, signal } = await p.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`novacron ${args.join(' ')} failed (${signal ?? `code ${code}`}):\n${p.output()}`);
  return JSON.parse(stdout) as T;
}

async function startNode(reg: Registry, name: string): Promise<NovaNode> {
  const dataDir = reg.tempDir(`nc-bench-cluster-${name}-`);
  const args = [cliPath, 'node', 'start', '--data-dir', dataDir, '--name', name, '--api-host', '127.0.0.1', '--api-port', '0', '--set', 'mesh.listen=/ip4/127.0.0.1/tcp/0', '--set', 'mesh.mdns=false'];
  const proc = reg.spawn(name, process.execPath, args, childEnv());
  const started = await proc.waitForLine((line) => {
    if (!line.startsWith('{')) return undefined;
    try {
      const r = JSON.parse(line) as { msg?: string; api?: string; peerId?: string };
      return r.msg === 'node started' && typeof r.api === 'string' && typeof r.peerId === 'string' ? { api: r.api, peerId: r.peerId } : undefined;
    } catch {
      return undefined;
    }
  }, nodeStartTimeoutMs);
  return { name, url: started.api, peerId: started.peerId, dataDir, proc };
}

export async function status(api: HttpApi): Promise<ClusterStatus> {
  return JSON.parse(await api.call('GET', '/v1/cluster/status')) as ClusterStatus;
}

/** Starts 3 nodes, founds the cluster on the first, joins the other two and waits for 3 voters, all caught up. */
export async function formCluster(reg: Registry, log: (line: string) => void): Promise<NovaCluster> {
  assertBuilt();
  const nodes = await Promise.all(Array.from({ length: nodeCount }, (_, i) => startNode(reg, `bench${i + 1}`)));
  for (const n of nodes) log(`  ${n.name}: ${n.url} ${n.peerId} (pid ${n.proc.child.pid})`);
  const start = Date.now();
  const [first, ...joiners] = nodes as [NovaNode, ...NovaNode[]];
  const init = await cli<{ adminToken: string; clusterId: string }>(reg, first, ['cluster', 'init']);
  for (const j of joiners) {
    const { token } = await cli<{ token: string }>(reg, first, ['cluster', 'join-token', 'create'], init.adminToken);
    await cli(reg, j, ['cluster', 'join', token]);
  }
  const apis = nodes.map((n) => new HttpApi(n.url, init.adminToken, 1));
  try {
    for (;;) {
      const s = await Promise.all(apis.map((a) => status(a).catch(() => null)));
      const leader = s.find((x) => x?.raft?.role === 'leader');
      const formed =
        leader?.raft != null &&
        leader.members.length === nodeCount &&
        leader.members.every((m) => m.role === 'voter') &&
        s.every((x) => x?.raft != null && x.raft.leader === leader.nodeId && leader.raft !== null && leader.raft.applied - x.raft.applied <= appliedSlack);
      if (formed) break;
      if (Date.now() - start > formTimeoutMs) {
        throw new Error(`cluster not formed within ${formTimeoutMs} ms: ${JSON.stringify(s.map((x) => (x === null ? null : { node: x.nodeId, raft: x.raft, members: x.members.map((m) => m.role) })))}`);
      }
      await sleep(pollMs);
    }
  } finally {
    for (const a of apis) a.close();
  }
  return { nodes, adminToken: init.adminToken, clusterId: init.clusterId, formMs: Date.now() - start };
}
