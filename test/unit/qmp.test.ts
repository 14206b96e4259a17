// Proves the QMP client against a fake QMP server on a unix socket: greeting and capability negotiation, replies matched by id out of order, events, per-command timeouts, disconnect mid-command, oversize lines and the pending bound.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  QmpClient,
  QmpCommandError,
  QmpDisconnectedError,
  QmpOverloadedError,
  QmpTimeoutError,
  lineBytesMax,
  pendingCommandsMax,
  type QmpEvent,
} from '../../node/hypervisor/qmp.js';

interface Request {
  execute: string;
  arguments?: Record<string, unknown>;
  id: string;
}

const greeting = { QMP: { version: { qemu: { major: 10, minor: 0, micro: 2 }, package: 'fake' }, capabilities: ['oob'] } };

/** A fake QEMU monitor: greets, accepts qmp_capabilities, and hands every other command to `handle`. */
class FakeQmp {
  readonly server: Server;
  socket: Socket | null = null;
  negotiated = false;
  received: Request[] = [];
  handle: (req: Request, reply: (msg: unknown) => void) => void = () => undefined;
  sendGreeting: unknown = greeting;

  constructor(readonly path: string) {
    this.server = createServer((socket) => {
      this.socket = socket;
      socket.write(`${JSON.stringify(this.sendGreeting)}\n`);
      let buf = '';
      socket.setEncoding('utf8');
      socket.on('data', (d: string) => {
        buf += d;
        for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
          const req = JSON.parse(buf.slice(0, nl)) as Request;
          buf = buf.slice(nl + 1);
          this.received.push(req);
          const reply = (msg: unknown): void => void socket.write(`${JSON.stringify(msg)}\n`);
          if (req.execute === 'qmp_capabilities') {
            this.negotiated = true;
            reply({ return: {}, id: req.id });
          } else this.handle(req, reply);
        }
      });
      socket.on('error', () => undefined);
    });
  }

  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.path, r));
  }

  close(): Promise<void> {
    this.socket?.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

describe('QMP client', () => {
  let dir: string;
  let fake: FakeQmp;
  const clients: QmpClient[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'nc-qmp-'));
    fake = new FakeQmp(join(dir, 'qmp.sock'));
    await fake.listen();
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await fake.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function connect(): Promise<QmpClient> {
    const c = await QmpClient.connect(fake.path, { timeoutMs: 2_000 });
    clients.push(c);
    return c;
  }

  it('reads the greeting and negotiates capabilities before anything else', async () => {
    const c = await connect();
    expect(c.greeting.version.qemu).toEqual({ major: 10, minor: 0, micro: 2 });
    expect(c.greeting.capabilities).toEqual(['oob']);
    expect(fake.negotiated).toBe(true);
    expect(fake.received[0]?.execute).toBe('qmp_capabilities');
  });

  it('refuses a peer that does not greet with QMP', async () => {
    fake.sendGreeting = { hello: 'world' };
    await expect(QmpClient.connect(fake.path, { timeoutMs: 1_000 })).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('matches replies to commands by id when they arrive out of order, and carries arguments', async () => {
    const c = await connect();
    const held: [Request, (m: unknown) => void][] = [];
    fake.handle = (req, reply) => {
      held.push([req, reply]);
      if (held.length === 3) for (const [r, send] of held.reverse()) send({ return: { echo: r.execute, args: r.arguments ?? null }, id: r.id });
    };
    const [a, b, d] = await Promise.all([
      c.execute('query-a'),
      c.execute('query-b', { x: 1 }),
      c.execute('query-c'),
    ]);
    expect(a).toEqual({ echo: 'query-a', args: null });
    expect(b).toEqual({ echo: 'query-b', args: { x: 1 } });
    expect(d).toEqual({ echo: 'query-c', args: null });
    expect(new Set(fake.received.map((r) => r.id)).size).toBe(fake.received.length);
  });

  it("raises QEMU's error class and description as QmpCommandError", async () => {
    const c = await connect();
    fake.handle = (req, reply) => reply({ error: { class: 'CommandNotFound', desc: 'The command nope has not been found' }, id: req.id });
    const err = await c.execute('nope').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toMatchObject({ code: 'qmp_command_failed', errorClass: 'CommandNotFound', desc: 'The command nope has not been found' });
  });

  it('delivers async events to listeners, interleaved with replies', async () => {
    const c = await connect();
    const events: QmpEvent[] = [];
    const off = c.onEvent((e) => events.push(e));
    fake.handle = (req, reply) => {
      reply({ event: 'STOP', timestamp: { seconds: 1, microseconds: 2 } });
      reply({ return: {}, id: req.id });
      reply({ event: 'SHUTDOWN', data: { guest: true, reason: 'guest-shutdown' }, timestamp: { seconds: 3, microseconds: 4 } });
    };
    await c.execute('stop');
    await new Promise((r) => setTimeout(r, 50));
    expect(events.map((e) => e.event)).toEqual(['STOP', 'SHUTDOWN']);
    expect(events[1]?.data).toEqual({ guest: true, reason: 'guest-shutdown' });
    off();
    fake.handle = (req, reply) => {
      reply({ event: 'RESUME', timestamp: { seconds: 5, microseconds: 0 } });
      reply({ return: {}, id: req.id });
    };
    await c.execute('cont');
    await new Promise((r) => setTimeout(r, 50));
    expect(events).toHaveLength(2);
  });

  it('times a command out on its own deadline and ignores the late reply', async () => {
    const c = await connect();
    let late: ((m: unknown) => void) | null = null;
    let lateId = '';
    fake.handle = (req, reply) => {
      if (req.execute === 'slow') {
        late = reply;
        lateId = req.id;
      } else reply({ return: 'fast', id: req.id });
    };
    const started = Date.now();
    const err = await c.execute('slow', undefined, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err).toMatchObject({ code: 'qmp_timeout' });
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(c.pendingCount).toBe(0);
    (late as ((m: unknown) => void) | null)?.({ return: 'too late', id: lateId });
    expect(await c.execute('quick')).toBe('fast');
  });

  it('fails pending commands with QmpDisconnectedError when QEMU goes away mid-command', async () => {
    const c = await connect();
    const closed: Error[] = [];
    c.onClose((e) => closed.push(e));
    fake.handle = () => fake.socket?.destroy();
    const err = await c.execute('query-status', undefined, { timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(err).toMatchObject({ code: 'qmp_disconnected' });
    expect(c.closed).toBe(true);
    expect(closed).toHaveLength(1);
    await expect(c.execute('query-status')).rejects.toBeInstanceOf(QmpDisconnectedError);
  });

  it('drops the connection on a line longer than lineBytesMax instead of buffering it', async () => {
    const c = await connect();
    fake.handle = () => {
      // No newline ever: the client must give up at the bound.
      const chunk = 'x'.repeat(64 * 1024);
      for (let sent = 0; sent <= lineBytesMax; sent += chunk.length) fake.socket?.write(chunk);
    };
    const err = await c.execute('query-blockstats', undefined, { timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(String((err as Error).message)).toMatch(/exceeds/);
  });

  it('bounds the commands in flight with pendingCommandsMax', async () => {
    const c = await connect();
    fake.handle = () => undefined; // never answers
    const inFlight = Array.from({ length: pendingCommandsMax }, () => c.execute('hang', undefined, { timeoutMs: 5_000 }).catch((e: unknown) => e));
    await expect(c.execute('one-more')).rejects.toBeInstanceOf(QmpOverloadedError);
    c.close();
    const results = await Promise.all(inFlight);
    expect(results.every((e) => e instanceof QmpDisconnectedError)).toBe(true);
  });

  it('times out the connect when no greeting comes', async () => {
    const silent = createServer(() => undefined);
    const path = join(dir, 'silent.sock');
    await new Promise<void>((r) => silent.listen(path, r));
    try {
      await expect(QmpClient.connect(path, { timeoutMs: 150 })).rejects.toBeInstanceOf(QmpTimeoutError);
    } finally {
      silent.close();
    }
  });
});
