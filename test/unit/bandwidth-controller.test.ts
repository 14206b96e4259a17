// Proves the compression controller and the token bucket decide deterministically from what they are fed: raw on a link faster than the compressor can feed, a high level on a slow link, the levels not in use judged from the one measured, a switch when the link changes mid-transfer without flapping, the peer's acks telling a fast link from a slow one early, and exact rate limiting with a fake clock.
import { describe, expect, it } from 'vitest';
import { CompressionController, RateLimiter, TokenBucket, adaptiveLevels, levelHoldMs, linkProbeAfterMs, unknownLinkLevel, BandwidthError } from '../../bandwidth/index.js';

/** Feeds the controller as a transfer would: chunks compressed at the chosen level, written over a link of `linkBps`. */
function drive(
  c: CompressionController,
  opts: { linkBps: number; ms: number; startMs?: number; speed: Record<number, number>; ratio: Record<number, number>; chunkRaw?: number; overlapLoss?: number },
): { levels: number[]; endMs: number; lateRawBps: number } {
  const chunk = opts.chunkRaw ?? 256 * 1024;
  let t = opts.startMs ?? 0;
  const levels: number[] = [];
  const times: number[] = [];
  while (t < (opts.startMs ?? 0) + opts.ms) {
    const level = c.next(t);
    levels.push(level);
    const ratio = level === 0 ? 1 : (opts.ratio[level] ?? 1);
    const compressMs = level === 0 ? 0 : (chunk / (opts.speed[level] ?? 1)) * 1000;
    if (level > 0) c.observeCompress(level, chunk, chunk / ratio, compressMs);
    const wire = chunk / ratio;
    const wireMs = (wire / opts.linkBps) * 1000;
    // Pipelined: the write overlaps the next compression; the encoder waits only for what the link takes longer.
    // `overlapLoss` is the share of the shorter of the two that does not overlap (a busy event loop, shared cores).
    const waitMs = Math.max(0, wireMs - compressMs);
    const wallMs = Math.max(wireMs, compressMs) + (opts.overlapLoss ?? 0) * Math.min(wireMs, compressMs);
    c.observeWire(wire, waitMs, wallMs);
    t += wallMs;
    times.push(wallMs);
  }
  // Raw throughput over the second half: after the controller had time to settle.
  const late = times.slice(times.length / 2);
  const lateRawBps = (late.length * chunk) / (late.reduce((a, b) => a + b, 0) / 1000);
  return { levels, endMs: t, lateRawBps };
}

/** The best any fixed choice (raw or one level) delivers on this link and data. */
function bestFixed(opts: { linkBps: number; speed: Record<number, number>; ratio: Record<number, number>; overlapLoss?: number }): number {
  return Math.max(...[...adaptiveLevels, 19].map((l) => drive(new CompressionController({ mode: l === 0 ? 'off' : l }), { ...opts, ms: 5_000 }).lateRawBps));
}

// The bench guest's memory through the level streams (bandwidth/zstd.ts), as measured on the CI host.
const speed = { 1: 450e6, 3: 200e6, 6: 87e6, 9: 56e6 };
const ratio = { 1: 2.38, 3: 3.28, 6: 3.37, 9: 3.36 };
/** Text (59 MB of scripts and documents through the level streams): everything compresses better, the higher levels more so. */
const textSpeed = { 1: 279e6, 3: 122e6, 6: 80e6, 9: 51e6 };
const textRatio = { 1: 5.17, 3: 6.63, 6: 7.27, 9: 7.59 };
/** Compressing and sending overlap this imperfectly in bench:migration (bandwidth/controller.ts overlapLossShare). */
const overlapLoss = 0.5;

function mostUsed(levels: number[]): number {
  const counts = new Map<number, number>();
  for (const l of levels) counts.set(l, (counts.get(l) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1])[0]![0];
}

