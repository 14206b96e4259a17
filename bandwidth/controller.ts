// The compression controller: picks the zstd level for the next chunk so that the RAW bytes delivered per second
// are highest. For a level L with compressor speed S(L) (raw bytes/s) and ratio R(L) (raw/wire) over a link that
// carries C wire bytes/s, the delivered raw rate is 1 / (max(1/S, 1/(C·R)) + k·min(1/S, 1/(C·R))): compressing
// and sending overlap, but not fully (k = overlapLossShare); raw (level 0) delivers C.
//
// Only the level in use is measured (decayed sums of its chunks: speed, and the share of bytes it saves). The other
// levels follow from it through a profile of how the levels compare on guest memory: how compressible the memory is
// NOW and how fast this host compresses NOW come from the measurement, the relation between levels from the
// profile. Measuring each level on its own chunks compared them on different memory (a random region against a
// text region) and made the controller flap; comparing on the same chunk is impossible because each level is one
// zstd stream whose history the receiver must share. C is measured from the peer's acks of what it took (and how
// long it waited for it); before the first ack, from how long writes wait.
//
// PURE: time comes in as an argument, so every decision replays deterministically in tests.
import { BandwidthError } from './errors.js';
import { longDistanceLevelMin } from './zstd.js';

export type CompressionMode = 'adaptive' | 'off' | number;

/** Levels the adaptive mode chooses from: each step buys ratio for speed (measured on this project's CI host). */
export const adaptiveLevels: readonly number[] = [0, 1, 3, 6, 9];
/** A switch must promise this much more raw throughput than the current level, or flapping would cost more. */
export const levelSwitchGain = 0.05;
/**
 * What a switch from a long-window level (bandwidth/zstd.ts longDistanceLevelMin and up) to raw or a short-window
 * level must promise instead: the chunks sent that way never enter the long window, so later memory that repeats
 * them (the same binaries in several places) finds nothing to match. Leaving for raw on a stretch of poorly
 * compressible memory cost the bench guest 10 % of its ratio.
 */
export const historyLeaveGain = 0.25;
/** Least time between two level changes. */
export const levelHoldMs = 500;
/** Weight of a new observation in the level's and the link's averages. */
export const ewmaWeight = 0.2;
/** Wire samples shorter than this are merged with the next (a single non-blocking write says nothing of the link). */
export const wireSampleMinMs = 50;
/** Share of a sample's time spent waiting on writes from which the link counts as saturated (the bottleneck). */
export const linkSaturatedWaitShare = 0.05;
/** Growth of the link estimate per unsaturated sample. */
export const unsaturatedGrowth = 0.25;
/** A wire rate at least this share of the current level's output rate (speed / ratio) counts as compressor-bound. */
export const compressorBoundShare = 0.7;
/**
 * Share of the shorter of compressing and sending a byte that does not overlap the longer. Compression runs on the
 * event loop that also drives the sends, and shares the cores with QEMU: with 0 (a perfect pipeline) levels 6 and 9
 * looked as good as 3 at 100 Mbit/s, yet took 11 % and 32 % longer in bench:migration; 0.5 predicted all four
 * levels' times there within 10 %.
 */
export const overlapLossShare = 0.5;
/**
 * While the compressor (or the source) holds the transfer back the link cannot be measured, and the estimate probes
 * upward; but not for this long after the link was last measured saturated: that measurement is the link, and
 * probing past it in a stretch of very compressible memory sent the next ordinary memory out at too cheap a level.
 */
export const linkProbeAfterMs = 5000;
/**
 * While raw, every this many chunks goes through the last level measured: raw measures nothing of the memory, and
 * without it a region of random data sent raw would leave the controller believing all memory incompressible.
 */
export const rawProbeEveryChunks = 16;
/**
 * Until the link has been seen saturated, the level is re-decided only this long after the first chunk: the first
 * megabytes fill socket buffers (TCP grows them to several MB) at memory speed, and an estimate taken from them sent
 * the start of a 100 Mbit/s migration raw. A link hint from the mesh's link model needs no wait.
 */
