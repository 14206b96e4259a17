// Two connected in-memory ByteChannels (what a mesh bulk stream gives each end), bounded like a socket buffer, so
// the migration engine can be driven against real QEMU without a mesh between the two halves.
import type { ByteChannel } from '../../node/migration/protocol.js';

/** Bytes one direction buffers before write() waits for the reader. */
export const channelBufferBytesMax = 4 * 1024 * 1024;

class Pipe {
  private readonly chunks: Uint8Array[] = [];
  private bytes = 0;
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | null = null;
  private drained: (() => void) | null = null;
  /** Total bytes written, for assertions. */
  total = 0;

  private check(): void {
    if (this.error !== undefined) throw this.error;
  }

  async write(chunk: Uint8Array): Promise<void> {
    this.check();
    if (this.ended) throw new Error('write after end');
    this.chunks.push(chunk.slice());
    this.bytes += chunk.byteLength;
    this.total += chunk.byteLength;
    this.wake?.();
    while (this.bytes > channelBufferBytesMax && this.error === undefined) await new Promise<void>((r) => (this.drained = r));
    this.check();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  fail(err: Error): void {
    this.error ??= err;
    this.wake?.();
    this.drained?.();
  }

  async *read(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const next = this.chunks.shift();
      if (next !== undefined) {
        this.bytes -= next.byteLength;
        if (this.bytes <= channelBufferBytesMax) this.drained?.();
        yield next;
        continue;
      }
      this.check();
      if (this.ended) return;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
  }
}

export interface ChannelPair {
  a: ByteChannel;
  b: ByteChannel;
  /** Bytes a wrote (a → b) and b wrote. */
  bytes(): { aToB: number; bToA: number };
}

export function channelPair(): ChannelPair {
  const ab = new Pipe();
  const ba = new Pipe();
  const side = (out: Pipe, inp: Pipe): ByteChannel => ({
    write: (chunk) => out.write(chunk),
    read: () => inp.read(),
    closeWrite: async () => out.end(),
    abort: (err) => {
      out.fail(err);
      inp.fail(err);
    },
  });
  return { a: side(ab, ba), b: side(ba, ab), bytes: () => ({ aToB: ab.total, bToA: ba.total }) };
}
