// `novacron cluster join-token create|list|revoke`, `novacron cluster join TOKEN` and `novacron node list`:
// the mesh through the local node's REST API.
import type { Command } from 'commander';
import type { ContextFactory } from '../program.js';
import { parsePositiveInt } from '../program.js';
import { keyValues, table } from '../output.js';

interface JoinTokenInfo {
  id: string;
  state: string;
  createdAt: string;
  expiresAt: string;
  usedAt: string | null;
  usedBy: string | null;
  revokedAt: string | null;
}

interface ViewNode {
  nodeId: string;
  status: string;
  ageMs: number;
  sample: {
    name: string;
    version: string;
    cpu: { cores: number; usage: number; load1: number };
    memory: { totalBytes: number; availableBytes: number };
    disk: { totalBytes: number; availableBytes: number };
    vms: { running: number; total: number };
    links: Array<{ peer: string; rttMs: number | null }>;
  };
}

const gib = 1024 ** 3;

function fmtGiB(bytes: number): string {
  return `${(bytes / gib).toFixed(1)}G`;
}

export function registerClusterCommands(program: Command, context: ContextFactory): void {
  const cluster = program.command('cluster').description('form and grow the cluster');
  const tokens = cluster.command('join-token').description('one-time tokens that let a node join this cluster');

  tokens
    .command('create')
    .description('create a join token on the node at --api (prints the token once)')
    .option('--ttl <seconds>', 'lifetime in seconds (default 3600)', parsePositiveInt)
    .action(async (opts: { ttl?: number }, cmd: Command) => {
      const ctx = context(cmd);
      const body = opts.ttl === undefined ? {} : { ttlSeconds: opts.ttl };
      const created = await ctx.client().post<JoinTokenInfo & { token: string }>('/v1/mesh/join-tokens', body);
      ctx.output.result(created, (c) => `${c.token}\n` + keyValues([['id', c.id], ['expires', c.expiresAt]]).replace(/^/gm, '# '));
    });

  tokens
    .command('list')
    .description('list join tokens issued by the node at --api')
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const { tokens: list } = await ctx.client().get<{ tokens: JoinTokenInfo[] }>('/v1/mesh/join-tokens');
      ctx.output.result(list, (rows) =>
        table(rows, [
          { header: 'id', value: (t) => t.id },
          { header: 'state', value: (t) => t.state },
          { header: 'expires', value: (t) => t.expiresAt },
          { header: 'used by', value: (t) => t.usedBy },
        ]),
      );
    });

  tokens
    .command('revoke')
    .description('revoke a join token by its ID')
    .argument('<id>', 'token ID (from `join-token list`)')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const info = await ctx.client().delete<JoinTokenInfo>(`/v1/mesh/join-tokens/${encodeURIComponent(id)}`);
      ctx.output.result(info, (t) => `revoked join token ${t.id}`);
    });

  cluster
    .command('join')
    .description('ask the node at --api (normally the local one) to join the cluster of TOKEN')
    .argument('<token>', 'join token (nctoken1.…)')
    .action(async (token: string, _opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const result = await ctx.client().post<{ clusterId: string; issuer: string; members: string[] }>('/v1/mesh/join', { token });
      ctx.output.result(result, (r) => keyValues([['cluster', r.clusterId], ['issuer', r.issuer], ['members', r.members.length]]));
    });
}

/** Adds `list` to the existing `node` group. */
export function registerNodeListCommand(program: Command, context: ContextFactory): void {
  const node = program.commands.find((c) => c.name() === 'node') ?? program.command('node');
  node
    .command('list')
    .description('every node in the cluster view of the node at --api, from gossip telemetry')
    .action(async (_opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const view = await ctx.client().get<{ ttlMs: number; nodes: ViewNode[] }>('/v1/mesh/view');
      ctx.output.result(view.nodes, (rows) =>
        table(rows, [
          { header: 'name', value: (n) => n.sample.name },
          { header: 'node id', value: (n) => n.nodeId },
          { header: 'status', value: (n) => n.status },
          { header: 'age', value: (n) => `${(n.ageMs / 1000).toFixed(1)}s` },
          { header: 'cpu', value: (n) => `${Math.round(n.sample.cpu.usage * 100)}% of ${n.sample.cpu.cores}` },
          { header: 'load', value: (n) => n.sample.cpu.load1.toFixed(2) },
          { header: 'mem free', value: (n) => `${fmtGiB(n.sample.memory.availableBytes)}/${fmtGiB(n.sample.memory.totalBytes)}` },
          { header: 'disk free', value: (n) => `${fmtGiB(n.sample.disk.availableBytes)}/${fmtGiB(n.sample.disk.totalBytes)}` },
          { header: 'vms', value: (n) => `${n.sample.vms.running}/${n.sample.vms.total}` },
          { header: 'peers', value: (n) => n.sample.links.length },
          { header: 'version', value: (n) => n.sample.version },
        ]),
      );
    });
}
