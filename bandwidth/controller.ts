// The compression controller: picks the zstd level for the next chunk so that the RAW bytes delivered per second
// are highest. For a level L with compressor speed S(L) (raw bytes/s) and ratio R(L) (raw/wire) over a link that
// carries C wire bytes/s, the delivered raw rate is min(S(L), C × R(L)); raw (level 0) delivers C. S and R are
// measured as the transfer goes (EWMA per level), C passively from how long writes wait on back-pressure. A fast,
// unsaturated link therefore gets raw; a slow one the level whose ratio pays for its speed.
//
// PURE: time and randomness come in as arguments, so every decision replays deterministically in tests.
import { BandwidthError } from './errors.js';

export type CompressionMode = 'adaptive' | 'off' | number;

/** Levels the adaptive mode chooses from: each step buys ratio for speed (measured on this project's CI host). */
export const adaptiveLevels: readonly number[] = [0, 1, 3, 6, 9];
/** A switch must promise this much more raw throughput than the current level, or flapping would cost more. */
export const levelSwitchGain = 0.05;
/** Least time between two level changes. */
export const levelHoldMs = 500;
/** Share of chunks compressed at a neighbouring level to keep its figures fresh (drawn with the injected random). */
export const exploreProbability = 1 / 16;
/** Weight of a new observation in the per-level and link averages. */
export const ewmaWeight = 0.2;
/** Wire samples shorter than this are merged with the next (a single non-blocking write says nothing of the link). */
export const wireSampleMinMs = 50;
/** Share of a sample's time spent waiting on writes from which the link counts as saturated (the bottleneck). */
export const linkSaturatedWaitShare = 0.05;
/** Growth of the link estimate per unsaturated sample. */
export const unsaturatedGrowth = 0.25;
/** A wire rate at least this share of the current level's output rate (speed / ratio) counts as compressor-bound. */
export const compressorBoundShare = 0.7;
/** Ceiling of the link estimate (100 Gbit/s). */
export const linkEstimateMaxBytesPerSec = 12.5e9;

/** Starting figures per level before anything is measured (zstd on mixed guest memory, one core). */
const speedPriorBytesPerSec: Readonly<Record<number, number>> = { 1: 400e6, 3: 300e6, 6: 120e6, 9: 60e6 };
const ratioPrior: Readonly<Record<number, number>> = { 1: 2.5, 3: 2.6, 6: 2.75, 9: 2.8 };
const speedPriorOther = 40e6;
const ratioPriorOther = 2.8;

export interface LinkHint {
  throughputBytesPerSec: number | null;
  rttMs?: number | null;
}

export interface ControllerOptions {
  mode: CompressionMode;
  /** A number in [0, 1): the controller's only source of randomness. */
  random: () => number;
  linkHint?: LinkHint;
}

interface LevelFigures {
  speed: number;
  ratio: number;
  samples: number;
}

export function validateMode(mode: CompressionMode): CompressionMode {
  if (mode === 'adaptive' || mode === 'off') return mode;
  if (typeof mode === 'number' && Number.isInteger(mode) && mode >= 1 && mode <= 19) return mode;
  throw new BandwidthError('bandwidth_options_invalid', `compression must be 'adaptive', 'off' or a zstd level 1..19, got ${String(mode)}`);
}

export class CompressionController {
  private readonly mode: CompressionMode;
  private readonly random: () => number;
  private readonly figures = new Map<number, LevelFigures>();
  /** Link capacity estimate in wire bytes/s; null = unknown. */
  private linkBytesPerSec: number | null;
  private current: number;
  private changedAtMs: number | null = null;
  private pendingWireBytes = 0;
  private pendingWaitMs = 0;
  private pendingWallMs = 0;
  changes = 0;

