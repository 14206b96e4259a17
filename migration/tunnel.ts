// The tunnel between a local unix socket (a QEMU migration stream or an NBD connection) and a mesh byte channel.
// Each direction goes through the bandwidth codec: the sender frames and compresses at the level its controller
// picks, the receiver checks and expands. The tunnel never judges a migration: QEMU on both ends does, so a broken
// tunnel only ever shows up as a failed QEMU migration, never as a silently corrupt one.
import { createServer, connect, type Server, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { FrameDecoder, FrameEncoder, type CompressionMode, type EncoderStats, type LinkHint, type RateLimiter } from '../bandwidth/index.js';
import type { ByteChannel } from '../node/migration/protocol.js';
import type { EngineLogger } from '../node/migration/engine.js';
import { MigrationEngineError } from './errors.js';

/** Connections a tunnel listener accepts over its life (one RAM stream; one NBD connection per disk, plus reconnects). */
export const tunnelConnectionsMax = 64;
/**
 * How often a tunnel acks what it received (when it received anything since): the other end's controller measures
 * the link's delivery from these. 20 ms: a few samples within the first 100 ms, about 1.4 kB/s against the data.
 */
export const ackIntervalMs = 20;
/** How long connecting to a local QEMU socket may take. */
export const localConnectTimeoutMs = 5_000;

export interface TunnelOptions {
  compression: CompressionMode;
  limiters?: readonly RateLimiter[];
  linkHint?: LinkHint;
  logger: EngineLogger;
  label: string;
}

/** Both directions of one connection; `stats()` is the outbound encoder's (what this end put on the link). */
export class Tunnel {
  readonly encoder: FrameEncoder;
  readonly decoder: FrameDecoder;
  readonly done: Promise<void>;
  /**
   * Settles when the outbound direction has finished: resolved once the local socket's last byte and the end frame
   * went to the channel and its write side was closed, rejected if that direction failed. A source must not commit
   * the move before its RAM tunnel got here: QEMU reports `completed` once it wrote to the socket, while the
   * tunnel may still hold the stream's tail.
   */
  readonly sent: Promise<void>;
  private markSent: { resolve: () => void; reject: (err: unknown) => void } | null = null;

  constructor(
    private readonly socket: Socket,
    private readonly channel: ByteChannel,
    private readonly opts: TunnelOptions,
    signal: AbortSignal,
  ) {
    this.encoder = new FrameEncoder({
      compression: opts.compression,
      ...(opts.limiters === undefined ? {} : { limiters: opts.limiters }),
      ...(opts.linkHint === undefined ? {} : { linkHint: opts.linkHint }),
    });
    this.decoder = new FrameDecoder({ onAck: (ack) => this.encoder.observeAck(ack) });
    // Errors surface through the socket's iterator and writes; without a listener one would crash the process.
    socket.on('error', (err) => opts.logger.debug({ tunnel: opts.label, err: err.message }, 'local socket error'));
    this.sent = new Promise<void>((resolve, reject) => (this.markSent = { resolve, reject }));
    this.sent.catch(() => undefined); // observed by whoever awaits it; `done` reports the failure too
    this.done = this.run(signal);
  }

  stats(): EncoderStats {
    return this.encoder.stats();
  }

  private async run(signal: AbortSignal): Promise<void> {
    const onAbort = (): void => this.fail(new MigrationEngineError('migration_aborted', `${this.opts.label}: tunnel aborted`, { cause: signal.reason }));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    // Acks of the inbound direction ride the outbound one (the encoder drops them once it has ended).
    let acked = 0;
    const acker = setInterval(() => {
      const ack = this.decoder.ackNow();
      if (ack.wireBytes === acked) return;
      acked = ack.wireBytes;
      this.encoder.postAck(ack);
    }, ackIntervalMs);
    try {
      // A failing direction tears both down at once: the other may be blocked on a peer that will never send.
      const failFast = (p: Promise<void>): Promise<void> =>
        p.catch((err: unknown) => {
          this.fail(err instanceof Error ? err : new Error(String(err)));
          throw err;
        });
      const results = await Promise.allSettled([failFast(this.outbound(signal)), failFast(this.inbound())]);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      // What the codec did, either way (a migration's tunnels are often cut once QEMU is done with them).
      const e = this.encoder.stats();
      const d = this.decoder.stats();
      this.opts.logger.info(
        {
          tunnel: this.opts.label,
          sentBytes: e.rawBytes,
          wireBytes: e.wireBytes,
          ratio: +e.ratio.toFixed(2),
          level: e.level,
          levelChanges: e.levelChanges,
          levelHistory: e.levelHistory,
          frames: e.frames,
          linkEstimateBytesPerSec: e.wireThroughputBytesPerSec,
          compressBytesPerSec: e.compressBytesPerSec,
          receivedBytes: d.rawBytes,
          acks: { sent: e.acksSent, received: d.acks },
          heldForAcksMs: e.heldForAcksMs,
          ...(failed === undefined ? {} : { err: String(failed.reason) }),
        },
        failed === undefined ? 'tunnel closed' : 'tunnel ended with an error',
      );
    } finally {
      clearInterval(acker);
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Local socket → frames → channel, then the end frame and a half-close. */
  private async outbound(signal: AbortSignal): Promise<void> {
    // Not the socket's default iterator: it destroys the socket when the read side ends, cutting the other direction.
    const reads = this.socket.iterator({ destroyOnReturn: false }) as AsyncIterable<Uint8Array>;
    try {
      await this.encoder.pump(reads, (frame) => this.channel.write(frame, signal), signal);
      await this.channel.closeWrite(signal);
      this.markSent?.resolve();
    } catch (err) {
      this.markSent?.reject(err);
      throw err;
    }
  }

  /** Channel → frames checked and expanded → local socket, then a half-close. */
  private async inbound(): Promise<void> {
    for await (const bytes of this.decoder.decode(this.channel.read())) await writeSocket(this.socket, bytes);
    // The peer's direction is over, its acks with it: this end's sender must not wait for more.
    this.encoder.peerEnded();
    if (!this.socket.destroyed) this.socket.end();
  }

  private fail(err: Error): void {
    this.socket.destroy();
    this.channel.abort(err);
  }
}

export function writeSocket(socket: Socket, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed || socket.writableEnded) {
      reject(new MigrationEngineError('migration_tunnel_closed', 'local socket closed while the tunnel was writing to it'));
      return;
    }
    // Resolving once flushed is the back-pressure: a local reader (QEMU) slower than the link is waited for, not buffered.
    socket.write(bytes, (err) => (err == null ? resolve() : reject(err)));
  });
}

