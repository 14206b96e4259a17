// `novacron cluster join-token create|list|revoke` and `novacron cluster join TOKEN` through the local node's
// REST API (join tokens live in Raft once the cluster exists; before, in the issuing node's mesh store).
import type { Command } from 'commander';
import type { ContextFactory } from '../program.js';
import { parsePositiveInt } from '../program.js';
import { keyValues, table } from '../output.js';
import { readState } from './nodes.js';

interface JoinTokenInfo {
  id: string;
  state: string;
  createdAt: string;
  expiresAt: string;
  usedAt: string | null;
  usedBy: string | null;
  revokedAt: string | null;
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
    .description('list the cluster\'s join tokens (before `cluster init`: those the node at --api issued)')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const { tokens: list } = await readState<{ tokens: JoinTokenInfo[] }>(ctx, '/v1/mesh/join-tokens', opts.stale);
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
    .option('--name <name>', 'member name to ask for (a DNS label); default: node.name in lower case')
    .option('--site <site>', 'site label (the leader spreads voters over distinct sites)')
    .action(async (token: string, opts: { name?: string; site?: string }, cmd: Command) => {
      const ctx = context(cmd);
      const body = { token, ...(opts.name === undefined ? {} : { name: opts.name }), ...(opts.site === undefined ? {} : { site: opts.site }) };
      const result = await ctx.client().post<{ clusterId: string; issuer: string; members: string[] }>('/v1/mesh/join', body);
      ctx.output.result(result, (r) => keyValues([['cluster', r.clusterId], ['issuer', r.issuer], ['members', r.members.length]]));
    });
}
