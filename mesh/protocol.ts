// The protocol layer the rest of NovaCron uses to talk to peers: member-gated handlers, length-prefixed
// messages with a size limit, a deadline on every request, back-pressure on writes, a request/response
// helper with a validation hook, and raw byte streams for bulk transfer that feed the link model.
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils';
import {
  MeshError,
  MeshInvalidMessageError,
  MeshMessageTooLargeError,
  MeshNotMemberError,
  MeshPeerUnreachableError,
  MeshRemoteError,
  MeshAnswerLostError,
  MeshStreamRefusedError,
  MeshTimeoutError,
  meshErrorMessage,
} from './errors.js';
import type { MeshLogger } from './log.js';

/** Largest length-prefixed message any protocol accepts; bulk data goes over byte streams instead. */
export const messageBytesMax = 1024 * 1024;
/** Deadline of a request (dial, write, read) unless the caller gives its own. */
export const requestTimeoutMsDefault = 10_000;
/** Deadline for a handler to read the request and write its answer. */
export const handlerTimeoutMsDefault = 30_000;
/** Concurrent inbound streams per protocol per connection. */
export const inboundStreamsPerProtocolMax = 64;
/** Concurrent outbound streams per protocol per connection. */
export const outboundStreamsPerProtocolMax = 64;
/** A bulk stream with no bytes in either direction for this long is aborted by libp2p. */
export const bulkInactivityTimeoutMs = 60_000;

/** Who may open cluster protocols. Settable: config and join tokens today, Raft membership later. */
export interface MemberProvider {
  isMember(peerId: string): boolean;
}

export interface Clock {
  nowMs(): number;
}

export const systemClock: Clock = { nowMs: () => Date.now() };

/** Where bulk streams report bytes moved; LinkModel fits. */
export interface TransferSink {
  recordTransfer(peer: string, bytes: number, durationMs: number, nowMs: number): void;
}

/** What the layer needs of a libp2p node. */
export type ProtocolHost = Pick<Libp2p, 'handle' | 'unhandle' | 'dialProtocol' | 'peerId'>;

export interface ProtocolLayerOptions {
  host: ProtocolHost;
  members: MemberProvider;
  logger: MeshLogger;
  transfers?: TransferSink;
  clock?: Clock;
  messageBytesMax?: number;
}

export interface HandleOptions {
  /** Default true: only members may open it. The join protocol is the exception. */
  membersOnly?: boolean;
  maxInboundStreams?: number;
}

export interface StreamContext {
  peer: string;
  connection: Connection;
  protocol: string;
}

export interface RequestContext extends StreamContext {
  signal: AbortSignal;
}

export type Validator<T> = (value: unknown) => T;

export interface RequestOptions<Res> {
  timeoutMs?: number;
  /** Checks and narrows the answer; throw to reject it (it becomes MeshInvalidMessageError). */
  validate: Validator<Res>;
  signal?: AbortSignal;
}

export interface HandleRequestOptions<Req> extends HandleOptions {
  validate: Validator<Req>;
  timeoutMs?: number;
}

type Envelope = { ok: true; body: unknown } | { ok: false; code: string; message: string };

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

export function decodeJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(bytes)) as unknown;
  } catch (err) {
    throw new MeshInvalidMessageError(`message is not UTF-8 JSON: ${meshErrorMessage(err)}`, { cause: err });
  }
}

function toPeerId(peer: string | PeerId): PeerId {
  return typeof peer === 'string' ? peerIdFromString(peer) : peer;
}

/** Aborts on the caller's signal or after timeoutMs, whichever comes first. */
function deadline(timeoutMs: number, signal?: AbortSignal): AbortSignal {
  const timeout = AbortSignal.timeout(timeoutMs);
  return signal === undefined ? timeout : AbortSignal.any([timeout, signal]);
}

/**
 * Length-prefixed messages on one stream, each at most maxBytes. An oversize message in either direction
 * resets the stream and raises MeshMessageTooLargeError; an expired deadline resets it and raises
 * MeshTimeoutError. Writes wait for the stream to drain (libp2p's send() returning false).
 */