export const linkSettleMs = 1000;
/**
 * Link samples (from the peer's acks, the receiver waiting for our bytes) after which the link counts as measured:
 * unlike write back-pressure they are not fooled by the kernel's buffers, so the first few already tell a slow link
 * (one every ~60 ms at 100 Mbit/s in bench:migration) from a fast one (0–3 in a whole 1 Gbit/s transfer).
 */
export const deliverySettleSamples = 3;
/**
 * Bytes in flight that grew by more than this share of what a delivery sample delivered: we sent faster than the
 * link took, so it is near its rate, however short the queue still is (acks' own jitter moves it by less).
 */
export const queueGrowthShare = 0.1;
/**
 * Share of a delivery sample the receiver spent on anything but waiting for our bytes (decoding, its QEMU taking
 * them) from which it, not the link, set the pace: the delivered rate then says only that the link carries at least
 * that much. Counted as the link's, a CPU-starved receiver at 1 Gbit/s read as a 130 Mbit/s link and sent the
 * transfer to a level that made it 50 % slower. In bench:migration a receiver behind a 100 Mbit/s link was busy
 * under 30 % of the time in 60–99 % of the samples, all at the link's rate; behind 1 Gbit/s, in 0–3 of 20.
 */
export const receiverBoundBusyShare = 0.3;
/**
 * The level while nothing is known of the link: the cheapest that compresses. The peer's acks measure a link that
 * holds the transfer back within a few samples (then the level follows it); a link that never does is never
 * measured, and the cheapest level costs both ends least CPU while still cutting the bytes (bench:migration at
 * 1 Gbit/s: level 1 took 0.95–1.31 s, raw 1.42–1.51 s, level 3 1.43–2.40 s).
 */
export const unknownLinkLevel = adaptiveLevels.find((l) => l > 0) ?? 1;
/** Level changes kept for the logs (the first ones: how the transfer settled is what explains its speed). */
export const levelHistoryMax = 16;

/** One level change, for logs: when (ms since the first chunk), to what, and the link estimate it was made on. */
export interface LevelChange {
  atMs: number;
  level: number;
  linkBytesPerSec: number;
}

/** Ceiling of the link estimate (100 Gbit/s). */
export const linkEstimateMaxBytesPerSec = 12.5e9;

/**
 * How the levels' streams compare (bandwidth/zstd.ts; the bench guest's memory, one core of the CI host): raw bytes/s
 * and ratio. Level 1 has no long-distance matching and a small window: fast, but it finds no far repeats.
 */
export const levelProfile: Readonly<Record<number, { speedBytesPerSec: number; ratio: number }>> = {
  1: { speedBytesPerSec: 450e6, ratio: 2.38 },
  3: { speedBytesPerSec: 200e6, ratio: 3.28 },
  6: { speedBytesPerSec: 90e6, ratio: 3.37 },
  9: { speedBytesPerSec: 55e6, ratio: 3.36 },
};
/** For a fixed level outside the ladder (only its own measurements are ever used). */
const profileOther = { speedBytesPerSec: 40e6, ratio: 3.3 };
/** Saved share of bytes never reaches 1: a zero chunk is sent as a header, anything else costs something. */
const savedShareMax = 0.999;

export interface LinkHint {
  throughputBytesPerSec: number | null;
  rttMs?: number | null;
}

export interface ControllerOptions {
  mode: CompressionMode;
  linkHint?: LinkHint;
}

/**
 * Decayed sums, not averages of per-chunk figures: what matters is time per raw byte, so a chunk counts by its bytes.
 * An average of ratios let one near-empty chunk (ratio 400) swing a level's figure a hundredfold.
 */
interface LevelFigures {
  rawBytes: number;
  outBytes: number;
  /** The raw bytes whose compression was timed, and that time. */
  timedRawBytes: number;
  compressMs: number;
}

export function validateMode(mode: CompressionMode): CompressionMode {
  if (mode === 'adaptive' || mode === 'off') return mode;
  if (typeof mode === 'number' && Number.isInteger(mode) && mode >= 1 && mode <= 19) return mode;
  throw new BandwidthError('bandwidth_options_invalid', `compression must be 'adaptive', 'off' or a zstd level 1..19, got ${String(mode)}`);
}

