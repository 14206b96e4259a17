// The sending half of the codec: cuts a byte stream into chunks and sends each as a frame — zero (header only),
// raw, or zstd at the level the controller picks, compressed on a worker thread (compress-pool.ts) — while the
// previous frame is still being written, so the compressor and the link work at the same time. The peer's acks of
// what it took (observeAck) feed the controller's link estimate, and before the first one every write's
// back-pressure wait: the measurement is passive, from the transfer itself. It also carries this end's acks of the
// other direction (postAck), between its frames.
import { BandwidthError } from './errors.js';
import { CompressionController, validateMode, type CompressionMode, type LevelChange, type LinkHint } from './controller.js';
import { encodeAck, encodeFrame, frameRawBytesMax, type Ack } from './frame.js';
import type { RateLimiter } from './rate-limit.js';
import { ThreadedZstdStream } from './compress-pool.js';

/** Chunks handed to the compressing thread ahead of the sender (bounds the memory held: 4 × 256 KiB and their output). */
export const compressAheadChunks = 4;
/** Raw bytes per frame: big enough for zstd to find redundancy and for headers to vanish, small enough to pipeline. */
export const chunkBytesDefault = 256 * 1024;
/**
 * Bytes on their way (handed to the channel, not yet acked by the peer) are held to the link's rate times its
 * round trip plus this much. Without the bound the kernel's TCP buffers fill with seconds of the stream on a slow
 * link, and a migration's last bytes queue behind them while the guest is paused: at 10 Mbit/s the real pause was
 * 2.2 s against QEMU's 0.7 s. The slack covers the ack interval and a receiver's short stalls, so the bound never
 * holds back a link that could carry more.
 */
export const inFlightSlackMs = 100;
/** Round trip assumed where the link model has none. */
export const inFlightRttAssumedMs = 100;
/** Never a smaller bound than this (bytes): a few frames, whatever the estimate. */
export const inFlightWindowMinBytes = 256 * 1024;
/** With no ack for this long while held, the bound is lifted until the next ack: a silent peer must not stall us. */
export const ackSilenceMs = 500;

export interface EncoderOptions {
  compression: CompressionMode;
  /** A monotonic clock in ms with sub-ms resolution (default performance.now): the write timings need it. */
  nowMs?: () => number;
  /** All are honoured (e.g. the migration's own cap and the node's). */
  limiters?: readonly RateLimiter[];
  linkHint?: LinkHint;
  chunkBytes?: number;
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
  /** Acks of the other direction this end sent. */
  acksSent: number;
  /** Time the sender waited for room in flight (inFlightWindowBytes) in all. */
  heldForAcksMs: number;
  /** The first level changes (bounded): when, to what, on which link estimate. */
  levelHistory: LevelChange[];
}

const zeroBlock = new Uint8Array(frameRawBytesMax);

/** memcmp against a zero block: native speed, no per-byte JavaScript. */
export function isAllZero(b: Uint8Array): boolean {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).equals(zeroBlock.subarray(0, b.byteLength));
}

export class FrameEncoder {
  private readonly controller: CompressionController;
  /** Started with the first chunk to compress: a direction that never compresses needs no thread. */
  private zstd: ThreadedZstdStream | null = null;
  private readonly nowMs: () => number;
  private readonly limiters: readonly RateLimiter[];
  private readonly chunkBytes: number;
  private readonly compressSpeed = new Map<number, number>();
  private rawBytes = 0;
  private wireBytes = 0;
  private readonly frames = { raw: 0, zstd: 0, zero: 0 };
  private startedAtMs: number | null = null;
  private lastSendAtMs: number | null = null;
  /** Bytes handed to `write`, including the one still being written: what the peer's acks are measured against. */
  private handedBytes = 0;
  /** The latest ack to send for the other direction (only the latest matters), and how to wake an idle sender. */
  private pendingAck: Ack | null = null;
  private wakeForAck: (() => void) | null = null;
  private acksSent = 0;
  /** The peer's latest ack (wire bytes it took) and when it arrived here; null before the first. */
  private peerTookBytes = 0;
  private lastAckAtMs: number | null = null;
  /** Set once the peer's direction ended: it sends no more acks, so nothing may wait for them. */
  private peerAcksEnded = false;
  private readonly rttMs: number;
  private heldMs = 0;

  constructor(opts: EncoderOptions) {
    validateMode(opts.compression);
    this.nowMs = opts.nowMs ?? (() => performance.now());
    this.limiters = opts.limiters ?? [];
    this.chunkBytes = opts.chunkBytes ?? chunkBytesDefault;
    if (!Number.isInteger(this.chunkBytes) || this.chunkBytes < 1 || this.chunkBytes > frameRawBytesMax) {
      throw new BandwidthError('bandwidth_options_invalid', `chunkBytes must be 1..${frameRawBytesMax}, got ${this.chunkBytes}`);
    }
    this.controller = new CompressionController({ mode: opts.compression, ...(opts.linkHint === undefined ? {} : { linkHint: opts.linkHint }) });
    this.rttMs = opts.linkHint?.rttMs ?? inFlightRttAssumedMs;
  }

