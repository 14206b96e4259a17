// The two mesh protocols of a live migration between the source and the target node (members only, as every cluster
// protocol): `/novacron/migrate/1.0.0` carries small validated JSON requests from the source to the target (prepare, loaded,
// go live), `/novacron/migrate-data/1.0.0` carries the byte streams of the migration (QEMU's RAM stream, NBD), each
// opened with a length-prefixed JSON header naming the migration and the channel kind.
import { NovaError } from '../errors.js';

export const migrateProtocol = '/novacron/migrate/1.0.0';
export const migrateDataProtocol = '/novacron/migrate-data/1.0.0';
/** Preparing may fetch base images from peers and start QEMU: bounded, but generously. */
export const prepareTimeoutMs = 10 * 60_000;
/** Going live: the target waits for its state to show the ownership move, then stops NBD and runs `cont`. */
export const goLiveTimeoutMs = 30_000;
/** Concurrent control requests per peer connection (one migration needs one at a time). */
export const migrateInboundStreamsMax = 16;
/** Data streams per peer connection: a RAM channel and NBD channels of a few migrations at once. */
export const migrateDataInboundStreamsMax = 32;
/** A data stream's header is tiny; anything larger is refused. */
export const dataHeaderBytesMax = 1024;
/** How long the target waits for the header of a data stream before dropping it. */
export const dataHeaderTimeoutMs = 10_000;

export type ChannelKind = 'ram' | 'nbd';

export type MigrateRequest = { op: 'prepare'; migrationId: string } | { op: 'loaded'; migrationId: string } | { op: 'goLive'; migrationId: string };

/**
 * Asking whether the target loaded the whole stream: the target's QEMU may still be reading the tail the tunnel
 * delivered (bounded by migration/target.ts incomingFinishTimeoutMs), plus the round trip.
 */
export const loadedTimeoutMs = 45_000;

export interface LoadedAnswer {
  /** Time on the target between receiving the request and answering (its QEMU finishing the load). */
  handledMs: number;
}

export interface PrepareAnswer {
  /** NBD export names of the target's new disks, in spec order. */
  exports: string[];
}

export interface GoLiveAnswer {
  /** Time on the target between receiving the request and the guest running: the source subtracts it from the round trip. */
  handledMs: number;
  /** True when this request did the `cont`; false when the target had already gone live on its own (state watch). */
  resumedNow: boolean;
  /** Target clock: when the guest resumed (for logs; clocks of two nodes are not compared). */
  resumedAtMs: number;
  /** How long before sending this answer the guest resumed (0 when this request did it; more when the state watch was first). */
  resumedAgoMs: number;
}

export interface DataHeader {
  migrationId: string;
  kind: ChannelKind;
}

export class MigrationProtocolError extends NovaError {
  constructor(message: string) {
    super('migration_protocol', message);
  }
}

const idPattern = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

function migrationId(v: unknown): string {
  if (typeof v !== 'string' || !idPattern.test(v)) throw new MigrationProtocolError('migrationId is missing or malformed');
  return v;
}

export function validateMigrateRequest(v: unknown): MigrateRequest {
  if (typeof v !== 'object' || v === null) throw new MigrationProtocolError('request is not an object');
  const r = v as Record<string, unknown>;
  if (r.op !== 'prepare' && r.op !== 'loaded' && r.op !== 'goLive') throw new MigrationProtocolError('unknown op');
  return { op: r.op, migrationId: migrationId(r.migrationId) };
}

export const exportNameCharsMax = 128;
/** Exports per migration: one per disk; a VM spec has far fewer disks than this. */
export const exportsMax = 64;

export function validatePrepareAnswer(v: unknown): PrepareAnswer {
  const e = (v as { exports?: unknown } | null)?.exports;
  if (!Array.isArray(e) || e.length > exportsMax || !e.every((x) => typeof x === 'string' && x.length > 0 && x.length <= exportNameCharsMax)) {
    throw new MigrationProtocolError('exports must be a list of export names');
  }
  return { exports: e as string[] };
}

