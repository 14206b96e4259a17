// Proves the tunnel carries bytes both ways between real unix sockets through the codec (compressing what compresses), half-closes in order, and that a cut channel closes the local socket at once (QEMU's stream framing and NBD then see the truncation).
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, expect, it } from 'vitest';
import { Tunnel, TunnelListener } from '../../migration/tunnel.js';
import { channelPair } from '../support/channel-pair.js';
import { randomBytes } from 'node:crypto';

const logger = pino({ level: process.env.NOVACRON_TEST_LOG ?? 'silent' });
const dir = mkdtempSync(join(tmpdir(), 'nc-tun-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function readAll(s: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('error', reject);
  });
}

it('carries both directions through the codec and half-closes', async () => {
  // Far end: a local "QEMU" that echoes what it receives reversed once its input ends.
  const farPath = join(dir, 'far.sock');
  const far = createServer({ allowHalfOpen: true }, (s) => {
    void readAll(s).then((b) => s.end(Buffer.from(b).reverse()));
  });
  await new Promise<void>((r) => far.listen(farPath, r));
  const pair = channelPair();
  const ac = new AbortController();
  let farTunnel: Tunnel | null = null;
  const farSocket = connect({ path: farPath, allowHalfOpen: true });
  await new Promise((r) => farSocket.once('connect', r));
  farTunnel = new Tunnel(farSocket, pair.b, { compression: 'adaptive', logger, label: 'far' }, ac.signal);
  let nearTunnel: Tunnel | null = null;
  const listener = await TunnelListener.listen(join(dir, 'near.sock'), (s) => (nearTunnel = new Tunnel(s, pair.a, { compression: 3, logger, label: 'near' }, ac.signal)), logger);
  // Half text (compresses), half random (does not), and a zero run.
  const payload = Buffer.concat([Buffer.from('the quick brown fox '.repeat(50_000)), randomBytes(1_000_000), Buffer.alloc(500_000)]);
  const client = connect({ path: listener.path, allowHalfOpen: true });
  await new Promise((r) => client.once('connect', r));
  const answer = readAll(client);
  client.end(payload);
  const got = await answer;
  const want = Buffer.from(payload).reverse();
  let d = 0;
  while (d < got.length && got[d] === want[d]) d++;
  expect([got.length, d]).toEqual([want.length, want.length]);
  await Promise.all([(nearTunnel as Tunnel | null)?.done, farTunnel.done]);
  const stats = (nearTunnel as Tunnel | null)?.stats();
  expect(stats?.rawBytes).toBe(payload.length);
  expect(stats?.frames.zero).toBeGreaterThan(0);
  expect(stats?.frames.zstd).toBeGreaterThan(0);
  expect(pair.bytes().aToB).toBeLessThan(payload.length * 0.6);
  await listener.close();
  far.close();
});

it('closes the local socket when the channel is cut, even while the local side still sends', async () => {
  const pair = channelPair();
  const ac = new AbortController();
  let tunnel: Tunnel | null = null;
  const listener = await TunnelListener.listen(join(dir, 'cut.sock'), (s) => (tunnel = new Tunnel(s, pair.a, { compression: 'off', logger, label: 'cut' }, ac.signal)), logger);
  const client = connect({ path: listener.path, allowHalfOpen: true });
  await new Promise((r) => client.once('connect', r));
  const closed = new Promise<void>((r) => client.once('end', () => r()));
  client.on('error', () => undefined);
  client.write('hello');
  await new Promise((r) => setTimeout(r, 50));
  pair.b.abort(new Error('link lost'));
  await closed;
  await (tunnel as Tunnel | null)?.done;
  expect(client.readableEnded).toBe(true);
  client.destroy();
  await listener.close();
});
