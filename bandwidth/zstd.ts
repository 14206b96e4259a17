// zstd as one stream per level and direction: every chunk is flushed on its own (the receiver hands it on at once)
// but matches reach back into everything sent before at that level, up to a 64 MiB window. Guest memory repeats
// itself far apart (page cache, the same binaries in several processes, a re-sent dirty page), so this beats
// compressing each chunk alone: on the bench guest's memory 3.28 against 2.58 at level 3 (docs/benchmarks.md).
//
// Each level has its own context because zstd applies a new level only at the next frame, and a frame must go on
// for the history to count. The decoder keeps the matching context per level; both sides skip zero and raw chunks,
// so their histories stay the same.
import { createRequire } from 'node:module';
import type * as ZstdBinding from 'zstd-napi/binding.js';
import { BandwidthError } from './errors.js';

type Binding = typeof ZstdBinding;
// The low-level binding is CommonJS whose exports Node cannot detect statically: load it through require.
const binding = createRequire(import.meta.url)('zstd-napi/binding.js') as Binding;

/** log2 of the history a level's stream may match against (64 MiB): memory on both ends grows with data up to it. */
export const streamWindowLog = 26;
/** Long-distance matching from this level up: it finds the far repeats; level 1 stays the fast choice for fast links. */
export const longDistanceLevelMin = 3;
/** A decoder keeps at most this many level streams (each up to a window of memory); more is a broken peer. */
export const streamContextsMax = 8;
/** Output of one compressStream2 call; a chunk's output is gathered from as many as it needs. */
const compressOutBytes = 512 * 1024;
const empty = new Uint8Array(0);

export class ZstdStreamEncoder {
  private readonly contexts = new Map<number, ZstdBinding.CCtx>();
  private readonly out: Uint8Array<ArrayBuffer> = new Uint8Array(compressOutBytes);

  /** Whether `level` has a stream yet: its first chunk also pays for setting it up (tables, window). */
  has(level: number): boolean {
    return this.contexts.has(level);
  }

  /**
   * Appends `raw` to the level's stream and returns the bytes that decode it (flushed: nothing held back), in an
   * ArrayBuffer of their own (never Node's shared pool), so the compressing thread can transfer it as it is.
   */
  compress(level: number, raw: Uint8Array): Uint8Array<ArrayBuffer> {
    const c = this.context(level);
    const parts: Array<Uint8Array<ArrayBuffer>> = [];
    let size = 0;
    let src = raw;
    for (;;) {
      const [remaining, produced, consumed] = c.compressStream2(this.out, src, binding.EndDirective.flush);
      if (produced > 0) parts.push(this.out.slice(0, produced));
      size += produced;
      src = src.subarray(consumed);
      if (remaining === 0 && src.byteLength === 0) break;
    }
    if (parts.length === 1 && parts[0] !== undefined) return parts[0];
    const all = new Uint8Array(size);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.byteLength;
    }
    return all;
  }

  private context(level: number): ZstdBinding.CCtx {
    let c = this.contexts.get(level);
    if (c === undefined) {
      c = new binding.CCtx();
      c.setParameter(binding.CParameter.compressionLevel, level);
      if (level >= longDistanceLevelMin) {
        c.setParameter(binding.CParameter.windowLog, streamWindowLog);
        c.setParameter(binding.CParameter.enableLongDistanceMatching, 1);
      }
      this.contexts.set(level, c);
    }
    return c;
  }
}

export class ZstdStreamDecoder {
  private readonly contexts = new Map<number, ZstdBinding.DCtx>();
  private readonly probe = new Uint8Array(1);

  /**
   * Feeds `payload` to the level's stream and returns exactly `rawBytes` bytes; throws when it decodes to more or
   * fewer, or is not the continuation of that stream. The window is capped, so a peer cannot make us hold more.
   */
  decompress(level: number, payload: Uint8Array, rawBytes: number): Uint8Array {
    const d = this.context(level);
    const out = Buffer.allocUnsafe(rawBytes);
    let produced = 0;
    let src = payload;
    while (src.byteLength > 0) {
      const full = produced === rawBytes;
      const [, n, consumed] = d.decompressStream(full ? this.probe : out.subarray(produced), src);
      if (full && n > 0) throw tooLong(rawBytes);
      if (n === 0 && consumed === 0) throw new Error('zstd made no progress on the payload');
      produced += n;
      src = src.subarray(consumed);
    }
    // A block bigger than the room left may still sit in the context's own buffer.
    while (produced < rawBytes) {
      const [, n] = d.decompressStream(out.subarray(produced), empty);
      if (n === 0) break;
      produced += n;
    }
    if (produced !== rawBytes) throw new Error(`zstd payload holds ${produced} bytes, the frame says ${rawBytes}`);
    if (d.decompressStream(this.probe, empty)[1] > 0) throw tooLong(rawBytes);
    return out;
  }

  private context(level: number): ZstdBinding.DCtx {
    let d = this.contexts.get(level);
    if (d === undefined) {
      if (this.contexts.size >= streamContextsMax) {
        throw new BandwidthError('bandwidth_frame_invalid', `invalid frame: more than ${streamContextsMax} zstd level streams`);
      }
      d = new binding.DCtx();
      d.setParameter(binding.DParameter.windowLogMax, streamWindowLog);
      this.contexts.set(level, d);
    }
    return d;
  }
}

function tooLong(rawBytes: number): Error {
  return new Error(`zstd payload holds more than the ${rawBytes} bytes the frame says`);
}
