// `novacron vm migrate NAME --to NODE` (a progress bar until the migration ends, unless --no-wait) and
// `novacron migration list|show|cancel`, over the REST API of any node.
import type { Command } from 'commander';
import type { CliContext, ContextFactory } from '../program.js';
import { parsePositiveInt } from '../program.js';
import { CliUsageError } from '../exit.js';
import { fmtBytes, keyValues, progressBar, table } from '../output.js';
import { readState } from './nodes.js';

/** Polling period while following a migration (the source writes progress about once a second). */
export const migrationPollIntervalMs = 500;
/** Bound of following a migration: its own deadline plus the switch-over; the migration keeps its own deadline. */
export const migrationFollowSlackMs = 120_000;

export interface MigrationOut {
  id: string;
  vm: string;
  vmName: string | null;
  source: string;
  sourceName: string | null;
  target: string;
  targetName: string | null;
  options: { downtimeLimitMs: number; deadlineMs: number; autoConverge: boolean; postcopy: boolean; maxBandwidthBytesPerSec: number | null; compression: string | number };
  phase: string;
  reason: string | null;
  progress: Record<string, number | string | boolean | undefined>;
  createdAt: number;
  updatedAt: number;
  finishedAt: number | null;
}

const terminal = new Set(['completed', 'failed', 'cancelled']);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const rate = (v: unknown): string | null => (num(v) === null ? null : `${fmtBytes(num(v) ?? 0)}/s`);
const ms = (v: unknown): string | null => (num(v) === null ? null : `${Math.round(num(v) ?? 0)} ms`);

export function formatMigrations(rows: MigrationOut[]): string {
  return table(rows, [
    { header: 'id', value: (m) => m.id },
    { header: 'vm', value: (m) => m.vmName ?? m.vm },
    { header: 'from', value: (m) => m.sourceName ?? m.source },
    { header: 'to', value: (m) => m.targetName ?? m.target },
    { header: 'phase', value: (m) => m.phase },
    { header: 'moved', value: (m) => (num(m.progress.bytesTransferred) === null ? null : fmtBytes(num(m.progress.bytesTransferred) ?? 0)) },
    { header: 'downtime', value: (m) => ms(m.progress.downtimeMs) },
    { header: 'started', value: (m) => new Date(m.createdAt).toISOString() },
    { header: 'reason', value: (m) => m.reason },
  ]);
}

export function formatMigration(m: MigrationOut): string {
  const p = m.progress;
  return keyValues([
    ['id', m.id],
    ['vm', `${m.vmName ?? '?'} (${m.vm})`],
    ['from', `${m.sourceName ?? '?'} (${m.source})`],
    ['to', `${m.targetName ?? '?'} (${m.target})`],
    ['phase', m.phase],
    ['step', typeof p.step === 'string' ? p.step : null],
    ['reason', m.reason],
    ['moved', num(p.bytesTransferred) === null ? null : `${fmtBytes(num(p.bytesTransferred) ?? 0)} of ${fmtBytes(num(p.bytesTotal) ?? 0)}`],
    ['disks', num(p.diskBytesTotal) === null ? null : `${fmtBytes(num(p.diskBytesTransferred) ?? 0)} of ${fmtBytes(num(p.diskBytesTotal) ?? 0)}`],
    ['remaining', num(p.bytesRemaining) === null ? null : fmtBytes(num(p.bytesRemaining) ?? 0)],
    ['on the wire', num(p.wireBytes) === null ? null : fmtBytes(num(p.wireBytes) ?? 0)],
    ['ratio', num(p.ratio) === null ? null : `${(num(p.ratio) ?? 0).toFixed(2)}x`],
    ['rate', rate(p.rateBytesPerSec)],
    ['wire rate', rate(p.wireRateBytesPerSec)],
    ['dirty rate', rate(p.dirtyRateBytesPerSec)],
    ['compression', num(p.compressionLevel) === null ? null : p.compressionLevel === 0 ? 'raw' : `zstd ${p.compressionLevel}`],
    ['converging', typeof p.converging === 'boolean' ? (p.converging ? 'yes' : 'no') : null],
    ['predicted rest', ms(p.predictedRemainingMs)],
    ['expected downtime', ms(p.expectedDowntimeMs)],
    ['cpu throttle', num(p.cpuThrottlePercent) === null ? null : `${p.cpuThrottlePercent}%`],
    ['downtime', ms(p.downtimeMs)],
    ['duration', ms(p.durationMs)],
    ['options', `downtime ≤ ${m.options.downtimeLimitMs} ms, deadline ${m.options.deadlineMs} ms, auto-converge ${m.options.autoConverge ? 'on' : 'off'}, post-copy ${m.options.postcopy ? 'on' : 'off'}, compression ${m.options.compression}${m.options.maxBandwidthBytesPerSec === null ? '' : `, cap ${fmtBytes(m.options.maxBandwidthBytesPerSec)}/s`}`],
    ['started', new Date(m.createdAt).toISOString()],
    ['finished', m.finishedAt === null ? null : new Date(m.finishedAt).toISOString()],
  ]);
}

