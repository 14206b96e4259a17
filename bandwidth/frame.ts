// The wire format of the codec: a fixed 12-byte header, then the payload.
//
//   0      magic 0x4e ('N')          4..7   raw length (u32 BE): bytes this frame stands for
//   1      format version (3)        8..11  payload length (u32 BE): bytes that follow the header
//   2      kind: raw | zstd | zero | end | ack
//   3      zstd level (0 unless zstd)
//
// A zstd payload is the next flushed piece of that level's stream (bandwidth/zstd.ts), not a frame of its own:
// version 1 compressed every chunk alone. An ack (version 3) travels against the data: the receiver's count of
// wire bytes it took from the channel, its clock then, and how long it had waited on the channel in all (three f64
// BE), from which the sender's controller learns what the link delivers and whether the link or the receiver is
// the bottleneck (bandwidth/controller.ts). A peer of another version refuses the stream rather than misread it.
// No checksum: the stream below (TCP under Noise's AEAD) already guarantees integrity, and QEMU's migration
// stream and NBD have their own structure. Every length is bounded before anything is allocated.
import { BandwidthError } from './errors.js';

export const frameMagic = 0x4e;
export const frameVersion = 3;
export const frameHeaderBytes = 12;
/** Largest raw chunk one frame may stand for; the encoder's chunks are smaller (chunkBytesDefault). */
export const frameRawBytesMax = 1024 * 1024;
/** zstd's worst case for a chunk of frameRawBytesMax is a little over it (ZSTD_compressBound); this covers it. */
export const framePayloadBytesMax = frameRawBytesMax + 64 * 1024;
export const zstdLevelMax = 22;

export const FrameKind = { raw: 0, zstd: 1, zero: 2, end: 3, ack: 4 } as const;
export type FrameKindName = keyof typeof FrameKind;
const kindNames: readonly FrameKindName[] = ['raw', 'zstd', 'zero', 'end', 'ack'];
/** An ack's payload: wire bytes received, the receiver's monotonic clock in ms, its time waiting on the channel. */
export const ackPayloadBytes = 24;

/**
 * What a receiver has taken from the channel so far, when (its own clock: only differences mean anything), and how
 * long it waited for the channel in all (the rest of the time it was busy: expanding, feeding its QEMU).
 */
export interface Ack {
  wireBytes: number;
  atMs: number;
  idleMs: number;
}

export interface FrameHeader {
  kind: FrameKindName;
  level: number;
  rawBytes: number;
  payloadBytes: number;
}

export function encodeHeader(h: FrameHeader): Uint8Array {
  const out = new Uint8Array(frameHeaderBytes);
  const view = new DataView(out.buffer);
  out[0] = frameMagic;
  out[1] = frameVersion;
  out[2] = FrameKind[h.kind];
  out[3] = h.level;
  view.setUint32(4, h.rawBytes);
  view.setUint32(8, h.payloadBytes);
  return out;
}

/** A frame as one buffer: header and payload. */
export function encodeFrame(h: Omit<FrameHeader, 'payloadBytes'>, payload: Uint8Array | null): Uint8Array {
  const payloadBytes = payload?.byteLength ?? 0;
  const out = new Uint8Array(frameHeaderBytes + payloadBytes);
  out.set(encodeHeader({ ...h, payloadBytes }), 0);
  if (payload !== null) out.set(payload, frameHeaderBytes);
  return out;
}

/** Parses and checks a header; every rule a peer could break is refused here, before any allocation. */
export function decodeHeader(b: Uint8Array): FrameHeader {
  if (b.byteLength < frameHeaderBytes) throw invalid(`header needs ${frameHeaderBytes} bytes, got ${b.byteLength}`);
  if (b[0] !== frameMagic) throw invalid(`bad magic 0x${(b[0] ?? 0).toString(16)}`);
  if (b[1] !== frameVersion) throw invalid(`unsupported frame version ${b[1] ?? 0}`);
  const kind = kindNames[b[2] ?? 255];
  if (kind === undefined) throw invalid(`unknown frame kind ${b[2] ?? 0}`);
  const level = b[3] ?? 0;
  const view = new DataView(b.buffer, b.byteOffset, frameHeaderBytes);
  const rawBytes = view.getUint32(4);
  const payloadBytes = view.getUint32(8);
  if (rawBytes > frameRawBytesMax) throw invalid(`frame stands for ${rawBytes} bytes, more than ${frameRawBytesMax}`);
  if (payloadBytes > framePayloadBytesMax) throw invalid(`payload of ${payloadBytes} bytes, more than ${framePayloadBytesMax}`);
  switch (kind) {
    case 'raw':
      if (level !== 0 || payloadBytes !== rawBytes || rawBytes === 0) throw invalid('a raw frame carries its bytes as they are');
      break;
    case 'zstd':
      if (level < 1 || level > zstdLevelMax || payloadBytes === 0 || rawBytes === 0) throw invalid(`bad zstd frame (level ${level}, ${payloadBytes} bytes)`);
      break;
    case 'zero':
      if (level !== 0 || payloadBytes !== 0 || rawBytes === 0) throw invalid('a zero frame has no payload');
      break;
    case 'end':
      if (level !== 0 || payloadBytes !== 0 || rawBytes !== 0) throw invalid('an end frame is empty');
      break;
    case 'ack':
      if (level !== 0 || payloadBytes !== ackPayloadBytes || rawBytes !== 0) throw invalid(`an ack frame carries ${ackPayloadBytes} bytes and stands for none`);
      break;
  }
  return { kind, level, rawBytes, payloadBytes };
}

export function encodeAck(ack: Ack): Uint8Array {
  const payload = new Uint8Array(ackPayloadBytes);
  const view = new DataView(payload.buffer);
  view.setFloat64(0, ack.wireBytes);
  view.setFloat64(8, ack.atMs);
  view.setFloat64(16, ack.idleMs);
  return encodeFrame({ kind: 'ack', level: 0, rawBytes: 0 }, payload);
}

/** An ack's payload, checked: a count is a non-negative safe integer, a time finite, a wait non-negative. */
export function decodeAckPayload(b: Uint8Array): Ack {
  if (b.byteLength !== ackPayloadBytes) throw invalid(`an ack carries ${ackPayloadBytes} bytes, got ${b.byteLength}`);
  const view = new DataView(b.buffer, b.byteOffset, ackPayloadBytes);
  const wireBytes = view.getFloat64(0);
  const atMs = view.getFloat64(8);
  const idleMs = view.getFloat64(16);
  if (!Number.isSafeInteger(wireBytes) || wireBytes < 0) throw invalid(`ack of ${wireBytes} bytes`);
  if (!Number.isFinite(atMs)) throw invalid(`ack at ${atMs} ms`);
  if (!Number.isFinite(idleMs) || idleMs < 0) throw invalid(`ack after ${idleMs} ms of waiting`);
  return { wireBytes, atMs, idleMs };
}

function invalid(message: string): BandwidthError {
  return new BandwidthError('bandwidth_frame_invalid', `invalid frame: ${message}`);
}