export class CompressionController {
  private readonly mode: CompressionMode;
  private readonly figures = new Map<number, LevelFigures>();
  /** The level whose measurements stand for the memory and host now: the last one that compressed a chunk. */
  private measuredLevel: number | null = null;
  /** Link capacity estimate in wire bytes/s; null = unknown. */
  private linkBytesPerSec: number | null;
  /** Whether the link was ever measured saturated, and the time of samples since it last was. */
  private seenSaturated = false;
  private sinceSaturatedMs = 0;
  private current: number;
  private changedAtMs: number | null = null;
  private readonly hinted: boolean;
  private firstChunkAtMs: number | null = null;
  private rawChunks = 0;
  private pendingWireBytes = 0;
  private pendingWaitMs = 0;
  private pendingWallMs = 0;
  /** The last ack that started a delivery sample (null: the peer sends none, write back-pressure stands in). */
  private lastAck: { ackedWireBytes: number; atMs: number; idleMs: number; inFlightWireBytes: number } | null = null;
  private deliverySamples = 0;
  /** The last delivery sample was the receiver's pace, not the link's. */
  private receiverStalled = false;
  changes = 0;
  readonly history: LevelChange[] = [];

  constructor(opts: ControllerOptions) {
    this.mode = validateMode(opts.mode);
    const hint = opts.linkHint?.throughputBytesPerSec ?? null;
    this.linkBytesPerSec = hint !== null && hint > 0 ? hint : null;
    this.hinted = this.linkBytesPerSec !== null;
    if (this.mode === 'off') this.current = 0;
    else if (typeof this.mode === 'number') this.current = this.mode;
    else this.current = this.linkBytesPerSec === null ? unknownLinkLevel : this.best(this.linkBytesPerSec);
  }

  /** The level in use (0 = raw). */
  get level(): number {
    return this.current;
  }

  /** Link estimate in wire bytes/s (null until measured or hinted). */
  get linkEstimateBytesPerSec(): number | null {
    return this.linkBytesPerSec;
  }

  /**
   * One write of `wireBytes` that waited `waitMs` on back-pressure, `wallMs` after the previous write started.
   * While writes wait, the link is saturated and drains continuously: bytes over wall time is its rate. While they
   * hardly wait, it took everything we produced: that rate is only a lower bound, which may raise the estimate.
   * Only until the peer's acks arrive: the kernel's buffers (megabytes) hide back-pressure for the first second of
   * a transfer and let a busy receiver's stalls through as the link's, where acks measure delivery itself.
   */
  observeWire(wireBytes: number, waitMs: number, wallMs: number): void {
    if (this.lastAck !== null) return;
    this.pendingWireBytes += wireBytes;
    this.pendingWaitMs += Math.max(0, waitMs);
    this.pendingWallMs += Math.max(0, wallMs);
    if (this.pendingWallMs < wireSampleMinMs) return;
    this.sample(this.pendingWireBytes / (this.pendingWallMs / 1000), this.pendingWaitMs / this.pendingWallMs >= linkSaturatedWaitShare ? 'saturated' : 'open', this.pendingWallMs);
    this.pendingWireBytes = 0;
    this.pendingWaitMs = 0;
    this.pendingWallMs = 0;
  }

