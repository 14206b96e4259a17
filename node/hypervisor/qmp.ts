// QMP client: JSON lines over QEMU's unix monitor socket. One connection per VM; commands carry ids so
// replies are matched even if a caller timed out earlier, and async events go to listeners.
import { createConnection, type Socket } from 'node:net';
import { NovaError, type ErrorOptions } from '../errors.js';
import type { Logger } from '../log.js';

/** Deadline of one command when the caller gives none. */
export const commandTimeoutMsDefault = 10_000;
/** Deadline for connecting, reading the greeting and negotiating capabilities. */
export const connectTimeoutMsDefault = 5_000;
/** Commands in flight on one connection; more is a caller bug (or a wedged QEMU), not a queue to grow. */
export const pendingCommandsMax = 64;
/** Longest JSON line accepted from QEMU; query-blockstats of 16 disks is a few KiB. */
export const lineBytesMax = 1024 * 1024;
/** Event listeners per client; the driver and the migration code need a handful. */
export const eventListenersMax = 32;

export class QmpTimeoutError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('qmp_timeout', message, options);
  }
}

export class QmpDisconnectedError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('qmp_disconnected', message, options);
  }
}

/** QEMU answered a command with an error; `errorClass` is QEMU's class (e.g. GenericError, CommandNotFound). */
export class QmpCommandError extends NovaError {
  readonly errorClass: string;
  readonly desc: string;
  constructor(command: string, errorClass: string, desc: string) {
    super('qmp_command_failed', `QMP ${command} failed: ${errorClass}: ${desc}`, { details: { command, errorClass, desc } });
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** The peer did not speak QMP (bad greeting, oversize line, malformed JSON). */
export class QmpProtocolError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('qmp_protocol_error', message, options);
  }
}

export class QmpOverloadedError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('qmp_overloaded', message, options);
  }
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export type QmpEventListener = (event: QmpEvent) => void;
export type QmpCloseListener = (err: Error) => void;

export interface QmpConnectOptions {
  timeoutMs?: number;
  logger?: Logger;
}

export interface QmpCommandOptions {
  timeoutMs?: number;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export class QmpClient {
  readonly path: string;
  private readonly socket: Socket;
  private readonly logger: Logger | undefined;
  private readonly pending = new Map<string, Pending>();
  private readonly eventListeners = new Set<QmpEventListener>();
  private readonly closeListeners = new Set<QmpCloseListener>();
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private nextId = 1;
  private closeError: Error | null = null;
  private greetingValue: QmpGreeting | null = null;
  private onGreeting: ((g: QmpGreeting) => void) | null = null;

  private constructor(path: string, socket: Socket, logger: Logger | undefined) {
    this.path = path;
    this.socket = socket;
    this.logger = logger;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(new QmpDisconnectedError(`QMP socket ${path}: ${err.message}`, { cause: err })));
    socket.on('close', () => this.shutdown(new QmpDisconnectedError(`QMP socket ${path} closed`)));
  }

