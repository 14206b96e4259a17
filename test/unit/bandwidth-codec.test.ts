// Proves the framed codec with real zstd on its worker threads: any data cut any way round-trips exactly, encoders at once keep their own streams, zero chunks go as headers, a level's stream matches against what it sent before, malformed, out-of-order or truncated streams are refused, acks ride between data frames (checked, never yielded as data) and an idle or held encoder still sends them, bytes in flight are held to the link's bound once acks come (and let go on a silent or ended peer), and over a throttled link the encoder's passive link estimate tracks the throttle and it compresses.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BandwidthError, FrameDecoder, FrameEncoder, compressThreadsMax, decodeHeader, encodeAck, encodeFrame, encodeHeader, frameRawBytesMax, rechunk, type Ack } from '../../bandwidth/index.js';

async function* from(parts: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield p;
}

/** Encodes `parts` and returns the frames written, each as written. */
async function encode(parts: Uint8Array[], enc = new FrameEncoder({ compression: 'adaptive' })): Promise<{ frames: Uint8Array[]; enc: FrameEncoder }> {
  const frames: Uint8Array[] = [];
  await enc.pump(from(parts), async (f) => void frames.push(f));
  return { frames, enc };
}

async function decodeAll(frames: Uint8Array[]): Promise<Buffer> {
  const out: Uint8Array[] = [];
  for await (const b of new FrameDecoder().decode(from(frames))) out.push(b);
  return Buffer.concat(out);
}

/** Re-cuts a byte stream at arbitrary points, as a network would. */
function recut(frames: Uint8Array[], cuts: number[]): Uint8Array[] {
  const all = Buffer.concat(frames);
  const out: Uint8Array[] = [];
  let at = 0;
  for (const c of cuts) {
    const n = Math.min(c, all.length - at);
    if (n <= 0) break;
    out.push(all.subarray(at, at + n));
    at += n;
  }
  if (at < all.length) out.push(all.subarray(at));
  return out;
}

const text = Buffer.from('the quick brown fox jumps over the lazy dog; NovaCron migrates VMs between edges. '.repeat(20_000));
const binary = readFileSync(process.execPath).subarray(0, 2 * 1024 * 1024);

