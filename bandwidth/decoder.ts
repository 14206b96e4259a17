// The receiving half of the codec: parses frames from a byte stream (any cut), checks each before allocating,
// and yields the raw bytes in order. The end frame must come last; a stream that stops before it was cut off.
import { BandwidthError } from './errors.js';
import { decodeHeader, frameHeaderBytes, framePayloadBytesMax, type FrameHeader } from './frame.js';
import { ZstdStreamDecoder } from './zstd.js';

export interface DecoderStats {
  rawBytes: number;
  wireBytes: number;
  frames: number;
}

export class FrameDecoder {
  private readonly payloadBytesMax: number;
  private readonly zstd = new ZstdStreamDecoder();
  private rawBytes = 0;
  private wireBytes = 0;
  private frames = 0;

  constructor(opts: { frameBytesMax?: number } = {}) {
    this.payloadBytesMax = Math.min(opts.frameBytesMax ?? framePayloadBytesMax, framePayloadBytesMax);
  }

  stats(): DecoderStats {
    return { rawBytes: this.rawBytes, wireBytes: this.wireBytes, frames: this.frames };
  }

  async *decode(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    const buf = new ByteQueue();
    let header: FrameHeader | null = null;
    let ended = false;
    for await (const chunk of source) {
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
        this.frames++;
        if (h.kind === 'end') {
          ended = true;
          if (buf.length > 0) throw new BandwidthError('bandwidth_frame_invalid', 'invalid frame: bytes after the end frame');
          break;
        }
        const payload = buf.take(h.payloadBytes);
        this.rawBytes += h.rawBytes;
        yield this.expand(h, payload);
      }
    }
    if (!ended) throw new BandwidthError('bandwidth_stream_truncated', `stream ended without its end frame after ${this.frames} frames (${header === null ? buf.length : 'inside a frame'})`);
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
