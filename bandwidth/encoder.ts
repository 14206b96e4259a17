// The sending half of the codec: cuts a byte stream into chunks and sends each as a frame — zero (header only),
// raw, or zstd at the level the controller picks — while the previous frame is still being written, so the
// compressor and the link work at the same time. Every write's back-pressure wait feeds the controller's link
// estimate: the measurement is passive, from the transfer itself.
import { BandwidthError } from './errors.js';
import { CompressionController, validateMode, type CompressionMode, type LinkHint } from './controller.js';
import { encodeFrame, frameRawBytesMax } from './frame.js';
import type { RateLimiter } from './rate-limit.js';
import { ZstdContexts } from './zstd.js';

/** Raw bytes per frame: big enough for zstd to find redundancy and for headers to vanish, small enough to pipeline. */
export const chunkBytesDefault = 256 * 1024;
/** A compressed chunk must be at least this much smaller (raw / compressed) or it goes raw: decoding it costs too. */
export const compressGainMin = 1.03;

export interface EncoderOptions {
  compression: CompressionMode;
  /** A monotonic clock in ms with sub-ms resolution (default performance.now): compressor timings need it. */
  nowMs?: () => number;
  /** All are honoured (e.g. the migration's own cap and the node's). */
  limiters?: readonly RateLimiter[];
  linkHint?: LinkHint;
  chunkBytes?: number;
  /** The controller's randomness, in [0, 1) (default Math.random). */
  random?: () => number;
}

export interface EncoderStats {
  rawBytes: number;
  wireBytes: number;
  /** raw / wire (1 before anything was sent). */
  ratio: number;
  /** Level in use (0 = raw). */
  level: number;
  frames: { raw: number; zstd: number; zero: number };
  /** The controller's estimate of the link, in wire bytes/s. */
  wireThroughputBytesPerSec: number | null;
  /** Raw bytes delivered per second since the first chunk. */
  rawThroughputBytesPerSec: number | null;
  /** Measured compressor speed (raw bytes/s) per level used. */
  compressBytesPerSec: Record<number, number>;
  levelChanges: number;
}

const zeroBlock = new Uint8Array(frameRawBytesMax);

/** memcmp against a zero block: native speed, no per-byte JavaScript. */
export function isAllZero(b: Uint8Array): boolean {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).equals(zeroBlock.subarray(0, b.byteLength));
}

export class FrameEncoder {
  private readonly controller: CompressionController;
  private readonly zstd = new ZstdContexts();
  private readonly nowMs: () => number;
  private readonly limiters: readonly RateLimiter[];
  private readonly chunkBytes: number;
  private readonly compressSpeed = new Map<number, number>();
  private rawBytes = 0;
  private wireBytes = 0;
  private readonly frames = { raw: 0, zstd: 0, zero: 0 };
  private startedAtMs: number | null = null;
  private lastSendAtMs: number | null = null;

  constructor(opts: EncoderOptions) {
    validateMode(opts.compression);
    this.nowMs = opts.nowMs ?? (() => performance.now());
    this.limiters = opts.limiters ?? [];
    this.chunkBytes = opts.chunkBytes ?? chunkBytesDefault;
    if (!Number.isInteger(this.chunkBytes) || this.chunkBytes < 1 || this.chunkBytes > frameRawBytesMax) {
      throw new BandwidthError('bandwidth_options_invalid', `chunkBytes must be 1..${frameRawBytesMax}, got ${this.chunkBytes}`);
    }
    this.controller = new CompressionController({ mode: opts.compression, random: opts.random ?? Math.random, ...(opts.linkHint === undefined ? {} : { linkHint: opts.linkHint }) });
  }

  /** Reads `source` to its end, writing frames through `write` (awaiting its back-pressure), then an end frame. */
  async pump(source: AsyncIterable<Uint8Array>, write: (frame: Uint8Array) => Promise<void>, signal?: AbortSignal): Promise<void> {
    let inFlight: Promise<void> | null = null;
    try {
      for await (const chunk of rechunk(source, this.chunkBytes)) {
        if (signal?.aborted === true) throw new BandwidthError('bandwidth_aborted', 'encoder aborted', { cause: signal.reason });
        this.startedAtMs ??= this.nowMs();
        const frame = this.encode(chunk);
        // Wait for the previous frame only now: its write overlapped this chunk's compression.
        const waitStart = this.nowMs();
        if (inFlight !== null) await inFlight;
        inFlight = this.send(frame, write, this.nowMs() - waitStart, signal);
      }
      if (inFlight !== null) await inFlight;
      inFlight = null;
      await this.send(encodeFrame({ kind: 'end', level: 0, rawBytes: 0 }, null), write, 0, signal);
    } finally {
      // Do not leave a rejected write unobserved when the loop failed for another reason.
      if (inFlight !== null) await inFlight.catch(() => undefined);
    }
  }