  constructor(opts: ControllerOptions) {
    this.mode = validateMode(opts.mode);
    this.random = opts.random;
    const hint = opts.linkHint?.throughputBytesPerSec ?? null;
    this.linkBytesPerSec = hint !== null && hint > 0 ? hint : null;
    for (const l of adaptiveLevels) if (l > 0) this.figures.set(l, { speed: speedPriorBytesPerSec[l] ?? speedPriorOther, ratio: ratioPrior[l] ?? ratioPriorOther, samples: 0 });
    if (this.mode === 'off') this.current = 0;
    else if (typeof this.mode === 'number') this.current = this.mode;
    // Unknown link: level 1 costs little on a fast link and already pays on a slow one.
    else this.current = this.linkBytesPerSec === null ? 1 : this.best(this.linkBytesPerSec);
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
   */
  observeWire(wireBytes: number, waitMs: number, wallMs: number): void {
    this.pendingWireBytes += wireBytes;
    this.pendingWaitMs += Math.max(0, waitMs);
    this.pendingWallMs += Math.max(0, wallMs);
    if (this.pendingWallMs < wireSampleMinMs) return;
    const rate = this.pendingWireBytes / (this.pendingWallMs / 1000);
    const saturated = this.pendingWaitMs / this.pendingWallMs >= linkSaturatedWaitShare;
    if (this.linkBytesPerSec === null) this.linkBytesPerSec = rate;
    else if (saturated) this.linkBytesPerSec = ewma(this.linkBytesPerSec, rate);
    // Not saturated, because the compressor is the bottleneck: the link could take more than it got. Probe upward
    // so that a cheaper level gets its turn; once writes wait again, the average pulls the estimate back down.
    else if (this.compressorBound(rate)) this.linkBytesPerSec = Math.min(Math.max(this.linkBytesPerSec, rate) * (1 + unsaturatedGrowth), linkEstimateMaxBytesPerSec);
    // Not saturated because the source had nothing more to send (QEMU scanning memory, zero pages): that says the
    // link carries at least this much, nothing about how much more. Growing here sent whole transfers raw.
    else this.linkBytesPerSec = Math.max(this.linkBytesPerSec, rate);
    this.pendingWireBytes = 0;
    this.pendingWaitMs = 0;
    this.pendingWallMs = 0;
  }

  /** The wire rate is about what the current level's compressor can produce: it, not the source, held the transfer back. */
  private compressorBound(wireRate: number): boolean {
    if (this.current === 0) return false;
    const f = this.figures.get(this.current);
    return f !== undefined && wireRate >= compressorBoundShare * (f.speed / Math.max(f.ratio, 1));
  }

  /** One chunk compressed at `level`: its speed and ratio update that level's figures. */
  observeCompress(level: number, rawBytes: number, outBytes: number, elapsedMs: number): void {
    if (level === 0 || rawBytes === 0) return;
    const speed = rawBytes / (Math.max(elapsedMs, 0.01) / 1000);
    const ratio = rawBytes / Math.max(outBytes, 1);
    const f = this.figures.get(level);
    if (f === undefined) this.figures.set(level, { speed, ratio, samples: 1 });
    else this.figures.set(level, { speed: f.samples === 0 ? speed : ewma(f.speed, speed), ratio: f.samples === 0 ? ratio : ewma(f.ratio, ratio), samples: f.samples + 1 });
  }

  /** Raw bytes/s level `level` is expected to deliver over a link of `link` wire bytes/s. */
  expectedRawBytesPerSec(level: number, link: number): number {
    if (level === 0) return link;
    const f = this.figures.get(level);
    if (f === undefined) return 0;
    return Math.min(f.speed, link * f.ratio);
  }

  /** The level for the next chunk. Adaptive mode re-decides at most every levelHoldMs and sometimes explores. */
  next(nowMs: number): number {
    if (this.mode !== 'adaptive') return this.current;
    const link = this.linkBytesPerSec;
    if (link !== null && (this.changedAtMs === null || nowMs - this.changedAtMs >= levelHoldMs)) {
      const best = this.best(link);
      if (best !== this.current && this.expectedRawBytesPerSec(best, link) > this.expectedRawBytesPerSec(this.current, link) * (1 + levelSwitchGain)) {
        this.current = best;
        this.changedAtMs = nowMs;
        this.changes++;
      }
    }
    if (this.random() < exploreProbability) {
      // One chunk at a neighbour keeps its figures honest as the data changes (raw needs no measuring).
      const i = adaptiveLevels.indexOf(this.current);
      const neighbours = [adaptiveLevels[i - 1], adaptiveLevels[i + 1]].filter((l): l is number => l !== undefined && l > 0);
      const pick = neighbours[Math.floor(this.random() * neighbours.length)];
      if (pick !== undefined) return pick;
    }
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

function ewma(prev: number, sample: number): number {
  return prev + ewmaWeight * (sample - prev);
}