  /**
   * Reads `source` to its end, writing frames through `write` (awaiting its back-pressure), then an end frame. Up to
   * compressAheadChunks chunks are with the compressing thread at once, so the hand-over to it (a wake-up of another
   * thread, which on a busy host took longer than compressing the chunk) overlaps the compression of the others;
   * a sender takes the frames in order as they are ready and writes each once the previous write is done.
   */
  async pump(source: AsyncIterable<Uint8Array>, write: (frame: Uint8Array) => Promise<void>, signal?: AbortSignal): Promise<void> {
    const queue: Array<Promise<Uint8Array>> = [];
    // Shared between the reading loop and the sender; an object, so that TypeScript does not narrow it.
    const st: { readerDone: boolean; failed: { err: unknown } | null; wakeSender: (() => void) | null; wakeReader: (() => void) | null } = {
      readerDone: false,
      failed: null,
      wakeSender: null,
      wakeReader: null,
    };
    const wake = (): void => {
      st.wakeSender?.();
      st.wakeSender = null;
      st.wakeReader?.();
      st.wakeReader = null;
    };
    this.wakeForAck = wake;
    const sender = (async () => {
      let inFlight: Promise<void> | null = null;
      try {
        for (;;) {
          const ack = this.takePendingAck();
          if (ack !== null) {
            if (inFlight !== null) await inFlight;
            inFlight = this.sendAck(ack, write);
            inFlight.catch(() => undefined);
            continue;
          }
          const next = queue[0];
          if (next === undefined) {
            if (st.readerDone || st.failed !== null) break;
            await new Promise<void>((r) => (st.wakeSender = r));
            continue;
          }
          const frame = await next;
          void queue.shift(); // the promise just awaited
          wake();
          // Wait for the previous frame only now: its write overlapped this chunk's compression.
          const waitStart = this.nowMs();
          if (inFlight !== null) await inFlight;
          inFlight = null;
          // Then for room in flight; acks of the other direction still go meanwhile (the peer may be waiting on them).
          for (let holdMs = this.holdMs(frame.byteLength); holdMs > 0 && st.failed === null; holdMs = this.holdMs(frame.byteLength)) {
            const ack = this.takePendingAck();
            if (ack !== null) {
              await this.sendAck(ack, write);
              continue;
            }
            const heldFrom = this.nowMs();
            await new Promise<void>((r) => {
              const timer = setTimeout(() => ((st.wakeSender = null), r()), holdMs);
              st.wakeSender = () => (clearTimeout(timer), r());
            });
            this.heldMs += this.nowMs() - heldFrom;
          }
          if (st.failed !== null) break;
          inFlight = this.send(frame, write, this.nowMs() - waitStart, signal);
          // Observed now, awaited later: a write that fails while nothing is ready must not be an unhandled
          // rejection (that ends the process); the next await or the finally below still sees the error.
          inFlight.catch(() => undefined);
        }
        if (inFlight !== null) await inFlight;
        inFlight = null;
        // Nothing may follow the end frame, acks included.
        this.wakeForAck = null;
        this.pendingAck = null;
        // Only a source read to its end gets the end frame: a cut stream must look cut to the receiver.
        if (st.failed === null) await this.send(encodeFrame({ kind: 'end', level: 0, rawBytes: 0 }, null), write, 0, signal);
      } catch (err) {
        st.failed ??= { err };
        wake();
        if (inFlight !== null) await inFlight.catch(() => undefined);
      }
    })();
    try {
      for await (const chunk of rechunk(source, this.chunkBytes, () => this.readAheadBytes())) {
        if (signal?.aborted === true) throw new BandwidthError('bandwidth_aborted', 'encoder aborted', { cause: signal.reason });
        while (queue.length >= compressAheadChunks && st.failed === null) await new Promise<void>((r) => (st.wakeReader = r));
        if (st.failed !== null) break;
        this.startedAtMs ??= this.nowMs();
        const frame = this.encode(chunk);
        frame.catch(() => undefined); // the sender sees it
        queue.push(frame);
        wake();
      }
    } catch (err) {
      st.failed ??= { err };
    } finally {
      st.readerDone = true;
      wake();
      await sender;
      this.wakeForAck = null;
      this.zstd?.close();
      for (const p of queue) await p.catch(() => undefined);
    }
    if (st.failed !== null) throw st.failed.err;
  }