export class MessageChannel {
  private readonly lp: LengthPrefixedStream<Stream>;

  constructor(
    readonly stream: Stream,
    readonly maxBytes: number = messageBytesMax,
  ) {
    this.lp = lpStream(stream, { maxDataLength: maxBytes });
  }

  async send(message: Uint8Array, signal: AbortSignal): Promise<void> {
    if (message.byteLength > this.maxBytes) {
      const err = new MeshMessageTooLargeError(`message of ${message.byteLength} bytes exceeds the limit of ${this.maxBytes}`, {
        details: { bytes: message.byteLength, limitBytes: this.maxBytes },
      });
      this.stream.abort(err);
      throw err;
    }
    try {
      await this.lp.write(message, { signal });
    } catch (err) {
      throw this.fail(err, signal, 'write');
    }
  }

  async receive(signal: AbortSignal): Promise<Uint8Array> {
    try {
      return (await this.lp.read({ signal })).subarray();
    } catch (err) {
      throw this.fail(err, signal, 'read');
    }
  }

  async sendJson(value: unknown, signal: AbortSignal): Promise<void> {
    await this.send(encodeJson(value), signal);
  }

  async receiveJson(signal: AbortSignal): Promise<unknown> {
    return decodeJson(await this.receive(signal));
  }

  /** Maps a stream failure to a typed error and resets the stream so neither side waits on it. */
  private fail(err: unknown, signal: AbortSignal, op: string): MeshError {
    let mapped: MeshError;
    if (err instanceof MeshError) mapped = err;
    else if (signal.aborted) mapped = new MeshTimeoutError(`${op} on ${this.stream.protocol} did not finish before its deadline`, { cause: err });
    else if (err instanceof Error && (err.name === 'InvalidDataLengthError' || err.name === 'InvalidDataLengthLengthError')) {
      mapped = new MeshMessageTooLargeError(`incoming message exceeds the limit of ${this.maxBytes} bytes`, { cause: err, details: { limitBytes: this.maxBytes } });
    } else {
      mapped = new MeshStreamRefusedError(`stream ${this.stream.protocol} failed during ${op}: ${meshErrorMessage(err)}`, { cause: err });
    }
    if (this.stream.status === 'open') this.stream.abort(mapped);
    return mapped;
  }
}

/**
 * A raw byte stream for bulk transfer. Writes respect back-pressure; bytes in both directions and the
 * time between the first and last byte are reported to the link model once the stream closes.
 */
export class BulkStream {
  bytesSent = 0;
  bytesReceived = 0;
  private firstByteAtMs: number | null = null;
  private lastByteAtMs: number | null = null;
  private reported = false;

  constructor(
    readonly stream: Stream,
    readonly peer: string,
    private readonly clock: Clock,
    private readonly sink: TransferSink | undefined,
  ) {
    stream.inactivityTimeout = bulkInactivityTimeoutMs;
    stream.addEventListener('close', () => this.report(), { once: true });
  }

  /** Sends a chunk; resolves once the stream can take more (waits on drain when send() says so). */
  async write(chunk: Uint8Array, signal?: AbortSignal): Promise<void> {
    this.touch();
    const more = this.stream.send(chunk);
    this.bytesSent += chunk.byteLength;
    this.touch();
    if (!more) await this.stream.onDrain(signal === undefined ? undefined : { signal });
  }

  /** Yields incoming chunks until the remote closes its side. */
  async *read(): AsyncGenerator<Uint8Array> {
    for await (const chunk of this.stream) {
      const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray();
      this.touch();
      this.bytesReceived += bytes.byteLength;
      yield bytes;
    }
  }

  /** Closes our writing side after flushing; the remote sees end of stream. */
  async closeWrite(signal?: AbortSignal): Promise<void> {
    await this.stream.close(signal === undefined ? undefined : { signal });
    this.report();
  }

  abort(err: Error): void {
    this.stream.abort(err);
    this.report();
  }

