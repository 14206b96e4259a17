// `novacron vm create|list|show|start|stop|restart|pause|resume|delete|console|stats` over the REST API of any node.
// Power actions return once the desired state is applied; `--wait` then polls until the owner reports the VM in that
// state (or in error). `console --follow` polls the console tail until Ctrl-C.
import type { Command } from 'commander';
import type { CliContext, ContextFactory } from '../program.js';
import { parsePositiveInt } from '../program.js';
import { CliUsageError } from '../exit.js';
import { keyValues, table } from '../output.js';
import { readState } from './nodes.js';

/** Bound of `--wait`: a TCG guest boots in seconds; a busy host or an image fetch takes longer. */
export const vmWaitTimeoutMsDefault = 120_000;
export const vmWaitPollIntervalMs = 500;
/** `console --follow`: poll period and lines fetched per poll (new lines are found by overlap with the last tail). */
export const consoleFollowIntervalMs = 1_000;
export const consoleFollowLines = 200;
export const consoleTailDefaultLines = 50;

export interface VmSpecOut {
  vcpus: number;
  memoryMiB: number;
  disks: Array<{ imageId?: string; sizeGiB: number }>;
  nics: Array<{ model: string; mac?: string }>;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
}

export interface VmOut {
  id: string;
  name: string;
  spec: VmSpecOut;
  desired: string;
  owner: string | null;
  ownerName: string | null;
  observed: { state: string; reason: string; at: number } | null;
  createdAt: number;
  updatedAt: number;
  version: number;
}

export function formatVms(rows: VmOut[]): string {
  return table(rows, [
    { header: 'name', value: (v) => v.name },
    { header: 'id', value: (v) => v.id },
    { header: 'node', value: (v) => v.ownerName ?? v.owner ?? '' },
    { header: 'desired', value: (v) => v.desired },
    { header: 'observed', value: (v) => v.observed?.state ?? '' },
    { header: 'vcpus', value: (v) => v.spec.vcpus },
    { header: 'memory', value: (v) => `${v.spec.memoryMiB}M` },
    { header: 'reason', value: (v) => v.observed?.reason ?? '' },
  ]);
}

export function formatVm(v: VmOut): string {
  return keyValues([
    ['name', v.name],
    ['id', v.id],
    ['node', v.owner === null ? null : `${v.ownerName ?? '?'} (${v.owner})`],
    ['desired', v.desired],
    ['observed', v.observed === null ? null : `${v.observed.state} at ${new Date(v.observed.at).toISOString()}`],
    ['reason', v.observed?.reason ?? null],
    ['vcpus', v.spec.vcpus],
    ['memory', `${v.spec.memoryMiB} MiB`],
    ['disks', v.spec.disks.map((d) => `${d.sizeGiB}G${d.imageId === undefined ? ' blank' : ` on ${d.imageId.slice(0, 12)}`}`).join(', ')],
    ['nics', v.spec.nics.map((n) => n.model).join(', ')],
    ['kernel', v.spec.kernel ?? null],
    ['initrd', v.spec.initrd ?? null],
    ['cmdline', v.spec.cmdline ?? null],
    ['created', new Date(v.createdAt).toISOString()],
    ['version', v.version],
  ]);
}

const vmPath = (ref: string): string => `/v1/vms/${encodeURIComponent(ref)}`;

/** Polls until the owner reports `target` (or error after the last change); prints progress on stderr. */
export async function waitForObserved(ctx: CliContext, ref: string, target: string, timeoutMs: number): Promise<VmOut> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const { vm } = await ctx.client().get<{ vm: VmOut }>(`${vmPath(ref)}?stale=true`);
    const obs = vm.observed;
    const now = obs === null ? 'pending' : obs.state;
    if (now !== last) {
      ctx.output.info(`${vm.name}: ${now}${obs !== null && obs.reason !== '' ? ` (${obs.reason})` : ''}`);
      last = now;
    }
    if (obs?.state === target) return vm;
    if (obs?.state === 'error' && obs.at >= vm.updatedAt) throw new Error(`VM ${vm.name} is in error: ${obs.reason}`);
    if (Date.now() >= deadline) throw new Error(`VM ${vm.name} did not become ${target} within ${timeoutMs} ms (observed: ${now})`);
    await new Promise((r) => setTimeout(r, vmWaitPollIntervalMs));
  }
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** New lines of `next` after the overlap with `prev` (console tails of a growing log). */
export function newLines(prev: readonly string[], next: readonly string[]): string[] {
  if (prev.length === 0) return [...next];
  for (let k = Math.min(prev.length, next.length); k > 0; k--) {
    let same = true;
    for (let i = 0; i < k; i++) {
      if (prev[prev.length - k + i] !== next[i]) {
        same = false;
        break;
      }
    }
    if (same) return next.slice(k);
  }
  return [...next];
}