  /**
   * Queues an ack of what this end's decoder took from the other direction; the sender puts it on the channel
   * between two frames. Dropped while no pump runs or once the end frame is due: acks only measure a live transfer.
   */
  postAck(ack: Ack): void {
    if (this.wakeForAck === null) return;
    this.pendingAck = ack;
    this.wakeForAck();
  }

  private takePendingAck(): Ack | null {
    const ack = this.pendingAck;
    this.pendingAck = null;
    return ack;
  }

  /** The peer's ack of what it took from this end: the delivered rate, for the controller's link estimate. */
  observeAck(ack: Ack): void {
    this.controller.observeDelivery(ack.wireBytes, ack.atMs, ack.idleMs, this.handedBytes);
    this.peerTookBytes = ack.wireBytes;
    this.lastAckAtMs = this.nowMs();
    // A sender held for room in flight may go on.
    this.wakeForAck?.();
  }

  /** The peer's direction ended: no more acks will come, so the in-flight bound no longer applies. */
  peerEnded(): void {
    this.peerAcksEnded = true;
    this.wakeForAck?.();
  }

  /**
   * The in-flight bound in bytes: the link's estimated rate times its round trip plus inFlightSlackMs; none
   * (Infinity) before the peer's first ack, without an estimate, or once the peer's acks ended.
   */
  inFlightWindowBytes(): number {
    const rate = this.controller.linkEstimateBytesPerSec;
    if (this.lastAckAtMs === null || this.peerAcksEnded || rate === null) return Infinity;
    return Math.max(inFlightWindowMinBytes, Math.round((rate * (this.rttMs + inFlightSlackMs)) / 1000));
  }

  /** How long to hold a frame of `bytes` before it may go (0: now); re-asked whenever an ack arrives. */
  private holdMs(bytes: number): number {
    const inFlight = this.handedBytes - this.peerTookBytes;
    // One frame always goes onto an empty pipe, however big it is.
    if (inFlight <= 0 || inFlight + bytes <= this.inFlightWindowBytes() || this.lastAckAtMs === null) return 0;
    const silentMs = this.nowMs() - this.lastAckAtMs;
    return silentMs >= ackSilenceMs ? 0 : ackSilenceMs - silentMs;
  }

  stats(): EncoderStats {
    return {
      rawBytes: this.rawBytes,
      wireBytes: this.wireBytes,
      ratio: this.wireBytes === 0 ? 1 : this.rawBytes / this.wireBytes,
      level: this.controller.level,
      frames: { ...this.frames },
      wireThroughputBytesPerSec: this.controller.linkEstimateBytesPerSec,
      rawThroughputBytesPerSec: this.rawThroughputBytesPerSec(),
      compressBytesPerSec: Object.fromEntries(this.compressSpeed),
      levelChanges: this.controller.changes,
      acksSent: this.acksSent,
      heldForAcksMs: Math.round(this.heldMs),
      levelHistory: [...this.controller.history],
    };
  }

  /** Raw bytes delivered per second since the first chunk; null before. */
  private rawThroughputBytesPerSec(): number | null {
    const elapsedMs = this.startedAtMs === null ? 0 : this.nowMs() - this.startedAtMs;
    return elapsedMs > 0 ? this.rawBytes / (elapsedMs / 1000) : null;
  }

  /**
   * What the transfer delivers in readAheadMs at its rate so far, within [2 chunks, readAheadBytesMax]: whatever is
   * read ahead must still be sent after QEMU wrote its last byte, while the guest is paused (downtime).
   */
  private readAheadBytes(): number {
    const rate = this.rawThroughputBytesPerSec();
    const floor = 2 * this.chunkBytes;
    if (rate === null) return floor;
    return Math.min(readAheadBytesMax, Math.max(floor, Math.round((rate * readAheadMs) / 1000)));
  }

  private async encode(chunk: Uint8Array): Promise<Uint8Array> {
    this.rawBytes += chunk.byteLength;
    if (isAllZero(chunk)) {
      this.frames.zero++;
      return encodeFrame({ kind: 'zero', level: 0, rawBytes: chunk.byteLength }, null);
    }
    const level = this.controller.next(this.nowMs());
    if (level > 0) {
      this.zstd ??= new ThreadedZstdStream();
      const { out, elapsedMs } = await this.zstd.compress(level, chunk);
      this.controller.observeCompress(level, chunk.byteLength, out.byteLength, elapsedMs);
      if (elapsedMs !== null && elapsedMs > 0) this.compressSpeed.set(level, chunk.byteLength / (elapsedMs / 1000));
      // Sent even when it did not shrink: the chunk is in the level's history now, and the receiver's must match.
      // zstd stores incompressible blocks as they are, so that costs a few bytes per 128 KiB.
      this.frames.zstd++;
      return encodeFrame({ kind: 'zstd', level, rawBytes: chunk.byteLength }, out);
    }
    this.frames.raw++;
    return encodeFrame({ kind: 'raw', level: 0, rawBytes: chunk.byteLength }, chunk);
  }

