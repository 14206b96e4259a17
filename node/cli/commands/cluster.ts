// `novacron cluster init` and `novacron cluster status`: founding the cluster (the first admin token is printed
// once) and this node's view of it. Adds to the `cluster` group that commands/mesh.ts creates.
import type { Command } from 'commander';
import type { ContextFactory } from '../program.js';
import { keyValues, table } from '../output.js';

export interface ClusterMemberOut {
  id: string;
  name: string;
  role: string;
  addresses: string[];
  site: string;
  joinedAt: number;
  status: string;
}

export interface RaftStatusOut {
  role: string;
  term: number;
  leader: string | null;
  commit: number;
  applied: number;
  snapshotIndex: number;
}

export interface ClusterStatusOut {
  initialised: boolean;
  clusterId: string | null;
  nodeId: string;
  raft: RaftStatusOut | null;
  members: ClusterMemberOut[];
  apiTokens: number;
}

export interface ClusterInitOut {
  clusterId: string;
  adminToken: string;
  adminTokenId: string;
  node: ClusterMemberOut;
  raft: RaftStatusOut;
}

export const adminTokenWarning = 'Store this admin token now (e.g. in a password manager): it is shown only once and cannot be recovered.';

export function formatInit(r: ClusterInitOut): string {
  return [
    `cluster ${r.clusterId} initialised; this node (${r.node.name}) is its leader and only voter`,
    '',
    `admin token: ${r.adminToken}`,
    '',
    `WARNING: ${adminTokenWarning}`,
    'Use it with --token or NOVACRON_TOKEN.',
  ].join('\n');
}

export function formatStatus(s: ClusterStatusOut): string {
  const head = keyValues([
    ['cluster', s.clusterId ?? '-'],
    ['initialised', s.initialised ? 'yes' : 'no'],
    ['node', s.nodeId],
    ['raft role', s.raft?.role ?? 'not running'],
    ['term', s.raft?.term ?? '-'],
    ['leader', s.raft?.leader ?? '-'],
    ['commit', s.raft?.commit ?? '-'],
    ['applied', s.raft?.applied ?? '-'],
    ['api tokens', s.apiTokens],
  ]);
  if (s.members.length === 0) return `${head}\n(no members: run \`novacron cluster init\` or join a cluster)`;
  const leader = s.raft?.leader ?? null;
  const members = table(s.members, [
    { header: 'name', value: (m) => m.name },
    { header: 'node id', value: (m) => m.id },
    { header: 'role', value: (m) => (m.id === leader ? `${m.role} (leader)` : m.role) },
    { header: 'status', value: (m) => m.status },
    { header: 'addresses', value: (m) => m.addresses.length },
  ]);
  return `${head}\n\n${members}`;
}

export function registerClusterInitStatusCommands(program: Command, context: ContextFactory): void {
  const cluster = program.commands.find((c) => c.name() === 'cluster') ?? program.command('cluster').description('form and grow the cluster');

  cluster
    .command('init')
    .description('found a new cluster on the node at --api, with that node as its one voter (prints the first admin token once)')
    .option('--name <name>', 'member name of the node (a DNS label; default: its node.name in lower case)')
    .action(async (opts: { name?: string }, cmd: Command) => {
      const ctx = context(cmd);
      const body = opts.name === undefined ? {} : { name: opts.name };
      const result = await ctx.client().post<ClusterInitOut>('/v1/cluster/init', body);
      ctx.output.result(result, formatInit);
    });

  cluster
    .command('status')
    .description('the cluster as the node at --api sees it: Raft role, term, leader, commit index and members')
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const status = await ctx.client().get<ClusterStatusOut>('/v1/cluster/status');
      ctx.output.result(status, formatStatus);
    });
}