describe('FrameEncoder / FrameDecoder', () => {
  it('round-trips mixed data cut any way, in every compression mode', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.constant('zero'), fc.constant('text'), fc.constant('bin'), fc.constant('rand')), { minLength: 1, maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 300_000 }), { maxLength: 20 }),
        fc.oneof(fc.constant<'adaptive'>('adaptive'), fc.constant<'off'>('off'), fc.integer({ min: 1, max: 9 })),
        async (kinds, cuts, compression) => {
          const parts = kinds.map((k, i) => {
            const n = 50_000 + i * 37_001;
            if (k === 'zero') return new Uint8Array(n);
            if (k === 'text') return text.subarray(i * 1000, i * 1000 + n);
            if (k === 'bin') return binary.subarray(i * 1000, i * 1000 + n);
            return randomBytes(n);
          });
          const { frames } = await encode(recut(parts, cuts), new FrameEncoder({ compression }));
          const back = await decodeAll(recut(frames, [...cuts].reverse()));
          expect(back.equals(Buffer.concat(parts))).toBe(true);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('sends zero chunks as headers, text compressed, random at its size, and raw when off', async () => {
    const parts = [new Uint8Array(1024 * 1024), text.subarray(0, 1024 * 1024), randomBytes(1024 * 1024)];
    const { enc, frames } = await encode(parts);
    const s = enc.stats();
    expect(s.frames).toEqual({ zero: 4, zstd: 8, raw: 0 });
    expect(s.rawBytes).toBe(3 * 1024 * 1024);
    // Zeros cost 12 bytes a chunk, text compresses many times, random costs zstd a few bytes per 128 KiB block.
    expect(s.wireBytes).toBeLessThan(1024 * 1024 + 200 * 1024);
    expect(s.ratio).toBeGreaterThan(2.5);
    expect(Buffer.concat(frames).length).toBe(s.wireBytes);
    const off = (await encode(parts, new FrameEncoder({ compression: 'off' }))).enc.stats();
    expect(off.frames).toEqual({ zero: 4, zstd: 0, raw: 8 });
  });

  it('matches a chunk against what its level sent megabytes before (one stream per level, not chunk by chunk)', async () => {
    // 4 MiB of random data, 16 MiB of other random data, the first 4 MiB again: only the history can find it.
    const first = randomBytes(4 * 1024 * 1024);
    const parts = [first, randomBytes(16 * 1024 * 1024), first];
    const { enc, frames } = await encode(parts, new FrameEncoder({ compression: 3 }));
    const s = enc.stats();
    expect(s.wireBytes).toBeLessThan(20.5 * 1024 * 1024);
    expect((await decodeAll(frames)).equals(Buffer.concat(parts))).toBe(true);
  });

  it('refuses a stream whose zstd frames come out of order or from too many levels', async () => {
    const { frames } = await encode([text.subarray(0, 1024 * 1024)], new FrameEncoder({ compression: 3 }));
    // The second piece of a level's stream without the first cannot be decoded.
    await expect(decodeAll(frames.slice(1))).rejects.toMatchObject({ code: 'bandwidth_frame_invalid' });
    const firsts: Uint8Array[] = [];
    for (let level = 1; level <= 9; level++) {
      firsts.push((await encode([text.subarray(0, 1000)], new FrameEncoder({ compression: level }))).frames[0]!);
    }
    const end = encodeFrame({ kind: 'end', level: 0, rawBytes: 0 }, null);
    await expect(decodeAll([...firsts.slice(0, 8), end])).resolves.toHaveLength(8000);
    await expect(decodeAll([...firsts, end])).rejects.toMatchObject({ code: 'bandwidth_frame_invalid' });
  });

  it('refuses malformed frames and truncated streams with typed errors', async () => {
    const good = encodeFrame({ kind: 'raw', level: 0, rawBytes: 3 }, new Uint8Array([1, 2, 3]));
    const end = encodeFrame({ kind: 'end', level: 0, rawBytes: 0 }, null);
    const cases: Array<[string, Uint8Array[], string]> = [
      ['bad magic', [Uint8Array.from([0x00, ...good.subarray(1)]), end], 'bandwidth_frame_invalid'],
      ['unknown kind', [Uint8Array.from([...good.subarray(0, 2), 9, ...good.subarray(3)]), end], 'bandwidth_frame_invalid'],
      ['oversized', [encodeHeader({ kind: 'raw', level: 0, rawBytes: frameRawBytesMax + 1, payloadBytes: frameRawBytesMax + 1 })], 'bandwidth_frame_invalid'],
      ['raw length mismatch', [encodeHeader({ kind: 'raw', level: 0, rawBytes: 10, payloadBytes: 3 }), new Uint8Array(3), end], 'bandwidth_frame_invalid'],
      ['zstd garbage', [encodeHeader({ kind: 'zstd', level: 3, rawBytes: 100, payloadBytes: 5 }), new Uint8Array(5), end], 'bandwidth_frame_invalid'],
      ['no end frame', [good], 'bandwidth_stream_truncated'],
      ['cut inside a frame', [good.subarray(0, 14)], 'bandwidth_stream_truncated'],
      ['bytes after the end', [good, end, good], 'bandwidth_frame_invalid'],
    ];
    for (const [what, frames, code] of cases) {
      const err = await decodeAll(frames).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err, what).toBeInstanceOf(BandwidthError);
      expect((err as BandwidthError).code, what).toBe(code);
    }
  });

  it('hands acks between data frames to onAck, not to the data; refuses acks that go backwards or carry nonsense', async () => {
    const data = encodeFrame({ kind: 'raw', level: 0, rawBytes: 3 }, new Uint8Array([1, 2, 3]));
    const end = encodeFrame({ kind: 'end', level: 0, rawBytes: 0 }, null);
    const acks: Ack[] = [];
    const dec = new FrameDecoder({ onAck: (a) => acks.push(a) });
    const out: Uint8Array[] = [];
    const stream = [encodeAck({ wireBytes: 0, atMs: 5, idleMs: 3 }), data, encodeAck({ wireBytes: 40_000, atMs: 25.5, idleMs: 3 }), data, end];
    for await (const b of dec.decode(from(recut(stream, [5, 7, 13, 1, 30])))) out.push(b);
    expect(Buffer.concat(out)).toEqual(Buffer.from([1, 2, 3, 1, 2, 3]));
    expect(acks).toEqual([
      { wireBytes: 0, atMs: 5, idleMs: 3 },
      { wireBytes: 40_000, atMs: 25.5, idleMs: 3 },
    ]);
    expect(dec.stats()).toMatchObject({ frames: 3, acks: 2 });
    const bad = (wireBytes: number, atMs: number, idleMs = 0): Uint8Array => {
      const f = Buffer.from(encodeAck({ wireBytes: 0, atMs: 0, idleMs: 0 }));
      f.writeDoubleBE(wireBytes, 12);
      f.writeDoubleBE(atMs, 20);
      f.writeDoubleBE(idleMs, 28);
      return f;
    };
    for (const [what, frames] of [
      ['count goes back', [encodeAck({ wireBytes: 10, atMs: 1, idleMs: 0 }), encodeAck({ wireBytes: 9, atMs: 2, idleMs: 0 }), end]],
      ['clock goes back', [encodeAck({ wireBytes: 10, atMs: 2, idleMs: 0 }), encodeAck({ wireBytes: 11, atMs: 1, idleMs: 0 }), end]],
      ['idle time goes back', [encodeAck({ wireBytes: 10, atMs: 1, idleMs: 1 }), encodeAck({ wireBytes: 11, atMs: 2, idleMs: 0 }), end]],
      ['negative count', [bad(-1, 0), end]],
      ['fractional count', [bad(1.5, 0), end]],
      ['clock not a number', [bad(1, Number.NaN), end]],
      ['negative idle time', [bad(1, 0, -1), end]],
      ['idle time not a number', [bad(1, 0, Number.POSITIVE_INFINITY), end]],
      ['wrong payload size', [encodeHeader({ kind: 'ack', level: 0, rawBytes: 0, payloadBytes: 8 }), new Uint8Array(8), end]],
    ] as Array<[string, Uint8Array[]]>) {
      await expect(decodeAll(frames), what).rejects.toMatchObject({ code: 'bandwidth_frame_invalid' });
    }
  });

  it('an idle encoder still sends a posted ack; none before the pump runs or after its end frame', async () => {
    const enc = new FrameEncoder({ compression: 3 });
    enc.postAck({ wireBytes: 1, atMs: 1, idleMs: 0 }); // no pump yet: dropped
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    // A return path with nothing to say until released, then ends.
    const idle: AsyncIterable<Uint8Array> = {
      [Symbol.asyncIterator]: () => ({ next: async (): Promise<IteratorResult<Uint8Array>> => (await gate, { done: true, value: undefined }) }),
    };
    const kinds: string[] = [];
    const written: Uint8Array[] = [];
    const pump = enc.pump(idle, async (f) => {
      kinds.push(decodeHeader(f).kind);
      written.push(f);
    });
    await new Promise((r) => setTimeout(r, 5));
    enc.postAck({ wireBytes: 100, atMs: 10, idleMs: 3 });
    await new Promise((r) => setTimeout(r, 5));
    expect(kinds).toEqual(['ack']);
    release();
    await pump;
    enc.postAck({ wireBytes: 200, atMs: 20, idleMs: 3 });
    expect(kinds).toEqual(['ack', 'end']);
    const acks: Ack[] = [];
    for await (const b of new FrameDecoder({ onAck: (a) => acks.push(a) }).decode(from(written))) expect(b).toBeUndefined();
    expect(acks).toEqual([{ wireBytes: 100, atMs: 10, idleMs: 3 }]);
    expect(enc.stats()).toMatchObject({ acksSent: 1, wireBytes: written.reduce((n, f) => n + f.byteLength, 0) });
  });

  it('holds bytes in flight to the link estimate times round trip plus slack once acks come; lets go on acks, on a silent peer, and once the peer ended', async () => {
    const chunk = 64 * 1024;
    // 1 MB/s, 0.9 s round trip: bound = 1 MB/s × (900 + inFlightSlackMs) ms = 1 MB, above inFlightWindowMinBytes.
    const enc = new FrameEncoder({ compression: 'off', chunkBytes: chunk, linkHint: { throughputBytesPerSec: 1_000_000, rttMs: 900 } });
    expect(enc.inFlightWindowBytes()).toBe(Infinity); // no ack yet: no bound
    const data = randomBytes(4 * 1024 * 1024);
    let handed = 0;
    let release: () => void = () => undefined;
    const open = new Promise<void>((r) => (release = r));
    // The source: a first part, then the rest once released, so the first ack lands before the bound is needed.
    async function* source(): AsyncGenerator<Uint8Array> {
      yield data.subarray(0, chunk);
      await open;
      yield data.subarray(chunk);
    }
    const written: Uint8Array[] = [];
    const pump = enc.pump(source(), async (f) => {
      written.push(f);
      handed += f.byteLength;
    });
    await new Promise((r) => setTimeout(r, 20));
    enc.observeAck({ wireBytes: 0, atMs: 1, idleMs: 0 });
    expect(enc.inFlightWindowBytes()).toBe(1_000_000);
    release();
    await new Promise((r) => setTimeout(r, 100));
    // Held: at most the bound in flight (nothing acked yet), and well short of the 4 MiB.
    expect(handed).toBeLessThanOrEqual(1_000_000);
    expect(handed).toBeGreaterThan(1_000_000 - chunk - 64);
    expect(enc.stats().wireBytes).toBe(handed);
    // An ack of everything makes room for about another bound's worth.
    const before = handed;
    enc.observeAck({ wireBytes: handed, atMs: 2, idleMs: 1 });
    await new Promise((r) => setTimeout(r, 50));
    expect(handed - before).toBeGreaterThan(1_000_000 - chunk - 64);
    expect(handed - before).toBeLessThanOrEqual(1_000_000);
    // A peer that stays silent for ackSilenceMs does not stall the stream: the rest goes, in order.
    const silentFrom = handed;
    await new Promise((r) => setTimeout(r, 700));
    expect(handed).toBeGreaterThan(silentFrom);
    enc.peerEnded();
    expect(enc.inFlightWindowBytes()).toBe(Infinity);
    await pump;
    // Buffer.equals, not toEqual: a deep compare of 4 MiB byte by byte takes vitest seconds.
    expect((await decodeAll(written)).equals(data)).toBe(true);
    expect(enc.stats().heldForAcksMs).toBeGreaterThan(400);
  });

  it('a held sender still sends the acks of the other direction', async () => {
    const enc = new FrameEncoder({ compression: 'off', chunkBytes: 64 * 1024, linkHint: { throughputBytesPerSec: 1_000_000, rttMs: 900 } });
    const kinds: string[] = [];
    const pump = enc.pump(from([randomBytes(64 * 1024), randomBytes(2 * 1024 * 1024)]), async (f) => void kinds.push(decodeHeader(f).kind));
    enc.observeAck({ wireBytes: 0, atMs: 1, idleMs: 0 });
    await new Promise((r) => setTimeout(r, 50));
    const dataSoFar = kinds.length;
    enc.postAck({ wireBytes: 10, atMs: 5, idleMs: 1 });
    await new Promise((r) => setTimeout(r, 20));
    expect(kinds.length).toBe(dataSoFar + 1);
    expect(kinds.at(-1)).toBe('ack');
    enc.peerEnded();
    await pump;
  });

  it('a zstd frame that decodes to a different size than it claims is refused', async () => {
    const { frames } = await encode([text.subarray(0, 100_000)], new FrameEncoder({ compression: 3 }));
    const f = Buffer.from(frames[0]!);
    f.writeUInt32BE(99_999, 4); // claims one byte less
    await expect(decodeAll([f, ...frames.slice(1)])).rejects.toMatchObject({ code: 'bandwidth_frame_invalid' });
  });

  it('many encoders at once share the compressing threads, each with its own streams', async () => {
    const inputs = Array.from({ length: compressThreadsMax * 3 }, (_, i) => Buffer.concat([text.subarray(i * 7919, i * 7919 + 600_000), randomBytes(100_000), binary.subarray(i * 1000, i * 1000 + 400_000)]));
    const results = await Promise.all(inputs.map((b, i) => encode([b], new FrameEncoder({ compression: 1 + (i % 6) }))));
    for (const [i, r] of results.entries()) {
      expect(r.enc.stats().frames.zstd).toBeGreaterThan(0);
      expect((await decodeAll(r.frames)).equals(inputs[i]!)).toBe(true);
    }
  });

  it('a write that fails while the source is idle rejects the pump, not the process', async () => {
    async function* slow(): AsyncGenerator<Uint8Array> {
      yield text.subarray(0, 1000);
      await new Promise((r) => setTimeout(r, 50)); // the failed write waits unobserved meanwhile
      yield text.subarray(1000, 2000);
    }
    const enc = new FrameEncoder({ compression: 3 });
    await expect(enc.pump(slow(), () => Promise.reject(new Error('peer gone')))).rejects.toThrow('peer gone');
  });

  it('rechunk never holds bytes back while the source has nothing ready (request/response traffic)', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    async function* source(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(10);
      await gate; // a request waits for its answer: nothing more comes until the 10 bytes were delivered
      yield new Uint8Array(20);
    }
    const seen: number[] = [];
    for await (const c of rechunk(source(), 1024)) {
      seen.push(c.byteLength);
      release();
    }
    expect(seen).toEqual([10, 20]);
  });

  it('rechunk reads ahead of a slow consumer only as far as the bound it is given at that moment', async () => {
    const pieceBytes = 16 * 1024;
    let pulled = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < 256; i++) {
        pulled += pieceBytes;
        yield new Uint8Array(pieceBytes).fill(i);
      }
    }
    let bound = 64 * 1024;
    let consumed = 0;
    let worstAheadBytes = 0;
    let worstWhileSmallBytes = 0;
    const out: number[] = [];
    for await (const c of rechunk(source(), 32 * 1024, () => bound)) {
      out.push(c[0] ?? -1);
      consumed += c.byteLength;
      await new Promise((r) => setTimeout(r, 2)); // the consumer (compressor, link) is the slow end
      worstAheadBytes = Math.max(worstAheadBytes, pulled - consumed);
      if (bound === 64 * 1024) worstWhileSmallBytes = Math.max(worstWhileSmallBytes, pulled - consumed);
      if (consumed === 1024 * 1024) bound = 256 * 1024; // the transfer got faster: the bound grows with it
    }
    expect(consumed).toBe(256 * pieceBytes);
    // Each chunk holds two pieces in order: nothing lost or reordered.
    expect(out).toEqual(Array.from({ length: 128 }, (_, i) => 2 * i));
    // Ahead by at most the bound plus the piece being read when it was reached.
    expect(worstWhileSmallBytes).toBeLessThanOrEqual(64 * 1024 + pieceBytes);
    expect(worstAheadBytes).toBeLessThanOrEqual(256 * 1024 + pieceBytes);
    expect(worstAheadBytes).toBeGreaterThan(64 * 1024 + pieceBytes);
  });
});

