// The compressing thread (bandwidth/compress-pool.ts): holds the level streams of the encoders assigned to it and
// compresses their chunks off the node's event loop, which also carries Raft heartbeats, the mesh and the API.
import { parentPort } from 'node:worker_threads';
import { ZstdStreamEncoder } from './zstd.js';
import { isCompressRequest, type CompressReply } from './compress-protocol.js';

const port = parentPort;
if (port === null) throw new Error('zstd-worker runs as a worker thread');
const streams = new Map<number, ZstdStreamEncoder>();

port.on('message', (msg: unknown) => {
  if (!isCompressRequest(msg)) return;
  if (msg.op === 'free') {
    streams.delete(msg.stream);
    return;
  }
  let reply: CompressReply;
  try {
    let s = streams.get(msg.stream);
    if (s === undefined) {
      s = new ZstdStreamEncoder();
      streams.set(msg.stream, s);
    }
    const cold = !s.has(msg.level);
    const t0 = performance.now();
    const out = s.compress(msg.level, msg.data); // owns its ArrayBuffer: transferred, not copied
    // A stream's first chunk also sets it up (tens of ms for the window's tables): not the compressor's speed.
    const elapsedMs = cold ? null : performance.now() - t0;
    reply = { seq: msg.seq, out, elapsedMs };
    port.postMessage(reply, [out.buffer]);
  } catch (err) {
    reply = { seq: msg.seq, error: err instanceof Error ? err.message : String(err) };
    port.postMessage(reply);
  }
});
