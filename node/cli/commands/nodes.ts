// `novacron node list|show|set|remove`: the cluster's member nodes through the REST API of any node. Reads are
// linearizable; when the node has no quorum they fall back to its own (stale) state and say how old it is.
import type { Command } from 'commander';
import type { CliContext, ContextFactory } from '../program.js';
import type { StateRead } from '../client.js';
import { CliApiError } from '../exit.js';
import { keyValues, table } from '../output.js';

export interface NodeOut {
  id: string;
  name: string;
  role: string;
  raftRole: string;
  site: string;
  addresses: string[];
  joinedAt: number;
  status: string;
  self: boolean;
  reachable: boolean;
  rttMs: number | null;
  match: number | null;
  telemetry: {
    ageMs: number;
    sample: {
      version: string;
      cpu: { cores: number; usage: number; load1: number };
      memory: { totalBytes: number; availableBytes: number };
      disk: { totalBytes: number; availableBytes: number };
      vms: { running: number; total: number };
    };
  } | null;
}

const gib = 1024 ** 3;

function fmtGiB(bytes: number): string {
  return `${(bytes / gib).toFixed(1)}G`;
}

/**
 * Reads cluster state: linearizable, or (with --stale, or when the node answers no_quorum) the node's own state,
 * with a warning that says how old it may be.
 */
export async function readState<T>(ctx: CliContext, path: string, stale: boolean): Promise<T> {
  let read: StateRead<T>;
  try {
    read = await ctx.client().read<T>(path, stale);
  } catch (err) {
    if (!(err instanceof CliApiError) || err.code !== 'no_quorum' || stale) throw err;
    ctx.output.info(`warning: ${err.message}`);
    read = await ctx.client().read<T>(path, true);
  }
  if (read.consistency === 'stale') {
    const age = read.dataAgeMs === null ? 'of unknown age (no leader heard yet)' : `up to ${(read.dataAgeMs / 1000).toFixed(1)} s old`;
    ctx.output.info(`warning: stale read: this node's own state, ${age}`);
  }
  return read.body;
}

export function formatNodes(rows: NodeOut[]): string {
  return table(rows, [
    { header: 'name', value: (n) => (n.self ? `${n.name} *` : n.name) },
    { header: 'node id', value: (n) => n.id },
    { header: 'raft', value: (n) => n.raftRole },
    { header: 'site', value: (n) => n.site },
    { header: 'reachable', value: (n) => (n.reachable ? 'yes' : 'NO') },
    { header: 'rtt', value: (n) => (n.rttMs === null ? '' : `${n.rttMs.toFixed(1)}ms`) },
    { header: 'cpu', value: (n) => (n.telemetry === null ? '' : `${Math.round(n.telemetry.sample.cpu.usage * 100)}% of ${n.telemetry.sample.cpu.cores}`) },
    { header: 'mem free', value: (n) => (n.telemetry === null ? '' : `${fmtGiB(n.telemetry.sample.memory.availableBytes)}/${fmtGiB(n.telemetry.sample.memory.totalBytes)}`) },
    { header: 'vms', value: (n) => (n.telemetry === null ? '' : `${n.telemetry.sample.vms.running}/${n.telemetry.sample.vms.total}`) },
    { header: 'version', value: (n) => n.telemetry?.sample.version ?? '' },
  ]);
}

export function formatNode(n: NodeOut): string {
  const t = n.telemetry;
  return keyValues([
    ['name', n.name],
    ['node id', n.id],
    ['raft role', n.raftRole],
    ['site', n.site === '' ? '(none)' : n.site],
    ['joined', new Date(n.joinedAt).toISOString()],
    ['reachable', n.reachable ? 'yes' : 'no'],
    ['rtt', n.rttMs === null ? null : `${n.rttMs.toFixed(1)} ms`],
    ['replicated to', n.match],
    ['addresses', n.addresses.join(' ')],
    ['telemetry age', t === null ? null : `${(t.ageMs / 1000).toFixed(1)} s`],
    ['cpu', t === null ? null : `${Math.round(t.sample.cpu.usage * 100)}% of ${t.sample.cpu.cores} cores, load ${t.sample.cpu.load1.toFixed(2)}`],
    ['memory free', t === null ? null : `${fmtGiB(t.sample.memory.availableBytes)} of ${fmtGiB(t.sample.memory.totalBytes)}`],
    ['disk free', t === null ? null : `${fmtGiB(t.sample.disk.availableBytes)} of ${fmtGiB(t.sample.disk.totalBytes)}`],
    ['vms', t === null ? null : `${t.sample.vms.running} running of ${t.sample.vms.total}`],
    ['version', t?.sample.version ?? null],
  ]);
}

/** Adds list, show, set and remove to the existing `node` group. */
export function registerNodeCommands(program: Command, context: ContextFactory): void {
  const node = program.commands.find((c) => c.name() === 'node') ?? program.command('node');
  node
    .command('list')
    .description('every member node: Raft role, site, reachability, RTT and telemetry (* marks the node asked)')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const { nodes } = await readState<{ nodes: NodeOut[] }>(ctx, '/v1/nodes', opts.stale);
      ctx.output.result(nodes, formatNodes);
    });

  node
    .command('show')
    .description('one member node by id or name')
    .argument('<node>', 'node id or name')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (ref: string, opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const { node: n } = await readState<{ node: NodeOut }>(ctx, `/v1/nodes/${encodeURIComponent(ref)}`, opts.stale);
      ctx.output.result(n, formatNode);
    });

  node
    .command('set')
    .description('rename a node or set its site (voters are spread over distinct sites)')
    .argument('<node>', 'node id or name')
    .option('--name <name>', 'new member name (a DNS label)')
    .option('--site <site>', 'site label')
    .action(async (ref: string, opts: { name?: string; site?: string }, cmd: Command) => {
      const ctx = context(cmd);
      const body = { ...(opts.name === undefined ? {} : { name: opts.name }), ...(opts.site === undefined ? {} : { site: opts.site }) };
      const { node: n } = await ctx.client().patch<{ node: NodeOut }>(`/v1/nodes/${encodeURIComponent(ref)}`, body);
      ctx.output.result(n, formatNode);
    });

  node
    .command('remove')
    .description('remove a node from the cluster (it then gets nothing from the others); needs an admin token')
    .argument('<node>', 'node id or name')
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const { node: n } = await ctx.client().delete<{ node: { id: string; name: string } }>(`/v1/nodes/${encodeURIComponent(ref)}`);
      ctx.output.result(n, (x) => `removed node ${x.name} (${x.id})`);
    });
}