describe('CompressionController', () => {
  it('fixed modes never change level', () => {
    const off = new CompressionController({ mode: 'off' });
    const six = new CompressionController({ mode: 6 });
    expect(drive(off, { linkBps: 1e6, ms: 2_000, speed, ratio }).levels.every((l) => l === 0)).toBe(true);
    expect(drive(six, { linkBps: 1e9, ms: 2_000, speed, ratio }).levels.every((l) => l === 6)).toBe(true);
  });

  it('rejects a level outside 1..19', () => {
    expect(() => new CompressionController({ mode: 25 })).toThrow(BandwidthError);
    expect(() => new CompressionController({ mode: 0 })).toThrow(/zstd level/);
  });

  it('on 10 Mbit/s, 100 Mbit/s and 1 Gbit/s delivers within 10% of the best fixed choice', () => {
    for (const data of [{ speed, ratio }, { speed: textSpeed, ratio: textRatio }]) {
      for (const linkBps of [1.25e6, 12.5e6, 125e6]) {
        const c = new CompressionController({ mode: 'adaptive' });
        const got = drive(c, { linkBps, ms: 20_000, ...data, overlapLoss }).lateRawBps;
        expect(got / bestFixed({ linkBps, ...data, overlapLoss }), `link ${linkBps} B/s`).toBeGreaterThan(0.9);
      }
    }
  });

  it('keeps the cheaper level when a dearer one buys little ratio and the pipeline overlaps imperfectly', () => {
    const opts = { linkBps: 12.5e6, ms: 20_000, speed, ratio, overlapLoss };
    const run = drive(new CompressionController({ mode: 'adaptive', linkHint: { throughputBytesPerSec: 12.5e6 } }), opts);
    expect(mostUsed(run.levels)).toBe(3);
    const three = drive(new CompressionController({ mode: 3 }), opts).lateRawBps;
    const nine = drive(new CompressionController({ mode: 9 }), opts).lateRawBps;
    expect(nine / three).toBeLessThan(0.9);
    expect(run.lateRawBps / three).toBeGreaterThan(0.9);
  });

  it('judges the levels not in use from the one measured: same host speed, same memory', () => {
    const c = new CompressionController({ mode: 'adaptive', linkHint: { throughputBytesPerSec: 12.5e6 } });
    expect(c.level).toBe(3);
    // Level 3 measured at half its profile speed (a busy host) on memory it shrinks 6x (text).
    for (let i = 0; i < 10; i++) c.observeCompress(3, 1e6, 1e6 / 6, 10);
    // Over a link of no consequence the rate is the compressor's: level 1's profile speed halved.
    expect(c.expectedRawBytesPerSec(1, 1e15) / 225e6).toBeCloseTo(1, 2);
    // Over a slow link it is the ratio: level 1 saves 58 % where level 3 saves 69.5 %, here 83 %: about 70 %.
    expect(c.expectedRawBytesPerSec(1, 1) / (1 / (1 - (0.58 / 0.695) * (5 / 6)))).toBeCloseTo(1, 1);
    // Incompressible memory makes every level incompressible.
    for (let i = 0; i < 60; i++) c.observeCompress(3, 1e6, 1e6, 5);
    expect(c.expectedRawBytesPerSec(9, 1)).toBeCloseTo(1, 1);
  });

  it('compresses hard where it pays (text on a slow link)', () => {
    const c = new CompressionController({ mode: 'adaptive' });
    const { levels } = drive(c, { linkBps: 1.25e6, ms: 30_000, speed: textSpeed, ratio: textRatio, overlapLoss });
    expect(levels.slice(levels.length / 2).every((l) => l >= 3)).toBe(true);
  });

  it('sends raw when the compressor cannot keep up with the link', () => {
    // A slow compressor (e.g. a busy host) against a 10 Gbit/s link: compressing would deliver less than raw.
    const slow = { 1: 200e6, 3: 150e6, 6: 60e6, 9: 30e6 };
    const c = new CompressionController({ mode: 'adaptive' });
    const { levels } = drive(c, { linkBps: 1.25e9, ms: 5_000, speed: slow, ratio: { 1: 1.5, 3: 1.55, 6: 1.6, 9: 1.62 } });
    expect(mostUsed(levels.slice(levels.length / 2))).toBe(0);
  });

  it('delivers what raw would on memory nothing can shrink', () => {
    const random = { 1: 1, 3: 1, 6: 1, 9: 1 };
    const got = drive(new CompressionController({ mode: 'adaptive' }), { linkBps: 12.5e6, ms: 5_000, speed, ratio: random, overlapLoss }).lateRawBps;
    expect(got / 12.5e6).toBeGreaterThan(0.95);
  });

  it('while raw it still samples the memory, and compresses again once the memory compresses', () => {
    const c = new CompressionController({ mode: 'adaptive' });
    const random = { 1: 1, 3: 1, 6: 1, 9: 1 };
    const slow = { 1: 100e6, 3: 50e6, 6: 20e6, 9: 10e6 };
    const incompressible = drive(c, { linkBps: 125e6, ms: 3_000, speed: slow, ratio: random, overlapLoss });
    expect(mostUsed(incompressible.levels.slice(incompressible.levels.length / 2))).toBe(0);
    const text = drive(c, { linkBps: 125e6, ms: 5_000, startMs: incompressible.endMs, speed: textSpeed, ratio: textRatio, overlapLoss });
    expect(mostUsed(text.levels.slice(text.levels.length / 2))).toBeGreaterThan(0);
  });

  it('follows a link that drops from 1 Gbit/s to 10 Mbit/s mid-transfer, after the hold time, without flapping', () => {
    const c = new CompressionController({ mode: 'adaptive' });
    const fast = drive(c, { linkBps: 125e6, ms: 5_000, speed, ratio, overlapLoss });
    // On 1 Gbit/s level 1 already makes the link carry more than the compressors behind it can feed.
    expect(mostUsed(fast.levels.slice(fast.levels.length / 2))).toBeLessThanOrEqual(1);
    const slow = drive(c, { linkBps: 1.25e6, ms: 30_000, startMs: fast.endMs, speed: textSpeed, ratio: textRatio, overlapLoss });
    expect(mostUsed(slow.levels.slice(slow.levels.length / 2))).toBeGreaterThanOrEqual(3);
    // A handful of changes, not one per chunk.
    expect(c.changes).toBeLessThanOrEqual(adaptiveLevels.length * 2);
  });

  it('weighs chunks by their bytes: one nearly empty chunk does not make a level look a hundred times better', () => {
    const c = new CompressionController({ mode: 3 });
    const chunk = 256 * 1024;
    for (let i = 0; i < 20; i++) c.observeCompress(3, chunk, chunk / 3, 1);
    c.observeCompress(3, chunk, 600, 1); // ratio 437
    // On a slow link the raw rate is the link times the ratio: still about 3x, not the ~90x an average of ratios gave.
    expect(c.expectedRawBytesPerSec(3, 1e6) / 1e6).toBeLessThan(4.5);
  });

  it('probes the link upward while the compressor holds it back, only once its last saturated measurement is old', () => {
    const c = new CompressionController({ mode: 6 });
    // Saturated at 12.5 MB/s: writes wait most of the time.
    for (let i = 0; i < 20; i++) c.observeWire(1_250_000, 80, 100);
    expect(c.linkEstimateBytesPerSec! / 12.5e6).toBeCloseTo(1, 1);
    // Then very compressible memory: level 6 compresses 40 MB/s at ratio 10, so 4 MB/s go out and never wait.
    c.observeCompress(6, 1e6, 1e5, 25);
    for (let t = 0; t < linkProbeAfterMs - 100; t += 100) c.observeWire(400_000, 0, 100);
    expect(c.linkEstimateBytesPerSec! / 12.5e6).toBeCloseTo(1, 1);
    for (let i = 0; i < 10; i++) c.observeWire(400_000, 0, 100);
    expect(c.linkEstimateBytesPerSec!).toBeGreaterThan(20e6);
  });

  it("a stream's first chunk counts for the ratio, not the speed (it also set the stream up)", () => {
    const c = new CompressionController({ mode: 3 });
    c.observeCompress(3, 1e6, 2.5e5, null);
    expect(c.expectedRawBytesPerSec(3, 1e15) / 200e6).toBeCloseTo(1, 2); // the profile's speed
    expect(c.expectedRawBytesPerSec(3, 1)).toBeCloseTo(4, 5); // the measured ratio over a link of 1 B/s
    c.observeCompress(3, 1e6, 2.5e5, 10);
    expect(c.expectedRawBytesPerSec(3, 1e15) / 100e6).toBeCloseTo(1, 2);
  });

  it('leaves the long-window stream for raw only for a large gain: what goes raw is missing from its history', () => {
    const c = new CompressionController({ mode: 'adaptive', linkHint: { throughputBytesPerSec: 12.5e6 } });
    expect(c.level).toBe(3);
    // Incompressible memory at 60 MB/s: raw would deliver ~11 % more. Not enough.
    for (let i = 0; i < 20; i++) c.observeCompress(3, 1e6, 1e6, 1000 / 60);
    expect(c.next(levelHoldMs + 1)).toBe(3);
    // At 20 MB/s (a busy host) raw delivers ~30 % more: worth it.
    for (let i = 0; i < 20; i++) c.observeCompress(3, 1e6, 1e6, 1000 / 20);
    expect(c.next(2 * levelHoldMs + 2)).toBe(0);
  });

  it('does not take the burst into empty socket buffers for the link: no decision before the link settles', () => {
    const c = new CompressionController({ mode: 'adaptive' });
    const levels: number[] = [];
    for (let t = 0; t < 900; t += 50) {
      levels.push(c.next(t));
      c.observeCompress(unknownLinkLevel, 1e6, 1e6, 20); // the first memory does not compress: raw looks better
      c.observeWire(2_000_000, 0, 50); // 40 MB/s, never waiting: the kernel's buffers, not the link
    }
    expect(levels.every((l) => l === unknownLinkLevel)).toBe(true);
    expect(c.next(1000)).toBe(0); // settled: on that evidence raw is right
  });

  it("with the peer's acks, tells a fast link from a slow one in a few hundred ms, where back-pressure needs a second", () => {
    // Level 3 on a busy host: 50 MB/s raw, ratio 3.28, so ~15 MB/s of wire. The kernel's buffers take all of it at
    // first whatever the link: writes never wait. Acks (every 20 ms) say what the link really delivered, and how long
    // the receiver waited for it (it takes up to `receiverBps` of wire, idle for the rest of its capacity).
    const run = (linkBps: number, acks: boolean, receiverBps = Infinity): { levelAt400Ms: number; estimate: number | null } => {
      const c = new CompressionController({ mode: 'adaptive' });
      let sent = 0;
      let delivered = 0;
      let idleMs = 0;
      let levelAt400Ms = -1;
      for (let t = 0; t <= 600; t += 5) {
        const level = c.next(t);
        if (t === 400) levelAt400Ms = level;
        const speedBps = level === 0 ? Infinity : level === 1 ? 112e6 : 50e6;
        const r = level === 0 ? 1 : level === 1 ? 2.38 : 3.28;
        const raw = Math.min(speedBps, 1e9) * 0.005;
        if (level > 0) c.observeCompress(level, raw, raw / r, (raw / speedBps) * 1000);
        sent += raw / r;
        c.observeWire(raw / r, 0, 5);
        const step = Math.min(sent - delivered, linkBps * 0.005, receiverBps * 0.005);
        delivered += step;
        idleMs += receiverBps === Infinity ? 5 : 5 * (1 - step / (receiverBps * 0.005));
        if (acks && t % 20 === 0) c.observeDelivery(delivered, t + 1000, idleMs, sent);
      }
      return { levelAt400Ms, estimate: c.linkEstimateBytesPerSec };
    };
    // 1 Gbit/s: the compressor, not the link, holds the transfer back; a cheaper level is chosen early.
    expect(run(125e6, true).levelAt400Ms).toBeLessThan(3);
    expect(run(125e6, false).levelAt400Ms).toBe(unknownLinkLevel); // back-pressure alone has to wait linkSettleMs
    // 100 Mbit/s: the bytes in flight pile up, delivery is the link's rate, level 3 is chosen.
    const slow = run(12.5e6, true);
    expect(slow.levelAt400Ms).toBe(3);
    expect(slow.estimate! / 12.5e6).toBeCloseTo(1, 1);
    // 1 Gbit/s to a receiver that takes only 10 MB/s: the bytes pile up as on the slow link, but the receiver never
    // waited, so that is its pace, not the link's: no estimate, the level stays.
    const starved = run(125e6, true, 10e6);
    expect(starved.estimate).toBeNull();
    expect(starved.levelAt400Ms).toBe(unknownLinkLevel);
    // A receiver of 50 MB/s behind the 100 Mbit/s link waits three quarters of the time: the link's pace again. One
    // of 15 MB/s is busy most of the time: the link is not measured at its pace.
    expect(run(12.5e6, true, 50e6).estimate! / 12.5e6).toBeCloseTo(1, 1);
    expect(run(12.5e6, true, 15e6).estimate).toBeNull();
  });

  it('with acks, one link sample among receiver-bound ones does not settle the link, however long the transfer runs', () => {
    const c = new CompressionController({ mode: 'adaptive' });
    c.observeCompress(unknownLinkLevel, 1e6, 420_000, 2);
    let t = 0;
    let acked = 0;
    let idle = 0;
    c.observeDelivery(acked, t, idle, 4e6);
    // A receiver that happened to wait: 20 MB/s with megabytes in flight.
    t += 60;
    acked += 1.2e6;
    idle += 50;
    c.observeDelivery(acked, t, idle, acked + 4e6);
    expect(c.linkEstimateBytesPerSec! / 20e6).toBeCloseTo(1, 5);
    // Then the receiver sets the pace for two seconds.
    for (; t < 2000; ) {
      t += 60;
      acked += 3e6;
      c.observeDelivery(acked, t, idle, acked + 4e6);
      expect(c.next(t)).toBe(unknownLinkLevel);
    }
    // Two more samples of the receiver waiting on a 20 MB/s link: now it is one, and a stronger level pays.
    for (let i = 0; i < 4; i++) {
      t += 60;
      acked += 1.2e6;
      idle += 50;
      c.observeDelivery(acked, t, idle, acked + 4e6);
    }
    expect(c.next(t)).toBeGreaterThan(unknownLinkLevel);
  });

  it('once acks arrive, write back-pressure no longer moves the link estimate; acks never make it negative', () => {
    const c = new CompressionController({ mode: 3 });
    c.observeDelivery(0, 0, 0, 1_000_000);
    c.observeDelivery(625_000, 50, 40, 1_500_000); // 12.5 MB/s with 1 MB in flight, receiver mostly waiting: saturated
    const estimate = c.linkEstimateBytesPerSec;
    expect(estimate! / 12.5e6).toBeCloseTo(1, 5);
    for (let i = 0; i < 10; i++) c.observeWire(100, 100, 100); // 1 kB/s, always waiting
    expect(c.linkEstimateBytesPerSec).toBe(estimate);
    c.observeDelivery(9e9, 100, 80, 1_600_000); // an ack beyond what was sent counts as all of it
    expect(c.linkEstimateBytesPerSec!).toBeGreaterThan(0);
    c.observeDelivery(1_600_000, 120, 100, 1_600_000); // too soon after the last sample: merged into the next
    c.observeDelivery(1_600_000, 200, 180, 1_600_000); // nothing in flight, nothing new: idle, not a dead link
    expect(c.linkEstimateBytesPerSec!).toBeGreaterThan(1e6);
  });

  it('starts from the link hint: a slow hinted link starts compressing hard', () => {
    const c = new CompressionController({ mode: 'adaptive', linkHint: { throughputBytesPerSec: 1.25e6 } });
    expect(c.level).toBeGreaterThanOrEqual(6);
    const d = new CompressionController({ mode: 'adaptive' });
    expect(d.level).toBe(unknownLinkLevel);
    expect(levelHoldMs).toBeGreaterThan(0);
  });
});