const migrationPath = (id: string): string => `/v1/migrations/${encodeURIComponent(id)}`;

/** Follows a migration to its end with a progress bar on a TTY (phase changes as lines otherwise). */
export async function followMigration(ctx: CliContext, id: string, timeoutMs: number): Promise<MigrationOut> {
  const tty = !ctx.options.json && process.stderr.isTTY ? process.stderr : null;
  const bar = progressBar(tty, 'migrating', 1);
  const deadline = Date.now() + timeoutMs;
  let lastPhase = '';
  for (;;) {
    const { migration: m } = await ctx.client().get<{ migration: MigrationOut }>(`${migrationPath(id)}?stale=true`);
    if (m.phase !== lastPhase) {
      if (tty === null) ctx.output.info(`${m.vmName ?? m.vm}: ${m.phase}`);
      lastPhase = m.phase;
    }
    const p = m.progress;
    const total = num(p.bytesTotal) ?? 0;
    const done = total === 0 ? 0 : total - (num(p.bytesRemaining) ?? total);
    const detail = [
      m.phase,
      typeof p.step === 'string' ? p.step : null,
      rate(p.rateBytesPerSec),
      num(p.ratio) === null ? null : `${(num(p.ratio) ?? 1).toFixed(1)}x`,
      num(p.dirtyRateBytesPerSec) === null ? null : `dirty ${rate(p.dirtyRateBytesPerSec)}`,
      p.converging === false ? 'not converging' : null,
    ]
      .filter((x) => x !== null)
      .join(' · ');
    bar.update(done, detail, Math.max(total, 1));
    if (terminal.has(m.phase)) {
      bar.end(m.phase === 'completed' ? `completed · downtime ${ms(p.downtimeMs) ?? '?'}` : `${m.phase}: ${m.reason ?? ''}`);
      return m;
    }
    if (Date.now() >= deadline) {
      bar.end();
      throw new Error(`migration ${id} did not finish within ${timeoutMs} ms (phase ${m.phase}); it goes on: novacron migration show ${id}`);
    }
    await new Promise((r) => setTimeout(r, migrationPollIntervalMs));
  }
}

interface MigrateOpts {
  to: string;
  downtimeMs?: number;
  deadlineS?: number;
  autoConverge: boolean;
  postcopy: boolean;
  maxBandwidth?: number;
  compression?: string;
  wait: boolean;
}

export function parseCompression(v: string): 'adaptive' | 'off' | number {
  if (v === 'adaptive' || v === 'off') return v;
  const n = Number(v);
  if (Number.isInteger(n) && n >= 1 && n <= 19) return n;
  throw new CliUsageError(`--compression must be adaptive, off or a zstd level 1..19, got ${v}`);
}

