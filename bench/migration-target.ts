// The target node of bench:migration, in its own process inside the target's network namespace, as a real target
// node is: it starts the incoming QEMU, prepares the migration engine's target session and feeds it every tunnel
// connection that arrives over the shaped link. Driven by the bench over the IPC channel:
//   { op: 'prepare', config, runDir } → { op: 'ready' }   { op: 'loaded' } → { op: 'loaded' } (the whole stream is in)
//   { op: 'abort' } → { op: 'aborted' }
// Usage (through ip netns exec): node migration-target.js HOST PORT
import { createServer } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { QemuDriver } from '../node/hypervisor/qemu.js';
import type { QemuVmConfig } from '../node/hypervisor/qemu-args.js';
import type { EngineTargetSession } from '../node/migration/engine.js';
import { prepareTarget } from '../migration/index.js';
import { socketChannel } from './socket-channel.js';

type Command = { op: 'prepare'; config: QemuVmConfig; runDir: string } | { op: 'loaded' } | { op: 'abort' };

const [host, portText] = process.argv.slice(2);
if (host === undefined || portText === undefined || process.send === undefined) {
  process.stderr.write('usage: migration-target HOST PORT (with an IPC channel)\n');
  process.exit(2);
}
const send = (m: object): void => void process.send?.(m);
const logger = pino({ level: process.env.NOVACRON_BENCH_LOG ?? 'silent' });
let driver: QemuDriver | null = null;
let session: EngineTargetSession | null = null;
let vmId: string | null = null;

const server = createServer({ allowHalfOpen: true }, (conn) => {
  if (session === null) conn.destroy();
  else void session.acceptChannel('ram', socketChannel(conn)).catch(() => undefined);
});

process.on('message', (m: Command) => {
  void (async () => {
    try {
      if (m.op === 'prepare') {
        driver ??= new QemuDriver({ runDir: m.runDir, qemuBinary: 'qemu-system-x86_64', accel: 'tcg', logger });
        vmId = m.config.id;
        await driver.startIncoming(m.config);
        session = await prepareTarget({ migrationId: 'bench', qmp: await driver.qmp(vmId), disks: [], workDir: join(m.runDir, 'wt'), postcopy: false, logger, nowMs: Date.now });
        send({ op: 'ready' });
      } else if (m.op === 'loaded') {
        if (session === null) throw new Error('no session');
        await session.loaded();
        send({ op: 'loaded' });
      } else {
        await session?.abort('bench run over').catch(() => undefined);
        session = null;
        if (driver !== null && vmId !== null) await driver.delete(vmId).catch(() => undefined);
        send({ op: 'aborted' });
      }
    } catch (err) {
      send({ op: 'error', error: err instanceof Error ? err.message : String(err) });
    }
  })();
});
process.on('disconnect', () => {
  void (async () => {
    if (driver !== null) for (const v of driver.list()) await driver.delete(v).catch(() => undefined);
    process.exit(0);
  })();
});
server.listen(Number(portText), host, () => send({ op: 'listening' }));
