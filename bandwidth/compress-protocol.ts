// Messages between the encoders and their compressing thread (bandwidth/compress-pool.ts, zstd-worker.ts).

export type CompressRequest =
  | { op: 'compress'; seq: number; stream: number; level: number; data: Uint8Array }
  | { op: 'free'; stream: number };

/** elapsedMs is null for a stream's first chunk, which also paid for setting the stream up. */
export type CompressReply = { seq: number; out: Uint8Array; elapsedMs: number | null } | { seq: number; error: string };

export function isCompressRequest(m: unknown): m is CompressRequest {
  if (typeof m !== 'object' || m === null) return false;
  const r = m as Record<string, unknown>;
  if (r.op === 'free') return typeof r.stream === 'number';
  return r.op === 'compress' && typeof r.seq === 'number' && typeof r.stream === 'number' && typeof r.level === 'number' && r.data instanceof Uint8Array;
}

export function isCompressReply(m: unknown): m is CompressReply {
  if (typeof m !== 'object' || m === null) return false;
  const r = m as Record<string, unknown>;
  if (typeof r.seq !== 'number') return false;
  return typeof r.error === 'string' || (r.out instanceof Uint8Array && (typeof r.elapsedMs === 'number' || r.elapsedMs === null));
}
