// Rate limits on the wire bytes a migration (or a whole node) sends: a token bucket. The bucket itself is pure
// (time comes in); RateLimiter adds the waiting.
import { BandwidthError } from './errors.js';

/** Burst a bucket allows by default: this long at its rate, so that short pauses do not lose capacity. */
export const burstMsDefault = 100;
/** The smallest burst, so that a chunk never waits on a bucket that can never hold it. */
export const burstBytesMin = 64 * 1024;

export class TokenBucket {
  private tokens: number;
  private atMs: number;

  constructor(
    private rateBytesPerSec: number | null,
    private burstBytes: number,
    nowMs: number,
  ) {
    this.tokens = burstBytes;
    this.atMs = nowMs;
  }

  setRate(bytesPerSec: number | null, burstBytes: number, nowMs: number): void {
    this.refill(nowMs);
    this.rateBytesPerSec = bytesPerSec;
    this.burstBytes = burstBytes;
    this.tokens = Math.min(this.tokens, burstBytes);
  }

  /** Takes `bytes` (going into debt if needed) and says how long the caller must wait before sending them. */
  reserve(bytes: number, nowMs: number): number {
    if (this.rateBytesPerSec === null) return 0;
    this.refill(nowMs);
    this.tokens -= bytes;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.rateBytesPerSec) * 1000;
  }

  private refill(nowMs: number): void {
    const elapsedMs = Math.max(0, nowMs - this.atMs);
    this.atMs = nowMs;
    if (this.rateBytesPerSec !== null) this.tokens = Math.min(this.burstBytes, this.tokens + (elapsedMs / 1000) * this.rateBytesPerSec);
  }
}

export interface RateLimiterOptions {
  /** null: no limit. */
  bytesPerSec: number | null;
  burstBytes?: number;
  nowMs: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export class RateLimiter {
  private readonly bucket: TokenBucket;
  private readonly nowMs: () => number;
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  private readonly burstBytesOption: number | undefined;
  private rate: number | null;

  constructor(opts: RateLimiterOptions) {
    this.rate = checkRate(opts.bytesPerSec);
    this.nowMs = opts.nowMs;
    this.sleep = opts.sleep ?? abortableSleep;
    this.burstBytesOption = opts.burstBytes;
    this.bucket = new TokenBucket(this.rate, this.burst(), this.nowMs());
  }

  get bytesPerSec(): number | null {
    return this.rate;
  }

  setRate(bytesPerSec: number | null): void {
    this.rate = checkRate(bytesPerSec);
    this.bucket.setRate(this.rate, this.burst(), this.nowMs());
  }

  /** Resolves once `bytes` may go on the wire. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const waitMs = this.bucket.reserve(bytes, this.nowMs());
    if (waitMs > 0) await this.sleep(waitMs, signal);
  }

  private burst(): number {
    return this.burstBytesOption ?? Math.max(burstBytesMin, this.rate === null ? 0 : (this.rate * burstMsDefault) / 1000);
  }
}

function checkRate(bytesPerSec: number | null): number | null {
  if (bytesPerSec === null) return null;
  if (!Number.isFinite(bytesPerSec) || bytesPerSec <= 0) throw new BandwidthError('bandwidth_options_invalid', `a rate limit must be a positive number of bytes/s, got ${bytesPerSec}`);
  return bytesPerSec;
}

function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(new BandwidthError('bandwidth_aborted', 'aborted while rate limited', { cause: signal.reason }));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new BandwidthError('bandwidth_aborted', 'aborted while rate limited', { cause: signal?.reason }));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