describe('rate limits', () => {
  it('a token bucket lets a burst through, then paces at its rate', () => {
    const b = new TokenBucket(1_000_000, 100_000, 0);
    expect(b.reserve(100_000, 0)).toBe(0);
    expect(b.reserve(50_000, 0)).toBeCloseTo(50, 5);
    // 100 ms later 100 kB came back; 50 kB were owed.
    expect(b.reserve(50_000, 100)).toBe(0);
  });

  it('RateLimiter sleeps what the bucket says, can change rate, and refuses nonsense', async () => {
    let now = 0;
    const slept: number[] = [];
    const l = new RateLimiter({ bytesPerSec: 1_000_000, burstBytes: 100_000, nowMs: () => now, sleep: async (ms) => void slept.push(ms) });
    await l.take(100_000);
    await l.take(200_000);
    expect(slept).toEqual([200]);
    now = 1_000;
    l.setRate(null);
    await l.take(10_000_000);
    expect(slept).toEqual([200]);
    expect(() => l.setRate(-5)).toThrow(BandwidthError);
  });

  it('an aborted wait rejects with bandwidth_aborted', async () => {
    const l = new RateLimiter({ bytesPerSec: 1_000, burstBytes: 1_000, nowMs: () => 0 });
    const ac = new AbortController();
    const p = l.take(100_000, ac.signal);
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: 'bandwidth_aborted' });
  });
});