interface CreateOpts {
  memory?: number;
  vcpus?: number;
  image: string[];
  diskSize?: number;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  node?: string;
  stopped: boolean;
  demo: boolean;
  wait: boolean;
  waitTimeoutMs: number;
}

export function registerVmCommands(program: Command, context: ContextFactory): void {
  const vm = program.command('vm').description('virtual machines: create, list, power actions, console');

  vm.command('create')
    .description('create a VM; placed on --node, or on the node with the most free memory that fits')
    .argument('<name>', 'VM name (a DNS label)')
    .option('--memory <MiB>', 'memory in MiB', parsePositiveInt)
    .option('--vcpus <n>', 'virtual CPUs', parsePositiveInt)
    .option('--image <id>', 'a disk over this image (repeatable, one disk each)', collect, [])
    .option('--disk-size <GiB>', 'size of each disk (a blank disk when no --image is given)', parsePositiveInt)
    .option('--kernel <x>', 'kernel: an image id or an absolute path on the owner node')
    .option('--initrd <x>', 'initrd: an image id or an absolute path on the owner node')
    .option('--cmdline <s>', 'kernel command line')
    .option('--node <node>', 'node id or name to run it on')
    .option('--stopped', 'create it stopped', false)
    .option('--demo', 'the demo guest: build it if needed, import its files as images on the node asked, and boot it', false)
    .option('--wait', 'wait until the owner reports it running (or stopped with --stopped)', false)
    .option('--wait-timeout-ms <ms>', 'bound of --wait', parsePositiveInt, vmWaitTimeoutMsDefault)
    .action(async (name: string, opts: CreateOpts, cmd: Command) => {
      const ctx = context(cmd);
      let spec: VmSpecOut;
      if (opts.demo) {
        ctx.output.info('building and importing the demo guest ...');
        spec = (await ctx.client().post<{ spec: VmSpecOut }>('/v1/demo-guest/import')).spec;
        if (opts.memory !== undefined) spec.memoryMiB = opts.memory;
        if (opts.vcpus !== undefined) spec.vcpus = opts.vcpus;
      } else {
        if (opts.memory === undefined || opts.vcpus === undefined) throw new CliUsageError('--memory and --vcpus are required (or use --demo)');
        const size = opts.diskSize ?? 10;
        const disks = opts.image.length > 0 ? opts.image.map((imageId) => ({ imageId, sizeGiB: size })) : opts.diskSize === undefined ? [] : [{ sizeGiB: size }];
        spec = {
          vcpus: opts.vcpus,
          memoryMiB: opts.memory,
          disks,
          nics: [{ model: 'virtio-net-pci' }],
          ...(opts.kernel === undefined ? {} : { kernel: opts.kernel }),
          ...(opts.initrd === undefined ? {} : { initrd: opts.initrd }),
          ...(opts.cmdline === undefined ? {} : { cmdline: opts.cmdline }),
        };
      }
      const body = { name, spec, desired: opts.stopped ? 'stopped' : 'running', ...(opts.node === undefined ? {} : { node: opts.node }) };
      let { vm: created } = await ctx.client().post<{ vm: VmOut }>('/v1/vms', body);
      ctx.output.info(`created VM ${created.name} on ${created.ownerName ?? created.owner ?? '?'}`);
      if (opts.wait) created = await waitForObserved(ctx, created.id, opts.stopped ? 'stopped' : 'running', opts.waitTimeoutMs);
      ctx.output.result(created, formatVm);
    });

  vm.command('list')
    .description('every VM: node, desired and observed state')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const { vms } = await readState<{ vms: VmOut[] }>(ctx, '/v1/vms', opts.stale);
      ctx.output.result(vms, formatVms);
    });

  vm.command('show')
    .description('one VM by id or name')
    .argument('<vm>', 'VM id or name')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (ref: string, opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const { vm: v } = await readState<{ vm: VmOut }>(ctx, vmPath(ref), opts.stale);
      ctx.output.result(v, formatVm);
    });

  const powerActions: Array<[string, string, string | null]> = [
    ['start', 'start a stopped VM (also retries one in error)', 'running'],
    ['stop', 'stop a VM (ACPI shutdown, forced after a deadline)', 'stopped'],
    ['pause', 'pause a VM\'s vCPUs', 'paused'],
    ['resume', 'resume a paused VM', 'running'],
    ['restart', 'reset the guest on its owner node (keeps its QEMU process)', null],
  ];
  for (const [action, description, target] of powerActions) {
    const c = vm
      .command(action)
      .description(description)
      .argument('<vm>', 'VM id or name')
      .option('--wait', target === null ? 'accepted for symmetry; a reset is done when the command returns' : `wait until the owner reports it ${target}`, false)
      .option('--wait-timeout-ms <ms>', 'bound of --wait', parsePositiveInt, vmWaitTimeoutMsDefault);
    c.action(async (ref: string, opts: { wait: boolean; waitTimeoutMs: number }, cmd: Command) => {
      const ctx = context(cmd);
      let { vm: v } = await ctx.client().post<{ vm: VmOut }>(`${vmPath(ref)}/${action}`);
      if (opts.wait && target !== null) v = await waitForObserved(ctx, v.id, target, opts.waitTimeoutMs);
      ctx.output.result(v, (x) => `${action}: ${x.name} (desired ${x.desired}, observed ${x.observed?.state ?? 'pending'})`);
    });
  }

  vm.command('delete')
    .description('delete a VM: stopped, removed from the cluster; its node deletes its disks')
    .argument('<vm>', 'VM id or name')
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const { vm: v } = await ctx.client().delete<{ vm: VmOut }>(vmPath(ref));
      ctx.output.result(v, (x) => `deleted VM ${x.name} (${x.id})`);
    });

  vm.command('console')
    .description('the last lines of the VM\'s serial console (from its owner node); --follow keeps printing until Ctrl-C')
    .argument('<vm>', 'VM id or name')
    .option('--tail <n>', 'lines', parsePositiveInt, consoleTailDefaultLines)
    .option('--follow', 'keep polling for new lines until interrupted', false)
    .action(async (ref: string, opts: { tail: number; follow: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const fetchTail = async (n: number): Promise<string[]> => (await ctx.client().get<{ lines: string[] }>(`${vmPath(ref)}/console?tail=${n}`)).lines;
      let prev = await fetchTail(opts.tail);
      ctx.output.result(prev, (lines) => lines.join('\n'));
      if (!opts.follow) return;
      let interrupted = false;
      const onSigint = (): void => {
        interrupted = true;
      };
      process.once('SIGINT', onSigint);
      try {
        while (!interrupted) {
          await new Promise((r) => setTimeout(r, consoleFollowIntervalMs));
          const next = await fetchTail(consoleFollowLines);
          const fresh = newLines(prev, next);
          if (fresh.length > 0) ctx.output.result(fresh, (lines) => lines.join('\n'));
          prev = next;
        }
      } finally {
        process.off('SIGINT', onSigint);
      }
    });

  vm.command('stats')
    .description('CPU time, memory, block and network counters of a running VM')
    .argument('<vm>', 'VM id or name')
    .action(async (ref: string, _opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const out = await ctx.client().get<{ node: string; stats: { cpuTimeMs: number; memory: { configuredBytes: number; rssBytes: number }; block: Array<{ device: string; rdBytes: number; wrBytes: number }> } }>(`${vmPath(ref)}/stats`);
      ctx.output.result(out, (o) =>
        keyValues([
          ['node', o.node],
          ['cpu time', `${(o.stats.cpuTimeMs / 1000).toFixed(1)} s`],
          ['memory', `${Math.round(o.stats.memory.rssBytes / 2 ** 20)} MiB resident of ${Math.round(o.stats.memory.configuredBytes / 2 ** 20)} MiB`],
          ['disks', o.stats.block.map((b) => `${b.device || '?'} r ${b.rdBytes} w ${b.wrBytes}`).join(', ')],
        ]),
      );
    });
}