  /**
   * The peer's ack: it had taken `ackedWireBytes` of ours from the link at `atMs` (its clock), after waiting `idleMs`
   * in all for bytes to arrive, when we had handed `sentWireBytes` to the link. Between two acks at least
   * wireSampleMinMs apart: if the receiver hardly waited, it was the bottleneck and the rate is a lower bound of the
   * link's. Otherwise the delivered rate is the link's if the bytes already in flight at the first would have kept
   * it busy the whole time. If the bytes in flight grew, we sent faster than the link delivered: the rate is near
   * the link's, no reason to probe above it. Otherwise the link took all we sent: a lower bound.
   */
  observeDelivery(ackedWireBytes: number, atMs: number, idleMs: number, sentWireBytes: number): void {
    const acked = Math.min(ackedWireBytes, sentWireBytes);
    const inFlight = sentWireBytes - acked;
    const start = this.lastAck;
    const next = { ackedWireBytes: acked, atMs, idleMs, inFlightWireBytes: inFlight };
    if (start === null) {
      this.lastAck = next;
      return;
    }
    const elapsedMs = atMs - start.atMs;
    if (elapsedMs < wireSampleMinMs || acked < start.ackedWireBytes) return;
    const delivered = acked - start.ackedWireBytes;
    const rate = delivered / (elapsedMs / 1000);
    const busyShare = 1 - Math.max(0, idleMs - start.idleMs) / elapsedMs;
    this.lastAck = next;
    const afterStall = this.receiverStalled;
    this.receiverStalled = delivered > 0 && busyShare >= receiverBoundBusyShare;
    // A receiver that hardly waited set the pace itself: the link is somewhere above, and the level cannot be chosen
    // for it, so the one in use stays. The sample after such a stall is no measure either: part of what it delivered
    // had queued in the receiver's socket buffer meanwhile, and comes out faster than any link.
    if (this.receiverStalled || afterStall) {
      this.sinceSaturatedMs += elapsedMs;
      return;
    }
    // An ack that reports nothing new while nothing was in flight is an idle transfer, not a dead link.
    if (delivered === 0 && start.inFlightWireBytes === 0) return;
    const saturated = delivered > 0 && start.inFlightWireBytes >= delivered;
    const queueGrew = inFlight - start.inFlightWireBytes > queueGrowthShare * delivered;
    // The first estimate comes from the link at work: a lower bound (the source idle, QEMU scanning zero pages) as the
    // first figure would send a fast link's transfer to a level for a slow one.
    if (this.linkBytesPerSec === null && !saturated) return;
    this.sample(rate, saturated ? 'saturated' : queueGrew ? 'near' : 'open', elapsedMs);
    this.deliverySamples++;
  }

  /**
   * One measurement of the link over `durationMs`: `rate` wire bytes/s, the link's own if saturated; a lower bound
   * otherwise, which may probe upward when `open` (nothing says the link is near).
   */
  private sample(rate: number, kind: 'saturated' | 'near' | 'open', durationMs: number): void {
    const saturated = kind === 'saturated';
    this.sinceSaturatedMs = saturated ? 0 : this.sinceSaturatedMs + durationMs;
    if (this.linkBytesPerSec === null) this.linkBytesPerSec = rate;
    else if (saturated) {
      this.linkBytesPerSec = ewma(this.linkBytesPerSec, rate);
      this.seenSaturated = true;
    } else if (!this.seenSaturated || this.sinceSaturatedMs >= linkProbeAfterMs) {
      // Not saturated because the compressor is the bottleneck: the link could take more than it got. Probe upward
      // so that a cheaper level gets its turn; once writes wait again, the average pulls the estimate back down.
      // Not saturated because the source had nothing more to send (QEMU scanning memory, zero pages): the link
      // carries at least this much, nothing about how much more; and a burst into empty socket buffers looks faster
      // than any link, so the estimate only moves toward it.
      const probe = kind === 'open' && this.compressorBound(rate);
      const candidate = probe ? this.linkBytesPerSec * (1 + unsaturatedGrowth) : ewma(this.linkBytesPerSec, Math.max(rate, this.linkBytesPerSec));
      this.linkBytesPerSec = Math.max(this.linkBytesPerSec, Math.min(candidate, linkEstimateMaxBytesPerSec));
    }
  }

  /** The wire rate is about what the current level's compressor can produce: it, not the source, held the transfer back. */
  private compressorBound(wireRate: number): boolean {
    if (this.current === 0) return false;
    const f = this.figuresOf(this.current);
    return wireRate >= compressorBoundShare * (f.speed / Math.max(f.ratio, 1));
  }

  /**
   * One chunk compressed at `level`: its speed and ratio update that level's figures. `elapsedMs` null: the time
   * says nothing of the speed (the stream's first chunk, which also set it up), only the ratio counts.
   */
  observeCompress(level: number, rawBytes: number, outBytes: number, elapsedMs: number | null): void {
    if (level === 0 || rawBytes === 0) return;
    const f = this.figures.get(level);
    const keep = f === undefined ? 0 : 1 - ewmaWeight;
    const timed = elapsedMs !== null;
    this.figures.set(level, {
      rawBytes: (f?.rawBytes ?? 0) * keep + rawBytes,
      outBytes: (f?.outBytes ?? 0) * keep + Math.max(outBytes, 1),
      timedRawBytes: (f?.timedRawBytes ?? 0) * keep + (timed ? rawBytes : 0),
      compressMs: (f?.compressMs ?? 0) * keep + (timed ? Math.max(elapsedMs, 0.01) : 0),
    });
    this.measuredLevel = level;
  }

