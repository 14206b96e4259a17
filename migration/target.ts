// The target half of a migration: a QEMU started with `-incoming defer -S` exports its new (empty) disks over NBD
// and listens for the RAM stream on unix sockets in the migration's work dir; each data channel from the source node
// is tunnelled to one of them. The guest runs here only when the node says so (goLive), after Raft moved ownership.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { QmpClient } from '../node/hypervisor/qmp.js';
import type { EngineLogger, EngineTargetSession } from '../node/migration/engine.js';
import type { ByteChannel, ChannelKind } from '../node/migration/protocol.js';
import { MigrationEngineError } from './errors.js';
import { connectLocal, Tunnel } from './tunnel.js';
import { nextEventOrTimeout, qmpPollMs } from './qmp-util.js';

/** The incoming QEMU has this long after go-live is asked to finish loading the stream. */
export const incomingFinishTimeoutMs = 30_000;
/** Data channels of one migration at once (RAM, one NBD connection per disk, and a few reconnects). */
export const targetChannelsMax = 68;

export interface TargetPrepareOptions {
  migrationId: string;
  qmp: QmpClient;
  disks: Array<{ nodeName: string }>;
  workDir: string;
  postcopy: boolean;
  logger: EngineLogger;
  nowMs: () => number;
}

export function exportName(index: number): string {
  return `disk${index}`;
}

export async function prepareTarget(opts: TargetPrepareOptions): Promise<EngineTargetSession> {
  const { qmp, workDir } = opts;
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  const ramSocket = join(workDir, 'ram-in.sock');
  const nbdSocket = join(workDir, 'nbd-in.sock');
  const capabilities = [{ capability: 'events', state: true }];
  if (opts.postcopy) capabilities.push({ capability: 'postcopy-ram', state: true });
  await qmp.execute('migrate-set-capabilities', { capabilities });
  await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
  const exports: string[] = [];
  for (const [i, d] of opts.disks.entries()) {
    const name = exportName(i);
    // Without allow-inactive, QEMU activates the incoming QEMU's (inactive) image for the export, so the mirror can write.
    await qmp.execute('block-export-add', { type: 'nbd', id: `mig-export-${i}`, 'node-name': d.nodeName, name, writable: true });
    exports.push(name);
  }
  await qmp.execute('migrate-incoming', { uri: `unix:${ramSocket}` });
  opts.logger.info({ migrationId: opts.migrationId, exports, ramSocket, nbdSocket }, 'target QEMU waits for the migration');
  return new TargetSession(opts, exports, ramSocket, nbdSocket);
}

class TargetSession implements EngineTargetSession {
  private readonly abortController = new AbortController();
  private readonly tunnels = new Set<Tunnel>();

  constructor(
    private readonly opts: TargetPrepareOptions,
    readonly exports: string[],
    private readonly ramSocket: string,
    private readonly nbdSocket: string,
  ) {}

  async acceptChannel(kind: ChannelKind, channel: ByteChannel): Promise<void> {
    if (this.abortController.signal.aborted || this.tunnels.size >= targetChannelsMax) {
      channel.abort(new MigrationEngineError('migration_aborted', 'the target session takes no more channels'));
      return;
    }
    const socket = await connectLocal(kind === 'ram' ? this.ramSocket : this.nbdSocket);
    // Replies (NBD answers, the RAM return path) are small: compress adaptively like the source does.
    const tunnel = new Tunnel(socket, channel, { compression: 'adaptive', logger: this.opts.logger, label: `${this.opts.migrationId}/${kind}/in` }, this.abortController.signal);
    this.tunnels.add(tunnel);
    try {
      await tunnel.done;
    } finally {
      this.tunnels.delete(tunnel);
    }
  }

  /** Waits (bounded) for the stream to be fully loaded, or post-copy to have started. */
  async loaded(): Promise<void> {
    const { qmp } = this.opts;
    const deadline = this.opts.nowMs() + incomingFinishTimeoutMs;
    for (;;) {
      const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (info.status === 'completed' || info.status === 'postcopy-active') break;
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw new MigrationEngineError('migration_qemu_failed', `the incoming migration ${info.status}${info['error-desc'] === undefined ? '' : `: ${info['error-desc']}`}`);
      }
      if (this.opts.nowMs() > deadline) throw new MigrationEngineError('migration_qemu_failed', `the incoming migration did not finish within ${incomingFinishTimeoutMs} ms (${info.status ?? 'no status'})`);
      // The guest is paused on the source meanwhile: woken by QEMU's event, not a poll's delay.
      await nextEventOrTimeout(qmp, ['MIGRATION'], qmpPollMs);
    }
  }

  /** Waits for the stream to be loaded, drops the NBD exports, runs the guest. */
  async goLive(): Promise<number> {
    const { qmp } = this.opts;
    await this.loaded();
    // The exports must go before the guest writes to its disks: nothing else may write to them after this point.
    for (let i = 0; i < this.exports.length; i++) await qmp.execute('block-export-del', { id: `mig-export-${i}` }).catch(() => undefined);
    await qmp.execute('nbd-server-stop').catch(() => undefined);
    await qmp.execute('cont');
    return this.opts.nowMs();
  }

  async abort(reason: string): Promise<void> {
    this.abortController.abort(new MigrationEngineError('migration_aborted', reason));
    await Promise.allSettled([...this.tunnels].map((t) => t.done));
  }
}