/**
 * A unix socket the node listens on for a local QEMU (the source's migration stream, or its NBD client), each
 * connection handed to `onConnection`. Bounded: a QEMU that reconnects in a loop cannot open unlimited channels.
 */
export class TunnelListener {
  private accepted = 0;
  private constructor(
    private readonly server: Server,
    readonly path: string,
  ) {}

  static async listen(path: string, onConnection: (socket: Socket) => void, logger: EngineLogger): Promise<TunnelListener> {
    await rm(path, { force: true });
    let listener: TunnelListener | null = null;
    const server = createServer({ allowHalfOpen: true }, (socket) => {
      if (listener === null || listener.accepted >= tunnelConnectionsMax) {
        logger.warn({ path, accepted: listener?.accepted ?? 0 }, 'tunnel listener refused a connection (limit reached)');
        socket.destroy();
        return;
      }
      listener.accepted++;
      onConnection(socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    listener = new TunnelListener(server, path);
    return listener;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await rm(this.path, { force: true });
  }
}

/** Connects to a local unix socket a QEMU listens on. */
export function connectLocal(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path, allowHalfOpen: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new MigrationEngineError('migration_tunnel_closed', `connecting to ${path} timed out after ${localConnectTimeoutMs} ms`));
    }, localConnectTimeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
