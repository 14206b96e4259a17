// `novacron token create|list|revoke` and `novacron audit`: API tokens (a new secret is printed once) and the
// cluster's audit records. Needs an admin token (`audit`: operator) through --token or NOVACRON_TOKEN.
import { Option, type Command } from 'commander';
import type { ContextFactory } from '../program.js';
import { readState } from './nodes.js';
import { parsePositiveInt } from '../program.js';
import { CliUsageError } from '../exit.js';
import { keyValues, table } from '../output.js';

export interface ApiTokenOut {
  id: string;
  name: string;
  role: string;
  createdAt: number;
  revokedAt: number | null;
}

export interface TokenCreatedOut {
  token: ApiTokenOut;
  secret: string;
}

export interface AuditRecordOut {
  seq: number;
  at: number;
  actor: { kind: string; id: string; name?: string };
  action: string;
  target: string;
  from: string | null;
  outcome: string;
  error?: string;
}

export interface AuditPageOut {
  records: AuditRecordOut[];
  firstSeq: number;
  nextSeq: number;
}

export const tokenSecretWarning = 'Store this token now (e.g. in a password manager): it is shown only once and cannot be recovered.';

const roles = ['viewer', 'operator', 'admin'] as const;

function time(ms: number | null): string {
  return ms === null ? '-' : new Date(ms).toISOString();
}

export function formatTokenCreated(r: TokenCreatedOut): string {
  return [
    keyValues([
      ['id', r.token.id],
      ['name', r.token.name],
      ['role', r.token.role],
    ]),
    '',
    `token: ${r.secret}`,
    '',
    `WARNING: ${tokenSecretWarning}`,
  ].join('\n');
}

export function formatTokens(r: { tokens: ApiTokenOut[] }): string {
  if (r.tokens.length === 0) return '(no API tokens)';
  return table(r.tokens, [
    { header: 'id', value: (t) => t.id },
    { header: 'name', value: (t) => t.name },
    { header: 'role', value: (t) => t.role },
    { header: 'created', value: (t) => time(t.createdAt) },
    { header: 'revoked', value: (t) => time(t.revokedAt) },
  ]);
}

export function formatAudit(p: AuditPageOut): string {
  if (p.records.length === 0) return '(no audit records)';
  const rows = table(p.records, [
    { header: 'seq', value: (r) => r.seq },
    { header: 'when', value: (r) => time(r.at) },
    { header: 'who', value: (r) => (r.actor.name === undefined ? `${r.actor.kind}:${r.actor.id}` : `${r.actor.name} (${r.actor.kind}:${r.actor.id})`) },
    { header: 'action', value: (r) => r.action },
    { header: 'target', value: (r) => r.target },
    { header: 'from', value: (r) => r.from },
    { header: 'outcome', value: (r) => (r.error === undefined ? r.outcome : `${r.outcome}: ${r.error}`) },
  ]);
  const last = p.records[p.records.length - 1]?.seq ?? 0;
  return last + 1 < p.nextSeq ? `${rows}\n(more: --after ${last})` : rows;
}

function parseNonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new CliUsageError(`expected a whole number ≥ 0, got "${value}"`);
  return n;
}

export function registerTokenCommands(program: Command, context: ContextFactory): void {
  const token = program.command('token').description('API tokens (bearer tokens with role viewer, operator or admin); needs an admin token');

  token
    .command('create')
    .description('create an API token (prints its secret once)')
    .requiredOption('--name <name>', 'what the token is for')
    .addOption(new Option('--role <role>', 'role of the token').choices(roles).makeOptionMandatory())
    .action(async (opts: { name: string; role: string }, cmd: Command) => {
      const ctx = context(cmd);
      const result = await ctx.client().post<TokenCreatedOut>('/v1/tokens', { name: opts.name, role: opts.role });
      ctx.output.result(result, formatTokenCreated);
    });

  token
    .command('list')
    .description('API tokens, live and revoked (never their secrets)')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      ctx.output.result(await readState<{ tokens: ApiTokenOut[] }>(ctx, '/v1/tokens', opts.stale), formatTokens);
    });

  token
    .command('revoke')
    .description('revoke an API token (the last admin token cannot be revoked)')
    .argument('<id>', 'token id (see `token list`)')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const result = await ctx.client().delete<{ token: ApiTokenOut }>(`/v1/tokens/${encodeURIComponent(id)}`);
      ctx.output.result(result, (r) => `revoked token ${r.token.id} (${r.token.name}, ${r.token.role})`);
    });

  program
    .command('audit')
    .description('audit records of the cluster (who, what, when, from where), oldest first; needs an operator token')
    .option('--after <seq>', 'only records after this sequence number', parseNonNegativeInt)
    .option('--limit <n>', 'at most this many records (server bound applies)', parsePositiveInt)
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (opts: { after?: number; limit?: number; stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const query = new URLSearchParams();
      if (opts.after !== undefined) query.set('after', String(opts.after));
      if (opts.limit !== undefined) query.set('limit', String(opts.limit));
      const qs = query.toString();
      ctx.output.result(await readState<AuditPageOut>(ctx, `/v1/audit${qs === '' ? '' : `?${qs}`}`, opts.stale), formatAudit);
    });
}