  private touch(): void {
    const now = this.clock.nowMs();
    this.firstByteAtMs ??= now;
    this.lastByteAtMs = now;
  }

  private report(): void {
    if (this.reported || this.sink === undefined || this.firstByteAtMs === null || this.lastByteAtMs === null) return;
    const bytes = this.bytesSent + this.bytesReceived;
    if (bytes === 0) return;
    this.reported = true;
    this.sink.recordTransfer(this.peer, bytes, this.lastByteAtMs - this.firstByteAtMs, this.lastByteAtMs);
  }
}

export class ProtocolLayer {
  readonly maxBytes: number;
  private readonly host: ProtocolHost;
  private readonly log: MeshLogger;
  private readonly clock: Clock;
  private readonly registered = new Set<string>();
  /** Refused streams, by protocol: a cheap counter for status and tests. */
  readonly refusals = new Map<string, number>();

  constructor(private readonly options: ProtocolLayerOptions) {
    this.host = options.host;
    this.log = options.logger;
    this.clock = options.clock ?? systemClock;
    this.maxBytes = options.messageBytesMax ?? messageBytesMax;
  }

  get members(): MemberProvider {
    return this.options.members;
  }

  /** Registers a raw stream handler behind the membership gate. */
  async handleStream(protocol: string, handler: (stream: Stream, ctx: StreamContext) => Promise<void>, options: HandleOptions = {}): Promise<void> {
    const membersOnly = options.membersOnly ?? true;
    await this.host.handle(
      protocol,
      async (stream, connection) => {
        const peer = connection.remotePeer.toString();
        if (membersOnly && !this.options.members.isMember(peer)) {
          // Refused before a byte is read: a non-member learns nothing but that the stream was reset.
          this.refusals.set(protocol, (this.refusals.get(protocol) ?? 0) + 1);
          this.log.warn({ peer, protocol, remoteAddr: connection.remoteAddr.toString() }, 'refused cluster protocol stream from a non-member peer');
          stream.abort(new MeshNotMemberError(`peer ${peer} is not a member of this cluster`));
          return;
        }
        try {
          await handler(stream, { peer, connection, protocol });
        } catch (err) {
          this.log.debug({ err, peer, protocol }, 'protocol handler failed');
          if (stream.status === 'open') stream.abort(err instanceof Error ? err : new Error(String(err)));
        }
      },
      {
        maxInboundStreams: options.maxInboundStreams ?? inboundStreamsPerProtocolMax,
        maxOutboundStreams: outboundStreamsPerProtocolMax,
        // Relayed (limited) connections are how a node behind NAT is reached at all.
        runOnLimitedConnection: true,
      },
    );
    this.registered.add(protocol);
  }

  /** Request/response: one validated request in, one answer (or a typed error) out, then the stream closes. */
  async handleRequest<Req, Res>(
    protocol: string,
    handler: (request: Req, ctx: RequestContext) => Promise<Res>,
    options: HandleRequestOptions<Req>,
  ): Promise<void> {
    const timeoutMs = options.timeoutMs ?? handlerTimeoutMsDefault;
    await this.handleStream(
      protocol,
      async (stream, ctx) => {
        const signal = AbortSignal.timeout(timeoutMs);
        const channel = new MessageChannel(stream, this.maxBytes);
        let envelope: Envelope;
        let request: Req;
        try {
          request = options.validate(await channel.receiveJson(signal));
        } catch (err) {
          if (err instanceof MeshTimeoutError || err instanceof MeshMessageTooLargeError || err instanceof MeshStreamRefusedError) throw err;
          await channel.sendJson({ ok: false, code: 'mesh_invalid_message', message: `invalid request: ${meshErrorMessage(err)}` } satisfies Envelope, signal);
          await stream.close({ signal });
          return;
        }
        try {
          envelope = { ok: true, body: await handler(request, { ...ctx, signal }) };
        } catch (err) {
          const code = err instanceof Error && typeof (err as Error & { code?: unknown }).code === 'string' ? String((err as Error & { code?: unknown }).code) : 'internal';
          envelope = { ok: false, code, message: meshErrorMessage(err) };
        }
        await channel.sendJson(envelope, signal);
        await stream.close({ signal });
      },
      options,
    );
  }

