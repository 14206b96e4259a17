// zstd through zstd-napi: one reusable compression context per level, and decompression into a buffer of exactly
// the size the frame header announced (so a hostile payload cannot make us allocate more than a frame's bound).
import { createRequire } from 'node:module';
import { Compressor } from 'zstd-napi';
import type * as ZstdBinding from 'zstd-napi/binding.js';

type Binding = typeof ZstdBinding;
// The low-level binding is CommonJS whose exports Node cannot detect statically: load it through require.
const binding = createRequire(import.meta.url)('zstd-napi/binding.js') as Binding;

export class ZstdContexts {
  private readonly compressors = new Map<number, Compressor>();

  compress(level: number, raw: Uint8Array): Buffer {
    let c = this.compressors.get(level);
    if (c === undefined) {
      c = new Compressor();
      c.setParameters({ compressionLevel: level });
      this.compressors.set(level, c);
    }
    return c.compress(raw);
  }
}

/** Decompresses `payload` into exactly `rawBytes` bytes; throws when it holds more, less, or is not zstd. */
export function decompressExact(payload: Uint8Array, rawBytes: number): Uint8Array {
  const out = Buffer.allocUnsafe(rawBytes);
  const n = binding.decompress(out, payload);
  if (n !== rawBytes) throw new Error(`zstd payload holds ${n} bytes, the frame says ${rawBytes}`);
  return out;
}