  private async send(frame: Uint8Array, write: (frame: Uint8Array) => Promise<void>, waitedMs: number, signal?: AbortSignal): Promise<void> {
    const start = this.nowMs();
    for (const l of this.limiters) await l.take(frame.byteLength, signal);
    this.handedBytes += frame.byteLength;
    await write(frame);
    const end = this.nowMs();
    this.wireBytes += frame.byteLength;
    // Time blocked on this write before the next chunk could go, plus the limiters' waits: the link's share.
    const wallMs = this.lastSendAtMs === null ? end - start : end - this.lastSendAtMs;
    this.lastSendAtMs = end;
    this.controller.observeWire(frame.byteLength, waitedMs + (end - start), Math.max(wallMs, 0));
  }

  /** An ack: on the wire and counted there, but neither rate-limited (a few bytes) nor a sample of the link. */
  private async sendAck(ack: Ack, write: (frame: Uint8Array) => Promise<void>): Promise<void> {
    const frame = encodeAck(ack);
    this.handedBytes += frame.byteLength;
    await write(frame);
    this.wireBytes += frame.byteLength;
    this.acksSent++;
  }
}

/**
 * Bytes read ahead of the compressor: the source (QEMU) keeps sending while a chunk is compressed, so chunks fill
 * and the source is not paced by the compressor's every pause. Bounded: beyond it the source waits.
 */
export const readAheadBytesMax = 4 * 1024 * 1024;
/** The read-ahead holds about this much of the transfer's time (see FrameEncoder.readAheadBytes). */
export const readAheadMs = 100;

/**
 * Re-cuts a stream into chunks of `chunkBytes`, reading ahead of the consumer up to `readAheadBytes`, but never
 * holds bytes back while the source has nothing more ready (no Nagle): request/response traffic such as NBD would
 * otherwise wait for a chunk that never fills.
 */
export async function* rechunk(source: AsyncIterable<Uint8Array>, chunkBytes: number, readAheadBytes: number | (() => number) = readAheadBytesMax): AsyncGenerator<Uint8Array> {
  const aheadBytes = typeof readAheadBytes === 'number' ? () => readAheadBytes : readAheadBytes;
  const it = source[Symbol.asyncIterator]();
  const queue: Uint8Array[] = [];
  let queued = 0;
  let ended = false;
  let stopped = false;
  // Set inside callbacks: an object, so that TypeScript does not narrow them to their initial null.
  const st: { failure: { err: unknown } | null; wakeConsumer: (() => void) | null; wakeReader: (() => void) | null } = { failure: null, wakeConsumer: null, wakeReader: null };
  const notify = (): void => {
    st.wakeConsumer?.();
    st.wakeConsumer = null;
  };
  const reader = (async () => {
    try {
      while (!stopped) {
        if (queued >= aheadBytes()) {
          await new Promise<void>((r) => (st.wakeReader = r));
          continue;
        }
        const r = await it.next();
        if (r.done === true) break;
        if (r.value.byteLength === 0) continue;
        queue.push(r.value);
        queued += r.value.byteLength;
        notify();
      }
    } catch (err) {
      st.failure = { err };
    } finally {
      ended = true;
      notify();
    }
  })();
  const take = (n: number): Uint8Array => {
    const parts: Uint8Array[] = [];
    let size = 0;
    while (size < n) {
      const head = queue[0];
      if (head === undefined) break;
      const want = n - size;
      if (head.byteLength <= want) {
        parts.push(head);
        queue.shift();
        size += head.byteLength;
      } else {
        parts.push(head.subarray(0, want));
        queue[0] = head.subarray(want);
        size += want;
      }
    }
    queued -= size;
    st.wakeReader?.();
    st.wakeReader = null;
    return parts.length === 1 && parts[0] !== undefined ? parts[0] : Buffer.concat(parts, size);
  };
  try {
    for (;;) {
      if (queued >= chunkBytes) {
        yield take(chunkBytes);
        continue;
      }
      if (ended) {
        if (queued > 0) yield take(queued);
        if (st.failure !== null) throw st.failure.err;
        return;
      }
      if (queued === 0) {
        await new Promise<void>((r) => (st.wakeConsumer = r));
        continue;
      }
      // Part of a chunk: wait one turn of the event loop for more; if none came, the source has nothing ready.
      const more = await Promise.race([new Promise<boolean>((r) => (st.wakeConsumer = () => r(true))), new Promise<boolean>((r) => setImmediate(() => r(false)))]);
      st.wakeConsumer = null;
      if (!more && queued > 0 && queued < chunkBytes) yield take(queued);
    }
  } finally {
    stopped = true;
    st.wakeReader?.();
    await it.return?.();
    // Not awaited: a reader blocked on a source that stays open would hold this up; it ends with the source.
    void reader;
  }
}