export function validateLoadedAnswer(v: unknown): LoadedAnswer {
  const h = (v as { handledMs?: unknown } | null)?.handledMs;
  if (typeof h !== 'number' || !Number.isFinite(h) || h < 0) throw new MigrationProtocolError('not a loaded answer');
  return { handledMs: h };
}

export function validateGoLiveAnswer(v: unknown): GoLiveAnswer {
  const a = v as Partial<GoLiveAnswer> | null;
  const num = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x >= 0;
  if (a === null || typeof a !== 'object' || !num(a.handledMs) || !num(a.resumedAtMs) || !num(a.resumedAgoMs) || typeof a.resumedNow !== 'boolean') {
    throw new MigrationProtocolError('not a go-live answer');
  }
  return { handledMs: a.handledMs, resumedNow: a.resumedNow, resumedAtMs: a.resumedAtMs, resumedAgoMs: a.resumedAgoMs };
}

export function validateDataHeader(v: unknown): DataHeader {
  if (typeof v !== 'object' || v === null) throw new MigrationProtocolError('header is not an object');
  const r = v as Record<string, unknown>;
  if (r.kind !== 'ram' && r.kind !== 'nbd') throw new MigrationProtocolError('kind must be ram or nbd');
  return { migrationId: migrationId(r.migrationId), kind: r.kind };
}

/** Header framing: 2 bytes big-endian length, then that much JSON. */
export function encodeDataHeader(h: DataHeader): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify(h));
  if (body.byteLength > dataHeaderBytesMax) throw new MigrationProtocolError('header too large');
  const out = new Uint8Array(2 + body.byteLength);
  out[0] = body.byteLength >> 8;
  out[1] = body.byteLength & 0xff;
  out.set(body, 2);
  return out;
}

/** The byte stream a migration channel rides on (the mesh's BulkStream satisfies it). */
export interface ByteChannel {
  write(chunk: Uint8Array, signal?: AbortSignal): Promise<void>;
  read(): AsyncGenerator<Uint8Array>;
  closeWrite(signal?: AbortSignal): Promise<void>;
  abort(err: Error): void;
}

/**
 * Reads the header off a freshly accepted stream and returns it with a channel that yields the bytes after the
 * header first. Chunk boundaries are arbitrary: the header may arrive split, or share a chunk with payload.
 */
export async function readDataHeader(stream: ByteChannel, signal: AbortSignal): Promise<{ header: DataHeader; channel: ByteChannel }> {
  const it = stream.read();
  let buf = new Uint8Array(0);
  const aborted = new Promise<never>((_, reject) => {
    const fail = (): void => reject(new MigrationProtocolError('no data stream header before the deadline'));
    if (signal.aborted) fail();
    else signal.addEventListener('abort', fail, { once: true });
  });
  aborted.catch(() => undefined);
  let need = 2;
  for (;;) {
    if (buf.byteLength >= need) {
      if (need === 2) {
        const len = ((buf[0] ?? 0) << 8) | (buf[1] ?? 0);
        if (len === 0 || len > dataHeaderBytesMax) throw new MigrationProtocolError(`header length ${len} is out of bounds`);
        need = 2 + len;
        continue;
      }
      break;
    }
    const next = await Promise.race([it.next(), aborted]);
    if (next.done === true) throw new MigrationProtocolError('stream ended before its header');
    const joined = new Uint8Array(buf.byteLength + next.value.byteLength);
    joined.set(buf);
    joined.set(next.value, buf.byteLength);
    buf = joined;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(buf.subarray(2, need)));
  } catch {
    throw new MigrationProtocolError('header is not JSON');
  }
  const header = validateDataHeader(parsed);
  const rest = buf.subarray(need);
  const channel: ByteChannel = {
    write: (chunk, s) => stream.write(chunk, s),
    closeWrite: (s) => stream.closeWrite(s),
    abort: (err) => stream.abort(err),
    read: async function* () {
      if (rest.byteLength > 0) yield rest;
      for (;;) {
        const n = await it.next();
        if (n.done === true) return;
        yield n.value;
      }
    },
  };
  return { header, channel };
}