describe('over a throttled link', () => {
  // A link of fixed rate with a small buffer, in real time. Not a loopback socket: its kernel buffers (megabytes,
  // autotuned) absorb most of a short transfer without back-pressure, which made the estimate depend on host load.
  // The real link is measured by bench:migration over tc tbf.
  it('the passive link estimate tracks a 4 MB/s link and the controller compresses', async () => {
    const readerBytesPerSec = 4_000_000;
    const linkBufferBytes = 256 * 1024;
    const received: Uint8Array[] = [];
    let queuedBytes = 0;
    let drainedAt = performance.now();
    const write = async (f: Uint8Array): Promise<void> => {
      const now = performance.now();
      queuedBytes = Math.max(0, queuedBytes - ((now - drainedAt) / 1000) * readerBytesPerSec);
      drainedAt = now;
      queuedBytes += f.byteLength;
      received.push(f.slice());
      const excess = queuedBytes - linkBufferBytes;
      if (excess > 0) await new Promise((r) => setTimeout(r, (excess / readerBytesPerSec) * 1000));
    };
    // Binary-like data: compressible ~2-3x, 24 MB raw.
    const parts = Array.from({ length: 12 }, () => binary);
    const enc = new FrameEncoder({ compression: 'adaptive' });
    await enc.pump(from(parts), write);
    const s = enc.stats();
    console.log(`[bandwidth] 4 MB/s reader: link estimate ${((s.wireThroughputBytesPerSec ?? 0) / 1e6).toFixed(2)} MB/s, level ${s.level}, ratio ${s.ratio.toFixed(2)}, raw ${((s.rawThroughputBytesPerSec ?? 0) / 1e6).toFixed(1)} MB/s, frames ${JSON.stringify(s.frames)}, level changes ${s.levelChanges}`);
    expect(s.level).toBeGreaterThan(0);
    expect(s.ratio).toBeGreaterThan(1.5);
    // Within a factor of 2 of the reader's rate: socket buffers make the first samples optimistic.
    expect(s.wireThroughputBytesPerSec).not.toBeNull();
    expect(s.wireThroughputBytesPerSec!).toBeGreaterThan(readerBytesPerSec / 2);
    expect(s.wireThroughputBytesPerSec!).toBeLessThan(readerBytesPerSec * 2);
    const back = await decodeAll(received);
    expect(back.length).toBe(parts.length * binary.length);
  }, 30_000);
});