  async unhandle(protocol: string): Promise<void> {
    if (!this.registered.delete(protocol)) return;
    await this.host.unhandle(protocol);
  }

  async unhandleAll(): Promise<void> {
    for (const p of [...this.registered]) await this.unhandle(p);
  }

  /** Opens a stream to a peer, within the deadline. */
  async openStream(peer: string | PeerId, protocol: string, signal: AbortSignal): Promise<Stream> {
    try {
      return await this.host.dialProtocol(toPeerId(peer), protocol, { signal, runOnLimitedConnection: true });
    } catch (err) {
      if (signal.aborted) throw new MeshTimeoutError(`opening ${protocol} to ${peer.toString()} did not finish before its deadline`, { cause: err });
      if (err instanceof Error && err.name === 'UnsupportedProtocolError') {
        throw new MeshStreamRefusedError(`peer ${peer.toString()} does not speak ${protocol}`, { cause: err });
      }
      throw new MeshPeerUnreachableError(`cannot open ${protocol} to ${peer.toString()}: ${meshErrorMessage(err)}`, { cause: err });
    }
  }

  /** Sends one request and returns the validated answer. Every step shares one deadline. */
  async request<Res>(peer: string | PeerId, protocol: string, body: unknown, options: RequestOptions<Res>): Promise<Res> {
    const timeoutMs = options.timeoutMs ?? requestTimeoutMsDefault;
    const signal = deadline(timeoutMs, options.signal);
    const stream = await this.openStream(peer, protocol, signal);
    const channel = new MessageChannel(stream, this.maxBytes);
    let raw: unknown;
    try {
      await channel.sendJson(body, signal);
      raw = await channel.receiveJson(signal);
    } catch (err) {
      // Once bytes left, a reset no longer proves the remote did nothing: say so, so writes are not retried blindly.
      if (err instanceof MeshStreamRefusedError && !(err instanceof MeshAnswerLostError)) {
        throw new MeshAnswerLostError(`the answer on ${protocol} from ${peer.toString()} was lost (the request may have been handled): ${err.message}`, { cause: err, details: { peer: peer.toString(), protocol } });
      }
      throw err;
    }
    // The answer is complete; closing our side lets both ends release the stream.
    void stream.close().catch(() => undefined);
    const envelope = parseEnvelope(raw);
    if (!envelope.ok) {
      throw new MeshRemoteError(envelope.message, { details: { remoteCode: envelope.code, peer: peer.toString(), protocol } });
    }
    try {
      return options.validate(envelope.body);
    } catch (err) {
      throw new MeshInvalidMessageError(`answer on ${protocol} from ${peer.toString()} failed validation: ${meshErrorMessage(err)}`, { cause: err });
    }
  }

  /** Opens a bulk byte stream; bytes moved are recorded into the link model when it closes. */
  async openBulk(peer: string | PeerId, protocol: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<BulkStream> {
    const stream = await this.openStream(peer, protocol, deadline(options.timeoutMs ?? requestTimeoutMsDefault, options.signal));
    return new BulkStream(stream, peer.toString(), this.clock, this.options.transfers);
  }

  /** Accepts bulk byte streams from members. */
  async handleBulk(protocol: string, handler: (bulk: BulkStream, ctx: StreamContext) => Promise<void>, options: HandleOptions = {}): Promise<void> {
    await this.handleStream(protocol, (stream, ctx) => handler(new BulkStream(stream, ctx.peer, this.clock, this.options.transfers), ctx), options);
  }
}

function parseEnvelope(raw: unknown): Envelope {
  if (typeof raw === 'object' && raw !== null) {
    const r = raw as Record<string, unknown>;
    if (r.ok === true && 'body' in r) return { ok: true, body: r.body };
    if (r.ok === false && typeof r.code === 'string' && typeof r.message === 'string') return { ok: false, code: r.code, message: r.message };
  }
  throw new MeshInvalidMessageError('answer is not a response envelope');
}
