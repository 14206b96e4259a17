// `novacron cluster init` and `novacron cluster status`: founding the cluster (the first admin token is printed
// once) and this node's view of it. Adds to the `cluster` group that commands/mesh.ts creates.
import type { Command } from 'commander';
import type { ContextFactory } from '../program.js';
import { keyValues, table } from '../output.js';
import { parsePositiveInt } from '../program.js';
import { CliUsageError } from '../exit.js';
import { readState } from './nodes.js';

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

  const settings = cluster.command('settings').description('cluster settings (voter count cap, voter replacement timeout)');
  settings
    .command('show')
    .description('show the cluster settings')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      ctx.output.result(await readState<SettingsOut>(ctx, '/v1/cluster/settings', opts.stale), formatSettings);
    });
  settings
    .command('set')
    .description('change cluster settings; needs an admin token')
    .option('--max-voters <n>', 'most voters the leader keeps: 1, 3 or 5 (it keeps 3, or 5 from 5 members, up to this)', parseMaxVoters)
    .option('--voter-replace-after <seconds>', 'replace a voter unreachable this long by a healthy learner', parsePositiveInt)
    .action(async (opts: { maxVoters?: 1 | 3 | 5; voterReplaceAfter?: number }, cmd: Command) => {
      const ctx = context(cmd);
      const body = {
        ...(opts.maxVoters === undefined ? {} : { desiredVoters: opts.maxVoters }),
        ...(opts.voterReplaceAfter === undefined ? {} : { voterReplaceAfterMs: opts.voterReplaceAfter * 1000 }),
      };
      if (Object.keys(body).length === 0) throw new CliUsageError('nothing to set: give --max-voters and/or --voter-replace-after');
      ctx.output.result(await ctx.client().patch<SettingsOut>('/v1/cluster/settings', body), formatSettings);
    });
}

interface SettingsOut {
  desiredVoters: number;
  voterReplaceAfterMs: number;
}

function formatSettings(s: SettingsOut): string {
  return keyValues([
    ['max voters', s.desiredVoters],
    ['replace unreachable voter after', `${s.voterReplaceAfterMs / 1000} s`],
  ]);
}

function parseMaxVoters(value: string): 1 | 3 | 5 {
  if (value === '1' || value === '3' || value === '5') return Number(value) as 1 | 3 | 5;
  throw new CliUsageError(`--max-voters must be 1, 3 or 5, got "${value}"`);
}