  /** Connects, reads the greeting and leaves capability negotiation mode, all within one deadline. */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? connectTimeoutMsDefault;
    const deadline = Date.now() + timeoutMs;
    const socket = createConnection({ path });
    const client = new QmpClient(path, socket, options.logger);
    try {
      const greeting = await new Promise<QmpGreeting>((resolve, reject) => {
        const timer = setTimeout(() => reject(new QmpTimeoutError(`no QMP greeting on ${path} within ${timeoutMs} ms`)), timeoutMs);
        client.onGreeting = (g) => {
          clearTimeout(timer);
          resolve(g);
        };
        client.closeListeners.add((err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
      client.closeListeners.clear();
      client.greetingValue = greeting;
      await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  get greeting(): QmpGreeting {
    if (this.greetingValue === null) throw new QmpProtocolError('QMP greeting not received yet');
    return this.greetingValue;
  }

  get closed(): boolean {
    return this.closeError !== null;
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  /** Runs one command; resolves with its `return` value, rejects with a typed QMP error. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: QmpCommandOptions = {}): Promise<T> {
    if (this.closeError !== null) {
      return Promise.reject(new QmpDisconnectedError(`QMP ${command}: not connected (${this.closeError.message})`, { cause: this.closeError }));
    }
    if (this.pending.size >= pendingCommandsMax) {
      return Promise.reject(new QmpOverloadedError(`QMP ${command}: ${pendingCommandsMax} commands already in flight on ${this.path}`));
    }
    const timeoutMs = options.timeoutMs ?? commandTimeoutMsDefault;
    const id = `nc-${this.nextId++}`;
    const message = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        // A late reply finds no entry and is dropped; QEMU may still carry the command out.
        this.pending.delete(id);
        reject(new QmpTimeoutError(`QMP ${command} got no reply within ${timeoutMs} ms`, { details: { command, timeoutMs } }));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(`${message}\n`);
    });
  }

  /** Adds an event listener; returns the function that removes it. */
  onEvent(listener: QmpEventListener): () => void {
    if (this.eventListeners.size >= eventListenersMax) throw new QmpOverloadedError(`more than ${eventListenersMax} QMP event listeners`);
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  /** Called once when the connection ends for any reason other than close(). */
  onClose(listener: QmpCloseListener): () => void {
    if (this.closeError !== null) {
      const err = this.closeError;
      queueMicrotask(() => listener(err));
      return () => undefined;
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  /** Closes the connection (QEMU keeps running); pending commands fail as disconnected. */
  close(): void {
    this.shutdown(new QmpDisconnectedError(`QMP connection to ${this.path} closed by us`), false);
    this.socket.destroy();
  }

  private shutdown(err: Error, notify = true): void {
    if (this.closeError !== null) return;
    this.closeError = err;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new QmpDisconnectedError(`QMP ${p.command}: connection lost before the reply (${err.message})`, { cause: err }));
    }
    const listeners = [...this.closeListeners];
    this.closeListeners.clear();
    this.eventListeners.clear();
    this.chunks = [];
    this.bufferedBytes = 0;
    if (notify) for (const l of listeners) l(err);
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a, start); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      const piece = chunk.subarray(start, nl);
      if (this.bufferedBytes + piece.length > lineBytesMax) return this.oversize();
      const line = this.chunks.length === 0 ? piece : Buffer.concat([...this.chunks, piece]);
      this.chunks = [];
      this.bufferedBytes = 0;
      start = nl + 1;
      this.onLine(line.toString('utf8'));
      if (this.closeError !== null) return;
    }
    const rest = chunk.subarray(start);
    if (rest.length === 0) return;
    if (this.bufferedBytes + rest.length > lineBytesMax) return this.oversize();
    this.chunks.push(rest);
    this.bufferedBytes += rest.length;
  }

  private oversize(): void {
    const err = new QmpProtocolError(`QMP line from ${this.path} exceeds ${lineBytesMax} bytes`);
    this.logger?.warn({ path: this.path, lineBytesMax }, 'QMP line too long; dropping the connection');
    this.shutdown(new QmpDisconnectedError(err.message, { cause: err }));
    this.socket.destroy();
  }

  private onLine(text: string): void {
    if (text.trim() === '') return;
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch (err) {
      const perr = new QmpProtocolError(`malformed QMP JSON from ${this.path}`, { cause: err });
      this.shutdown(new QmpDisconnectedError(perr.message, { cause: perr }));
      this.socket.destroy();
      return;
    }
    if (!isObject(msg)) return;
    if (this.greetingValue === null && this.onGreeting !== null) {
      if (!isObject(msg.QMP)) {
        const perr = new QmpProtocolError(`${this.path} did not greet with QMP`);
        this.shutdown(new QmpDisconnectedError(perr.message, { cause: perr }));
        this.socket.destroy();
        return;
      }
      const q = msg.QMP;
      const onGreeting = this.onGreeting;
      this.onGreeting = null;
      onGreeting({
        version: q.version as QmpGreeting['version'],
        capabilities: Array.isArray(q.capabilities) ? (q.capabilities as string[]) : [],
      });
      return;
    }
    if (typeof msg.event === 'string') {
      const event: QmpEvent = {
        event: msg.event,
        data: isObject(msg.data) ? msg.data : {},
        timestamp: isObject(msg.timestamp) ? (msg.timestamp as QmpEvent['timestamp']) : { seconds: 0, microseconds: 0 },
      };
      for (const l of [...this.eventListeners]) {
        try {
          l(event);
        } catch (err) {
          this.logger?.error({ err, event: event.event }, 'QMP event listener threw');
        }
      }
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id === undefined ? undefined : this.pending.get(id);
    if (id === undefined || p === undefined) {
      // Replies to timed-out commands, or QEMU's id-less answer to input it could not parse.
      this.logger?.debug({ path: this.path, id }, 'QMP reply without a waiting command');
      return;
    }
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (isObject(msg.error)) {
      const cls = typeof msg.error.class === 'string' ? msg.error.class : 'GenericError';
      const desc = typeof msg.error.desc === 'string' ? msg.error.desc : '';
      p.reject(new QmpCommandError(p.command, cls, desc));
    } else {
      p.resolve(msg.return);
    }
  }
}
