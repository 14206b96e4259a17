// Proves the compression controller and the token bucket decide deterministically from what they are fed: raw on a link faster than the compressor can feed, a high level on a slow link, a switch when the link changes mid-transfer without flapping, and exact rate limiting with a fake clock.
import { describe, expect, it } from 'vitest';
import { CompressionController, RateLimiter, TokenBucket, adaptiveLevels, levelHoldMs, BandwidthError } from '../../bandwidth/index.js';
import { mulberry32 } from '../support/random.js';

/** Feeds the controller as a transfer would: chunks compressed at the chosen level, written over a link of `linkBps`. */
function drive(
  c: CompressionController,
  opts: { linkBps: number; ms: number; startMs?: number; speed: Record<number, number>; ratio: Record<number, number>; chunkRaw?: number },
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
    const waitMs = Math.max(0, wireMs - compressMs);
    const wallMs = Math.max(wireMs, compressMs);
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
function bestFixed(opts: { linkBps: number; speed: Record<number, number>; ratio: Record<number, number> }): number {
  return Math.max(...[...adaptiveLevels, 19].map((l) => drive(new CompressionController({ mode: l === 0 ? 'off' : l, random: never }), { ...opts, ms: 5_000 }).lateRawBps));
}

const speed = { 1: 470e6, 3: 358e6, 6: 145e6, 9: 67e6 };
const ratio = { 1: 3.32, 3: 3.36, 6: 3.58, 9: 3.64 };
const never = (): number => 0.99;

function mostUsed(levels: number[]): number {
  const counts = new Map<number, number>();
  for (const l of levels) counts.set(l, (counts.get(l) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1])[0]![0];
}

describe('CompressionController', () => {
  it('fixed modes never change level', () => {
    const off = new CompressionController({ mode: 'off', random: () => 0 });
    const six = new CompressionController({ mode: 6, random: () => 0 });
    expect(drive(off, { linkBps: 1e6, ms: 2_000, speed, ratio }).levels.every((l) => l === 0)).toBe(true);
    expect(drive(six, { linkBps: 1e9, ms: 2_000, speed, ratio }).levels.every((l) => l === 6)).toBe(true);
  });

  it('rejects a level outside 1..19', () => {
    expect(() => new CompressionController({ mode: 25, random: () => 0 })).toThrow(BandwidthError);
    expect(() => new CompressionController({ mode: 0, random: () => 0 })).toThrow(/zstd level/);
  });

  it('on 10 Mbit/s, 100 Mbit/s and 1 Gbit/s delivers within 10% of the best fixed choice', () => {
    for (const linkBps of [1.25e6, 12.5e6, 125e6]) {
      const c = new CompressionController({ mode: 'adaptive', random: mulberry32(1) });
      const got = drive(c, { linkBps, ms: 20_000, speed, ratio }).lateRawBps;
      expect(got / bestFixed({ linkBps, speed, ratio }), `link ${linkBps} B/s`).toBeGreaterThan(0.9);
    }
  });

  it('climbs to a high level where it pays (text-like data on a slow link)', () => {
    const textRatio = { 1: 3, 3: 4, 6: 5, 9: 5.6 };
    const c = new CompressionController({ mode: 'adaptive', random: mulberry32(3) });
    const { levels } = drive(c, { linkBps: 1.25e6, ms: 30_000, speed, ratio: textRatio });
    expect(mostUsed(levels.slice(levels.length / 2))).toBe(9);
  });

  it('sends raw when the compressor cannot keep up with the link', () => {
    // A slow compressor (e.g. a busy host) against a 10 Gbit/s link: compressing would deliver less than raw.
    const slow = { 1: 200e6, 3: 150e6, 6: 60e6, 9: 30e6 };
    const c = new CompressionController({ mode: 'adaptive', random: never });
    const { levels } = drive(c, { linkBps: 1.25e9, ms: 5_000, speed: slow, ratio: { 1: 1.5, 3: 1.55, 6: 1.6, 9: 1.62 } });
    expect(mostUsed(levels.slice(levels.length / 2))).toBe(0);
  });

  it('follows a link that drops from 1 Gbit/s to 10 Mbit/s mid-transfer, after the hold time, without flapping', () => {
    const c = new CompressionController({ mode: 'adaptive', random: mulberry32(2) });
    const fast = drive(c, { linkBps: 125e6, ms: 5_000, speed, ratio });
    const atFast = mostUsed(fast.levels.slice(fast.levels.length / 2));
    // On 1 Gbit/s level 1 already makes the link carry more than the compressors behind it can feed.
    expect(atFast).toBeLessThanOrEqual(3);
    const textRatio = { 1: 3, 3: 4, 6: 5, 9: 5.6 };
    const slow = drive(c, { linkBps: 1.25e6, ms: 30_000, startMs: fast.endMs, speed, ratio: textRatio });
    expect(mostUsed(slow.levels.slice(slow.levels.length / 2))).toBe(9);
    // A handful of changes, not one per chunk.
    expect(c.changes).toBeLessThanOrEqual(adaptiveLevels.length * 2);
  });

  it('explores a neighbouring level with the injected randomness only', () => {
    let i = 0;
    const seq = [0.01, 0.9]; // explore, then pick the upper neighbour
    const c = new CompressionController({ mode: 'adaptive', random: () => seq[i++ % 2]!, linkHint: { throughputBytesPerSec: 1.25e6 } });
    const first = c.next(0);
    expect(first).not.toBe(c.level);
    expect(adaptiveLevels).toContain(first);
  });

  it('starts from the link hint: a slow hinted link starts compressing hard', () => {
    const c = new CompressionController({ mode: 'adaptive', random: never, linkHint: { throughputBytesPerSec: 1.25e6 } });
    expect(c.level).toBe(9);
    const d = new CompressionController({ mode: 'adaptive', random: never });
    expect(d.level).toBe(1);
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