  stats(): EncoderStats {
    const elapsedMs = this.startedAtMs === null ? 0 : this.nowMs() - this.startedAtMs;
    return {
      rawBytes: this.rawBytes,
      wireBytes: this.wireBytes,
      ratio: this.wireBytes === 0 ? 1 : this.rawBytes / this.wireBytes,
      level: this.controller.level,
      frames: { ...this.frames },
      wireThroughputBytesPerSec: this.controller.linkEstimateBytesPerSec,
      rawThroughputBytesPerSec: elapsedMs > 0 ? this.rawBytes / (elapsedMs / 1000) : null,
      compressBytesPerSec: Object.fromEntries(this.compressSpeed),
      levelChanges: this.controller.changes,
    };
  }

  private encode(chunk: Uint8Array): Uint8Array {
    this.rawBytes += chunk.byteLength;
    if (isAllZero(chunk)) {
      this.frames.zero++;
      return encodeFrame({ kind: 'zero', level: 0, rawBytes: chunk.byteLength }, null);
    }
    const level = this.controller.next(this.nowMs());
    if (level > 0) {
      const t0 = this.nowMs();
      const out = this.zstd.compress(level, chunk);
      const elapsedMs = this.nowMs() - t0;
      this.controller.observeCompress(level, chunk.byteLength, out.byteLength, elapsedMs);
      if (elapsedMs > 0) this.compressSpeed.set(level, chunk.byteLength / (elapsedMs / 1000));
      // zstd recognises incompressible blocks at well over 1 GB/s, so trying costs little; sending it would not pay.
      if (out.byteLength * compressGainMin <= chunk.byteLength) {
        this.frames.zstd++;
        return encodeFrame({ kind: 'zstd', level, rawBytes: chunk.byteLength }, out);
      }
    }
    this.frames.raw++;
    return encodeFrame({ kind: 'raw', level: 0, rawBytes: chunk.byteLength }, chunk);
  }

  private async send(frame: Uint8Array, write: (frame: Uint8Array) => Promise<void>, waitedMs: number, signal?: AbortSignal): Promise<void> {
    const start = this.nowMs();
    for (const l of this.limiters) await l.take(frame.byteLength, signal);
    await write(frame);
    const end = this.nowMs();
    this.wireBytes += frame.byteLength;
    // Time blocked on this write before the next chunk could go, plus the limiters' waits: the link's share.
    const wallMs = this.lastSendAtMs === null ? end - start : end - this.lastSendAtMs;
    this.lastSendAtMs = end;
    this.controller.observeWire(frame.byteLength, waitedMs + (end - start), Math.max(wallMs, 0));
  }
}

const idle = Symbol('idle');

/**
 * Re-cuts a stream into chunks of `chunkBytes`, but never holds bytes back while the source has nothing more ready
 * (no Nagle): request/response traffic such as NBD would otherwise wait for a chunk that never fills.
 */
export async function* rechunk(source: AsyncIterable<Uint8Array>, chunkBytes: number): AsyncGenerator<Uint8Array> {
  const it = source[Symbol.asyncIterator]();
  let parts: Uint8Array[] = [];
  let size = 0;
  let pending: Promise<IteratorResult<Uint8Array>> | null = null;
  const flush = (): Uint8Array => {
    const out = parts.length === 1 && parts[0] !== undefined ? parts[0] : Buffer.concat(parts, size);
    parts = [];
    size = 0;
    return out;
  };
  try {
    for (;;) {
      pending ??= it.next();
      const r = size > 0 ? await Promise.race([pending, new Promise<typeof idle>((res) => setImmediate(() => res(idle)))]) : await pending;
      if (r === idle) {
        yield flush();
        continue;
      }
      pending = null;
      if (r.done === true) {
        if (size > 0) yield flush();
        return;
      }
      let v = r.value;
      while (size + v.byteLength >= chunkBytes) {
        const take = chunkBytes - size;
        parts.push(v.subarray(0, take));
        size += take;
        yield flush();
        v = v.subarray(take);
      }
      if (v.byteLength > 0) {
        parts.push(v);
        size += v.byteLength;
      }
    }
  } finally {
    await it.return?.();
  }
}
