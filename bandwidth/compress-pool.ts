// Compression off the event loop: a few worker threads per process (bandwidth/zstd-worker.ts) hold the encoders'
// level streams. The node's event loop also carries Raft heartbeats, the mesh and the API; a 256 KiB chunk at level 9
// takes it ~5 ms, at the rate a migration feeds chunks that starved everything else. Each encoder's stream lives on
// one thread (zstd's history is in that thread's context); an encoder has at most compressAheadChunks (encoder.ts)
// with its thread, which bounds each thread's queue.
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { BandwidthError } from './errors.js';
import { isCompressReply, type CompressRequest } from './compress-protocol.js';

/** Compressing threads per process at most: edge hosts have few cores, and QEMU needs them too. */
export const compressThreadsMax = Math.max(1, Math.min(2, availableParallelism() - 1));

export interface Compressed {
  out: Uint8Array;
  /** Time the thread spent compressing: the compressor's speed, without the hand-over; null for a stream's first chunk. */
  elapsedMs: number | null;
}

function workerUrl(): URL {
  const sibling = new URL('./zstd-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(sibling))) return sibling;
  // Under vitest the sources run as TypeScript, which a worker thread cannot load: the built file stands in for it
  // (the test command builds first).
  const built = new URL('../dist/bandwidth/zstd-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(built))) return built;
  throw new BandwidthError('bandwidth_options_invalid', `no compressing thread script next to ${fileURLToPath(import.meta.url)} (run npm run build)`);
}

class CompressThread {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (c: Compressed) => void; reject: (e: Error) => void }>();
  private seq = 0;
  streams = 0;
  dead = false;

  constructor() {
    this.worker = new Worker(workerUrl());
    // An idle thread must not keep the process alive; one with work in flight must.
    this.worker.unref();
    this.worker.on('message', (m: unknown) => {
      if (!isCompressReply(m)) return;
      const p = this.pending.get(m.seq);
      if (p === undefined) return;
      this.pending.delete(m.seq);
      if (this.pending.size === 0) this.worker.unref();
      if ('error' in m) p.reject(new BandwidthError('bandwidth_frame_invalid', `compressing failed: ${m.error}`));
      else p.resolve({ out: m.out, elapsedMs: m.elapsedMs });
    });
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => this.fail(new Error(`the compressing thread exited with code ${code}`)));
  }

  compress(stream: number, level: number, raw: Uint8Array): Promise<Compressed> {
    if (this.dead) return Promise.reject(new Error('the compressing thread is gone'));
    // A copy we own: `raw` may share its memory with other buffers (Node's pool), which must not be transferred away.
    const data = new Uint8Array(raw);
    const seq = ++this.seq;
    return new Promise<Compressed>((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.worker.ref();
      const req: CompressRequest = { op: 'compress', seq, stream, level, data };
      this.worker.postMessage(req, [data.buffer]);
    });
  }

  free(stream: number): void {
    this.streams--;
    if (this.dead) return;
    const req: CompressRequest = { op: 'free', stream };
    this.worker.postMessage(req);
  }

  private fail(err: Error): void {
    this.dead = true;
    threads = threads.filter((t) => t !== this);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

let threads: CompressThread[] = [];
let nextStreamId = 1;

/** One encoder's level streams, on the least loaded compressing thread (started when first needed). */
export class ThreadedZstdStream {
  private readonly thread: CompressThread;
  private readonly id = nextStreamId++;
  private closed = false;

  constructor() {
    let t = threads.length < compressThreadsMax ? null : threads.reduce((a, b) => (b.streams < a.streams ? b : a));
    if (t === null) {
      t = new CompressThread();
      threads.push(t);
    }
    t.streams++;
    this.thread = t;
  }

  compress(level: number, raw: Uint8Array): Promise<Compressed> {
    if (this.closed) return Promise.reject(new Error('the compressing stream is closed'));
    return this.thread.compress(this.id, level, raw);
  }

  /** Frees the streams' memory on the thread. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.thread.free(this.id);
  }
}
