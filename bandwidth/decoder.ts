// The receiving half of the codec: parses frames from a byte stream (any cut), checks each before allocating,
// and yields the raw bytes in order. The end frame must come last; a stream that stops before it was cut off.
import { BandwidthError } from './errors.js';
import { decodeAckPayload, decodeHeader, frameHeaderBytes, framePayloadBytesMax, type Ack, type FrameHeader } from './frame.js';
import { ZstdStreamDecoder } from './zstd.js';

export interface DecoderStats {
  rawBytes: number;
  /** Everything taken from the channel, acks included: what this end acknowledges to the sender. */
  wireBytes: number;
  frames: number;
  acks: number;
  /** Time spent waiting for the channel (the current wait included). */
  idleMs: number;
}

export interface DecoderOptions {
  frameBytesMax?: number;
  /** The peer's acks of what it received from this end (they ride this direction, against the data). */
  onAck?: (ack: Ack) => void;
  /** A monotonic clock in ms (default performance.now): times the waits on the channel. */
  nowMs?: () => number;
}

export class FrameDecoder {
  private readonly payloadBytesMax: number;
  private readonly onAck: ((ack: Ack) => void) | undefined;
  private readonly zstd = new ZstdStreamDecoder();
  private rawBytes = 0;
  private wireBytes = 0;
  private frames = 0;
  private acks = 0;
  private lastAck: Ack | null = null;
  private readonly nowMs: () => number;
  private idleMs = 0;
  private waitingSinceMs: number | null = null;

  constructor(opts: DecoderOptions = {}) {
    this.payloadBytesMax = Math.min(opts.frameBytesMax ?? framePayloadBytesMax, framePayloadBytesMax);
    this.onAck = opts.onAck;
    this.nowMs = opts.nowMs ?? (() => performance.now());
  }

  stats(): DecoderStats {
    const { idleMs } = this.ackNow();
    return { rawBytes: this.rawBytes, wireBytes: this.wireBytes, frames: this.frames, acks: this.acks, idleMs };
  }

  /** What this end has taken so far, for an ack to the sender: count, time and idle time from one clock reading. */
  ackNow(): Ack {
    const atMs = this.nowMs();
    const waiting = this.waitingSinceMs === null ? 0 : atMs - this.waitingSinceMs;
    return { wireBytes: this.wireBytes, atMs, idleMs: this.idleMs + waiting };
  }

  /** The channel's chunks, timing how long each was waited for. */
  private async *timed(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    const it = source[Symbol.asyncIterator]();
    try {
      for (;;) {
        this.waitingSinceMs = this.nowMs();
        const r = await it.next();
        this.idleMs += this.nowMs() - this.waitingSinceMs;
        this.waitingSinceMs = null;
        if (r.done === true) return;
        yield r.value;
      }
    } finally {
      this.waitingSinceMs = null;
      await it.return?.();
    }
  }

  async *decode(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    const buf = new ByteQueue();
    let header: FrameHeader | null = null;
    let ended = false;
    for await (const chunk of this.timed(source)) {
      if (chunk.byteLength === 0) continue;
      if (ended) throw new BandwidthError('bandwidth_frame_invalid', 'invalid frame: bytes after the end frame');
      buf.push(chunk);
      this.wireBytes += chunk.byteLength;
      for (;;) {
        if (header === null) {
          if (buf.length < frameHeaderBytes) break;
          header = decodeHeader(buf.take(frameHeaderBytes));
          if (header.payloadBytes > this.payloadBytesMax) throw new BandwidthError('bandwidth_frame_invalid', `invalid frame: payload of ${header.payloadBytes} bytes, more than ${this.payloadBytesMax}`);
        }
        if (buf.length < header.payloadBytes) break;
        const h: FrameHeader = header;
        header = null;
        if (h.kind !== 'ack') this.frames++;
        if (h.kind === 'end') {
          ended = true;
          if (buf.length > 0) throw new BandwidthError('bandwidth_frame_invalid', 'invalid frame: bytes after the end frame');
          break;
        }
        const payload = buf.take(h.payloadBytes);
        if (h.kind === 'ack') {
          this.receiveAck(decodeAckPayload(payload));
          continue;
        }
        this.rawBytes += h.rawBytes;
        yield this.expand(h, payload);
      }
    }
    if (!ended) throw new BandwidthError('bandwidth_stream_truncated', `stream ended without its end frame after ${this.frames} frames (${header === null ? buf.length : 'inside a frame'})`);
  }

  /** Counts and idle time only ever grow, and so does the peer's clock: anything else is a broken peer, not a measurement. */
  private receiveAck(a: Ack): void {
    if (this.lastAck !== null && (a.wireBytes < this.lastAck.wireBytes || a.atMs < this.lastAck.atMs || a.idleMs < this.lastAck.idleMs)) {
      const { wireBytes, atMs, idleMs } = this.lastAck;
      throw new BandwidthError('bandwidth_frame_invalid', `invalid frame: ack of ${a.wireBytes} bytes at ${a.atMs} ms (${a.idleMs} ms idle) goes back from ${wireBytes} at ${atMs} (${idleMs} idle)`);
    }
    this.lastAck = a;
    this.acks++;
    this.onAck?.(a);
  }

  private expand(h: FrameHeader, payload: Uint8Array): Uint8Array {
    switch (h.kind) {
      case 'raw':
        return payload;
      case 'zero':
        return new Uint8Array(h.rawBytes);
      case 'zstd':
        try {
          return this.zstd.decompress(h.level, payload, h.rawBytes);
        } catch (err) {
          throw new BandwidthError('bandwidth_frame_invalid', `invalid frame: zstd payload does not continue the level ${h.level} stream with ${h.rawBytes} bytes`, { cause: err });
        }
      default:
        throw new BandwidthError('bandwidth_frame_invalid', `invalid frame: unexpected ${h.kind} frame`);
    }
  }
}

/** Incoming chunks, consumed from the front without re-copying what stays. */
class ByteQueue {
  private chunks: Uint8Array[] = [];
  private offset = 0;
  length = 0;

  push(b: Uint8Array): void {
    this.chunks.push(b);
    this.length += b.byteLength;
  }

  take(n: number): Uint8Array {
    const first = this.chunks[0];
    if (first !== undefined && first.byteLength - this.offset >= n) {
      const out = first.subarray(this.offset, this.offset + n);
      this.advance(n);
      return out;
    }
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      if (c === undefined) throw new Error('ByteQueue underflow');
      const part = c.subarray(this.offset, this.offset + Math.min(n - filled, c.byteLength - this.offset));
      out.set(part, filled);
      filled += part.byteLength;
      this.advance(part.byteLength);
    }
    return out;
  }

  private advance(n: number): void {
    this.length -= n;
    this.offset += n;
    while (this.chunks[0] !== undefined && this.offset >= this.chunks[0].byteLength) {
      this.offset -= this.chunks[0].byteLength;
      this.chunks.shift();
    }
  }
}