export function registerMigrationCommands(program: Command, context: ContextFactory): void {
  const vm = program.commands.find((c) => c.name() === 'vm');
  if (vm === undefined) throw new Error('the vm command group must be registered before migrations');
  vm.command('migrate')
    .description('live-migrate a running VM, disks included, to another node; shows progress until it ends')
    .argument('<vm>', 'VM id or name')
    .requiredOption('--to <node>', 'target node id or name')
    .option('--downtime-ms <ms>', 'longest pause of the guest at switch-over to aim for', parsePositiveInt)
    .option('--deadline-s <s>', 'cancel (the VM stays on the source) if not done within this many seconds', parsePositiveInt)
    .option('--no-auto-converge', 'do not throttle the guest\'s vCPUs when pre-copy does not converge')
    .option('--postcopy', 'switch to post-copy as a last resort (a link failure during post-copy loses the VM)', false)
    .option('--max-bandwidth <bytes/s>', 'cap on the link bytes this migration sends per second', parsePositiveInt)
    .option('--compression <mode>', 'adaptive (default), off, or a fixed zstd level 1..19')
    .option('--no-wait', 'return once the migration is requested')
    .action(async (ref: string, opts: MigrateOpts, cmd: Command) => {
      const ctx = context(cmd);
      const options = {
        ...(opts.downtimeMs === undefined ? {} : { downtimeLimitMs: opts.downtimeMs }),
        ...(opts.deadlineS === undefined ? {} : { deadlineMs: opts.deadlineS * 1000 }),
        autoConverge: opts.autoConverge,
        postcopy: opts.postcopy,
        ...(opts.maxBandwidth === undefined ? {} : { maxBandwidthBytesPerSec: opts.maxBandwidth }),
        ...(opts.compression === undefined ? {} : { compression: parseCompression(opts.compression) }),
      };
      const { migration } = await ctx.client().post<{ migration: MigrationOut }>(`/v1/vms/${encodeURIComponent(ref)}/migrate`, { target: opts.to, options });
      ctx.output.info(`migration ${migration.id}: ${migration.vmName ?? ref} from ${migration.sourceName ?? migration.source} to ${migration.targetName ?? migration.target}`);
      if (!opts.wait) {
        ctx.output.result(migration, formatMigration);
        return;
      }
      const final = await followMigration(ctx, migration.id, migration.options.deadlineMs + migrationFollowSlackMs);
      ctx.output.result(final, formatMigration);
      if (final.phase !== 'completed') process.exitCode = 1;
    });

  const migration = program.command('migration').description('live migrations: list, show progress, cancel');

  migration
    .command('list')
    .description('migrations, newest first')
    .option('--vm <vm>', 'only this VM')
    .option('--active', 'only migrations in progress', false)
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (opts: { vm?: string; active: boolean; stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const q = new URLSearchParams();
      if (opts.vm !== undefined) q.set('vm', opts.vm);
      if (opts.active) q.set('active', 'true');
      const path = `/v1/migrations${q.size > 0 ? `?${q.toString()}` : ''}`;
      const { migrations } = await readState<{ migrations: MigrationOut[] }>(ctx, path, opts.stale);
      ctx.output.result(migrations, formatMigrations);
    });

  migration
    .command('show')
    .description('one migration with its progress figures')
    .argument('<id>', 'migration id')
    .option('--follow', 'follow it with a progress bar until it ends', false)
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (id: string, opts: { follow: boolean; stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      if (opts.follow) {
        ctx.output.result(await followMigration(ctx, id, 24 * 3600 * 1000), formatMigration);
        return;
      }
      const { migration: m } = await readState<{ migration: MigrationOut }>(ctx, migrationPath(id), opts.stale);
      ctx.output.result(m, formatMigration);
    });

  migration
    .command('cancel')
    .description('cancel a migration before its switch-over; the VM keeps running on the source')
    .argument('<id>', 'migration id')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const { migration: m } = await ctx.client().post<{ migration: MigrationOut }>(`${migrationPath(id)}/cancel`);
      ctx.output.result(m, formatMigration);
    });
}
