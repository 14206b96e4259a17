// Proves the tunnel carries bytes both ways between real unix sockets through the codec (compressing what compresses), half-closes in order, and that a cut channel closes the local socket at once (QEMU's stream framing and NBD then see the truncation).
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, expect, it } from 'vitest';
import { Tunnel, TunnelListener } from '../../migration/tunnel.js';
import { channelPair } from '../support/channel-pair.js';
import type { ByteChannel } from '../../node/migration/protocol.js';
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

it('`sent` settles only once the local side ended and every byte and the end frame are on the channel; a cut channel rejects it', async () => {
  // The source commits a move only after this: QEMU "completed" means written to the socket, not delivered.
  const pair = channelPair();
  const ac = new AbortController();
  let tunnel: Tunnel | null = null;
  const listener = await TunnelListener.listen(join(dir, 'sent.sock'), (s) => (tunnel = new Tunnel(s, pair.a, { compression: 'off', logger, label: 'sent' }, ac.signal)), logger);
  const payload = randomBytes(12 * 1024 * 1024); // more than the channel buffers: the writer waits on the reader
  const client = connect({ path: listener.path, allowHalfOpen: true });
  await new Promise((r) => client.once('connect', r));
  let sentAt: number | null = null;
  client.end(payload);
  while (tunnel === null) await new Promise((r) => setTimeout(r, 5));
  const t = tunnel as Tunnel;
  void t.sent.then(() => (sentAt = pair.bytes().aToB));
  // The far end reads slowly; until it took enough for the tail to fit the buffer, `sent` must not have settled.
  const reader = pair.b.read();
  let readBytes = 0;
  let settledEarly = false;
  for (;;) {
    const r = await reader.next();
    if (r.done === true) break;
    readBytes += r.value.byteLength;
    if (sentAt !== null && readBytes < 4 * 1024 * 1024) settledEarly = true;
    await new Promise((res) => setTimeout(res, 1));
  }
  expect(settledEarly).toBe(false);
  // Everything was on the channel when it settled: 12 MiB of raw frames and the end frame.
  expect(sentAt).toBe(pair.bytes().aToB);
  expect(readBytes).toBe(pair.bytes().aToB);
  expect(t.stats().rawBytes).toBe(payload.length);
  client.destroy();
  ac.abort(new Error('test over')); // the inbound direction still waits on the far end
  await t.done;
  await listener.close();

  // A channel cut before the local side ended: `sent` rejects.
  const cut = channelPair();
  let cutTunnel: Tunnel | null = null;
  const l2 = await TunnelListener.listen(join(dir, 'cut.sock'), (s) => (cutTunnel = new Tunnel(s, cut.a, { compression: 'off', logger, label: 'cut' }, new AbortController().signal)), logger);
  const c2 = connect({ path: l2.path, allowHalfOpen: true });
  await new Promise((r) => c2.once('connect', r));
  c2.write(randomBytes(1024 * 1024));
  while (cutTunnel === null) await new Promise((r) => setTimeout(r, 5));
  cut.b.abort(new Error('peer gone'));
  await expect((cutTunnel as Tunnel).sent).rejects.toThrow();
  await (cutTunnel as Tunnel).done;
  c2.destroy();
  await l2.close();
});

/** Carries 10 MiB of random data near → far; the far "QEMU" takes at most `farBytesPerSec`, the link `linkBytesPerSec` (Infinity: the in-memory pipe's pace). */
async function ackedTransfer(name: string, farBytesPerSec: number, linkBytesPerSec: number): Promise<{ near: Tunnel; far: Tunnel }> {
  const farPath = join(dir, `${name}-far.sock`);
  let farGot = 0;
  const far = createServer({ allowHalfOpen: true }, (s) => {
    s.on('data', (d: Buffer) => {
      farGot += d.byteLength;
      s.pause();
      setTimeout(() => s.resume(), Math.max(1, (d.byteLength / farBytesPerSec) * 1000));
    });
    s.on('end', () => s.end());
  });
  await new Promise<void>((r) => far.listen(farPath, r));
  const pair = channelPair();
  // The link: the far end's reads come at most at linkBytesPerSec (the pipe's 4 MiB buffer queues the rest).
  const paced: ByteChannel = linkBytesPerSec === Infinity ? pair.b : {
    ...pair.b,
    read: async function* () {
      for await (const chunk of pair.b.read()) {
        await new Promise((r) => setTimeout(r, (chunk.byteLength / linkBytesPerSec) * 1000));
        yield chunk;
      }
    },
  };
  const ac = new AbortController();
  const farSocket = connect({ path: farPath, allowHalfOpen: true });
  await new Promise((r) => farSocket.once('connect', r));
  const farTunnel = new Tunnel(farSocket, paced, { compression: 'adaptive', logger, label: `${name}-far` }, ac.signal);
  let nearTunnel: Tunnel | null = null;
  const listener = await TunnelListener.listen(join(dir, `${name}-near.sock`), (s) => (nearTunnel = new Tunnel(s, pair.a, { compression: 'off', logger, label: `${name}-near` }, ac.signal)), logger);
  const payload = randomBytes(10 * 1024 * 1024);
  const client = connect({ path: listener.path, allowHalfOpen: true });
  await new Promise((r) => client.once('connect', r));
  client.on('data', () => undefined);
  client.end(payload);
  await new Promise((r) => client.once('close', r));
  const near = nearTunnel as Tunnel | null;
  if (near === null) throw new Error('no near tunnel');
  await Promise.all([near.done, farTunnel.done]);
  await listener.close();
  far.close();
  expect(farGot).toBe(payload.length);
  return { near, far: farTunnel };
}

it("the receiving end acks what it took and how long it waited; the sender's link estimate comes from those acks", async () => {
  // A 25 MB/s link to a fast reader: the acks (not the 4 MiB channel buffer, which took the first megabytes at
  // memory speed) give the link's rate.
  const slowLink = await ackedTransfer('ack-link', 1e9, 25e6);
  expect(slowLink.far.stats().acksSent).toBeGreaterThan(5);
  expect(slowLink.near.decoder.stats().acks).toBeGreaterThan(5);
  const estimate = slowLink.near.stats().wireThroughputBytesPerSec ?? 0;
  expect(estimate).toBeGreaterThan(12e6);
  expect(estimate).toBeLessThan(50e6);
  // A fast link to a reader that takes 20 MB/s: the bytes pile up just the same, but the receiver never waited for
  // them, so the link is not measured at the reader's pace: it stays unknown (its rate was never what held us back).
  const slowReader = await ackedTransfer('ack-reader', 20e6, Infinity);
  expect(slowReader.near.decoder.stats().acks).toBeGreaterThan(5);
  expect(slowReader.near.stats().wireThroughputBytesPerSec).toBeNull();
});