  /** Raw bytes/s level `level` is expected to deliver over a link of `link` wire bytes/s. */
  expectedRawBytesPerSec(level: number, link: number): number {
    if (level === 0) return link;
    const f = this.figuresOf(level);
    const compressSecPerByte = 1 / f.speed;
    const wireSecPerByte = 1 / (link * f.ratio);
    return 1 / (Math.max(compressSecPerByte, wireSecPerByte) + overlapLossShare * Math.min(compressSecPerByte, wireSecPerByte));
  }

  /**
   * A level's expected speed and ratio: the measured level's own figures, any other level's profile scaled as the
   * measured level's figures compare with its profile (speed by speed; ratio through the share of bytes saved, so
   * incompressible memory makes every level incompressible rather than a fixed multiple of 1).
   */
  private figuresOf(level: number): { speed: number; ratio: number } {
    const profile = levelProfile[level] ?? profileOther;
    const m = this.measuredLevel === null ? undefined : this.figures.get(this.measuredLevel);
    if (this.measuredLevel === null || m === undefined) return { speed: profile.speedBytesPerSec, ratio: profile.ratio };
    const ratio = m.rawBytes / m.outBytes;
    const base = levelProfile[this.measuredLevel] ?? profileOther;
    // No timed chunk yet: the host's speed is the profile's.
    const speed = m.compressMs > 0 ? m.timedRawBytes / (m.compressMs / 1000) : base.speedBytesPerSec;
    if (level === this.measuredLevel) return { speed, ratio };
    const saved = Math.min(savedShare(profile.ratio) * (savedShare(ratio) / savedShare(base.ratio)), savedShareMax);
    return { speed: profile.speedBytesPerSec * (speed / base.speedBytesPerSec), ratio: 1 / (1 - saved) };
  }

  /** The level for the next chunk. Adaptive mode re-decides at most every levelHoldMs. */
  next(nowMs: number): number {
    if (this.mode !== 'adaptive') return this.current;
    this.firstChunkAtMs ??= nowMs;
    const link = this.linkBytesPerSec;
    // With acks, only enough link samples settle it: a fast link's transfer yields only a rare one (a receiver that
    // happened to wait), and deciding on it after linkSettleMs sent a 1 Gbit/s migration to level 3.
    const settled = this.hinted || (this.lastAck === null ? this.seenSaturated || nowMs - this.firstChunkAtMs >= linkSettleMs : this.deliverySamples >= deliverySettleSamples);
    if (link !== null && settled && (this.changedAtMs === null || nowMs - this.changedAtMs >= levelHoldMs)) {
      const best = this.best(link);
      const gain = this.current >= longDistanceLevelMin && best < longDistanceLevelMin ? historyLeaveGain : levelSwitchGain;
      if (best !== this.current && this.expectedRawBytesPerSec(best, link) > this.expectedRawBytesPerSec(this.current, link) * (1 + gain)) {
        this.current = best;
        this.changedAtMs = nowMs;
        this.changes++;
        if (this.history.length < levelHistoryMax) this.history.push({ atMs: Math.round(nowMs - this.firstChunkAtMs), level: best, linkBytesPerSec: Math.round(link) });
      }
    }
    if (this.current === 0 && ++this.rawChunks % rawProbeEveryChunks === 0) return this.measuredLevel ?? (adaptiveLevels[1] ?? 1);
    return this.current;
  }

  private best(link: number): number {
    let best = 0;
    let bestRate = -1;
    for (const l of adaptiveLevels) {
      const rate = this.expectedRawBytesPerSec(l, link);
      // Ties go to the cheaper level (lower index): same throughput for less CPU.
      if (rate > bestRate * (1 + 1e-9)) {
        best = l;
        bestRate = rate;
      }
    }
    return best;
  }
}

/** Share of bytes a ratio saves: 0 for 1, approaching 1 for large ratios. */
function savedShare(ratio: number): number {
  return Math.max(0, 1 - 1 / ratio);
}

function ewma(prev: number, sample: number): number {
  return prev + ewmaWeight * (sample - prev);
}
