// Proves the protocol layer over two real in-process libp2p nodes: length-prefixed messages above the maximum are
// refused (typed error, stream reset) in both directions, every request has a deadline (typed timeout), remote errors
// and validation failures are typed, and bulk streams record bytes moved into the link model.
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { memory } from '@libp2p/memory';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Mesh,
  MeshInvalidMessageError,
  MeshMessageTooLargeError,
  MeshRemoteError,
  MeshStreamRefusedError,
  MeshTimeoutError,
  MessageChannel,
  silentLogger,
  type MeshConfig,
} from '../../mesh/index.js';
import { removeTempDirs, tempDir } from '../support/tmp.js';

afterAll(removeTempDirs);

let a: Mesh;
let b: Mesh;
const echo = '/novacron/test-echo/1.0.0';
const silent = '/novacron/test-silent/1.0.0';
const small = '/novacron/test-small/1.0.0';
const bulk = '/novacron/test-bulk/1.0.0';
const smallLimitBytes = 1024;
let serverSawTooLarge: unknown;

async function make(members: string[] = []): Promise<Mesh> {
  const dir = tempDir('nc-frame-');
  const config: MeshConfig = {
    listen: [`/memory/${randomUUID()}`], announce: [], bootstrap: [], mdns: false, members, telemetryIntervalMs: 60_000, telemetryTtlMs: 0, maxConnections: 16,
    relay: { enabled: false, reserve: false, maxReservations: 1, reservationTtlMs: 60_000, dataLimitBytes: 1 << 20, durationLimitMs: 60_000 },
  };
  const m = await Mesh.create({ config, identityDir: join(dir, 'identity'), dataDir: dir, nodeName: 'x', version: 't', logger: silentLogger, transports: [memory()] });
  await m.start();
  return m;
}

beforeAll(async () => {
  a = await make();
  b = await make([a.peerId]);
  a.setMemberProvider({ isMember: (p) => p === b.peerId });
  await a.libp2p.dial(b.libp2p.getMultiaddrs()[0]!);
  await b.protocols.handleRequest<{ say: string; size?: number; fail?: boolean }, { said: string }>(
    echo,
    async (req) => {
      if (req.fail === true) throw Object.assign(new Error('told to fail'), { code: 'test_failure' });
      return { said: req.size === undefined ? req.say : 'x'.repeat(req.size) };
    },
    { validate: (v) => v as { say: string; size?: number; fail?: boolean } },
  );
  await b.protocols.handleStream(silent, async (stream) => {
    await new Promise((r) => setTimeout(r, 5000));
    stream.abort(new Error('done waiting'));
  });
  await b.protocols.handleStream(small, async (stream) => {
    const ch = new MessageChannel(stream, smallLimitBytes);
    try {
      await ch.receive(AbortSignal.timeout(5000));
    } catch (err) {
      serverSawTooLarge = err;
    }
  });
  await b.protocols.handleBulk(bulk, async (s) => {
    for await (const chunk of s.read()) void chunk;
    await s.closeWrite();
  });
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

const validateSaid = (v: unknown): { said: string } => {
  if (typeof (v as { said?: unknown }).said !== 'string') throw new Error('no said');
  return v as { said: string };
};

describe('protocol layer', () => {
  it('answers a request', async () => {
    expect(await a.protocols.request(b.peerId, echo, { say: 'hi' }, { validate: validateSaid })).toEqual({ said: 'hi' });
  });

  it('refuses to send a message above the maximum and resets the stream', async () => {
    const huge = { say: 'x'.repeat(a.protocols.maxBytes + 1) };
    await expect(a.protocols.request(b.peerId, echo, huge, { validate: validateSaid })).rejects.toBeInstanceOf(MeshMessageTooLargeError);
  });

  it('resets a stream whose incoming message exceeds the receiver maximum', async () => {
    const stream = await a.protocols.openStream(b.peerId, small, AbortSignal.timeout(5000));
    const ch = new MessageChannel(stream);
    await ch.send(new Uint8Array(smallLimitBytes + 1), AbortSignal.timeout(5000));
    await expect(ch.receive(AbortSignal.timeout(5000))).rejects.toBeInstanceOf(MeshStreamRefusedError);
    expect(serverSawTooLarge).toBeInstanceOf(MeshMessageTooLargeError);
  });

  it('an oversize answer never reaches the requester', async () => {
    const r = a.protocols.request(b.peerId, echo, { say: '', size: b.protocols.maxBytes + 10 }, { validate: validateSaid });
    await expect(r).rejects.toBeInstanceOf(MeshStreamRefusedError);
  });

  it('times out a request with no answer', async () => {
    const started = Date.now();
    await expect(a.protocols.request(b.peerId, silent, {}, { validate: validateSaid, timeoutMs: 300 })).rejects.toBeInstanceOf(MeshTimeoutError);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('types remote errors and failed validation', async () => {
    const failed = await a.protocols.request(b.peerId, echo, { say: 'x', fail: true }, { validate: validateSaid }).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(MeshRemoteError);
    expect((failed as MeshRemoteError).details).toMatchObject({ remoteCode: 'test_failure' });
    const invalid = a.protocols.request(b.peerId, echo, { say: 'x' }, { validate: () => { throw new Error('nope'); } });
    await expect(invalid).rejects.toBeInstanceOf(MeshInvalidMessageError);
  });

  it('records bulk stream bytes in the link model', async () => {
    const s = await a.protocols.openBulk(b.peerId, bulk);
    const chunk = new Uint8Array(64 * 1024);
    for (let i = 0; i < 64; i++) await s.write(chunk);
    await s.closeWrite();
    for await (const c of s.read()) void c;
    const link = a.linkTo(b.peerId);
    expect(link?.totalBytes).toBe(64 * chunk.byteLength);
    expect(link?.throughputBytesPerSec).toBeGreaterThan(0);
  });
});
