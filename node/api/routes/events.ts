// Server-sent events of cluster state changes (`GET /v1/events`, role viewer) for the UI and the CLI's watch
// commands. Every change the cluster state machine applies becomes one event:
//
//   event: token.create
//   id: 42                                        (the Raft index of the entry)
//   data: {"index":42,"type":"token.create","ids":["…"],"at":1700000000000}
//
// migration.* events also carry `migration` (phase, reason, progress figures) so a client follows a migration live.
//
// `at` is the proposer's clock of the command (ms since the epoch; this node's clock for snapshot.restore).
// A comment line (`: heartbeat`) every eventsHeartbeatMs keeps proxies from closing an idle stream.
// Reconnecting with `Last-Event-ID` (or `?after=INDEX`) replays the events after that index that the bounded
// ring (eventsRingMax) still holds; when the client is further behind than the ring reaches (or ahead of this
// node, or the state was replaced by a snapshot), it gets `event: reset` and must re-read the state, then
// continue from the reset's `id`. Each client has a bounded send queue (eventsClientQueueMax chunks waiting for
// the socket to drain): a client that overflows it is disconnected, so a slow reader never grows memory.
// On a node without a cluster the stream (loopback only, like every route then) stays open and delivers from
// `cluster.init` on; a stream opened without a token is closed right after that event, so the client
// reconnects with a token now that tokens are enforced.
import type { ServerResponse } from 'node:http';
import Type from 'typebox';
import type { ChangeEvent, ClusterStateMachine, MigrationPhase, MigrationProgress } from '../../../consensus/cluster/index.js';
import type { Api } from '../server.js';

/** Interval of the comment heartbeat that keeps proxies and load balancers from closing an idle stream. */
export const eventsHeartbeatMs = 15_000;
/** Recent events kept for replay after a reconnect (`Last-Event-ID` / `?after=`). */
export const eventsRingMax = 1_024;
/** Chunks (events, heartbeats) queued for one client whose socket is not draining; beyond this it is disconnected. */
export const eventsClientQueueMax = 256;
/** Reconnect delay suggested to EventSource clients (the SSE `retry:` field). */
export const eventsRetryMs = 2_000;

export interface ClusterEvent {
  readonly index: number;
  readonly type: string;
  readonly ids: readonly string[];
  /** ms since the epoch. */
  readonly at: number;
  /** migration.* events: the record after the change. */
  readonly migration?: {
    readonly id: string;
    readonly vm: string;
    readonly source: string;
    readonly target: string;
    readonly phase: MigrationPhase;
    readonly reason: string | null;
    readonly progress: MigrationProgress;
  };
}

export type Replay = { kind: 'events'; events: ClusterEvent[] } | { kind: 'reset'; index: number; reason: string };

/**
 * The last `capacity` events, oldest first. `floor` is the highest index whose event may be missing here
 * (evicted, before this node started listening, or replaced by a snapshot): replays from below it must reset.
 */
export class EventRing {
  private readonly buf: ClusterEvent[] = [];
  private start = 0;
  private floor: number;
  private last: number;

  constructor(
    readonly capacity: number = eventsRingMax,
    /** Index already applied when listening began: earlier events were never seen. */
    startIndex = 0,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be a positive integer');
    this.floor = startIndex;
    this.last = startIndex;
  }

  get size(): number {
    return this.buf.length;
  }

  /** Highest index seen (or the start index). */
  get lastIndex(): number {
    return this.last;
  }

  push(event: ClusterEvent): void {
    if (event.type === 'snapshot.restore') {
      // The whole state was replaced: nothing before it can be replayed meaningfully.
      this.buf.length = 0;
      this.start = 0;
      this.floor = event.index;
      this.last = Math.max(this.last, event.index);
      return;
    }
    if (this.buf.length < this.capacity) {
      this.buf.push(event);
    } else {
      const evicted = this.buf[this.start];
      if (evicted !== undefined) this.floor = Math.max(this.floor, evicted.index);
      this.buf[this.start] = event;
      this.start = (this.start + 1) % this.capacity;
    }
    this.last = Math.max(this.last, event.index);
  }

  /** Events with index > after, or a reset when some of them are no longer (or were never) held. */
  replay(after: number): Replay {
    if (after < this.floor) return { kind: 'reset', index: this.last, reason: `events after ${after} are no longer held (oldest replayable: after ${this.floor})` };
    if (after > this.last) return { kind: 'reset', index: this.last, reason: `index ${after} is ahead of this node (${this.last})` };
    const events: ClusterEvent[] = [];
    for (let i = 0; i < this.buf.length; i++) {
      const e = this.buf[(this.start + i) % this.buf.length];
      if (e !== undefined && e.index > after) events.push(e);
    }
    return { kind: 'events', events };
  }
}

/** Where a client's chunks go: write returns false when the socket buffer is full (then wait for drained()). */
export interface EventSink {
  write(chunk: string): boolean;
  close(): void;
}

/** One subscriber with a bounded queue in front of its socket. */
export class EventClient {
  private readonly queue: string[] = [];
  private draining = false;
  private closed = false;

  constructor(
    private readonly sink: EventSink,
    readonly queueMax: number = eventsClientQueueMax,
    /** Called once when the client is closed (overflow or close()). */
    private readonly onClose: (reason: 'overflow' | 'closed') => void = () => undefined,
  ) {}

  get isClosed(): boolean {
    return this.closed;
  }

  get queued(): number {
    return this.queue.length;
  }

  /** Sends (or queues) a chunk; returns false once the client is closed (it overflowed now or before). */
  send(chunk: string): boolean {
    if (this.closed) return false;
    if (!this.draining) {
      if (!this.sink.write(chunk)) this.draining = true;
      return true;
    }
    if (this.queue.length >= this.queueMax) {
      this.shut('overflow');
      return false;
    }
    this.queue.push(chunk);
    return true;
  }

  /** The socket drained: flush queued chunks until it is full again. */
  drained(): void {
    if (this.closed) return;
    this.draining = false;
    while (this.queue.length > 0 && !this.draining) {
      const chunk = this.queue.shift() as string;
      if (!this.sink.write(chunk)) this.draining = true;
    }
  }

  close(): void {
    this.shut('closed');
  }

  private shut(reason: 'overflow' | 'closed'): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.sink.close();
    this.onClose(reason);
  }
}

export function formatEvent(e: ClusterEvent): string {
  return `event: ${e.type}\nid: ${e.index}\ndata: ${JSON.stringify({ index: e.index, type: e.type, ids: e.ids, at: e.at, ...(e.migration === undefined ? {} : { migration: e.migration }) })}\n\n`;
}

export function formatReset(index: number, reason: string): string {
  return `event: reset\nid: ${index}\ndata: ${JSON.stringify({ index, reason })}\n\n`;
}

export const heartbeatChunk = ': heartbeat\n\n';

/** The ring plus the live subscribers: fed by the state machine's onChange, read by the route. */
export class EventHub {
  readonly ring: EventRing;
  private readonly clients = new Set<EventClient>();

  constructor(options: { ringMax?: number; startIndex?: number } = {}) {
    this.ring = new EventRing(options.ringMax ?? eventsRingMax, options.startIndex ?? 0);
  }

  get subscribers(): number {
    return this.clients.size;
  }

  publish(event: ClusterEvent): void {
    this.ring.push(event);
    const chunk = event.type === 'snapshot.restore' ? formatReset(event.index, 'the state was replaced by a snapshot') : formatEvent(event);
    for (const c of [...this.clients]) {
      if (!c.send(chunk)) this.clients.delete(c);
    }
  }

  /**
   * Adds a client and sends it the replay after `after` (null: live events only), in one step so no event falls
   * between replay and live delivery. Returns the unsubscribe function.
   */
  subscribe(client: EventClient, after: number | null): () => void {
    if (after !== null) {
      const r = this.ring.replay(after);
      const chunk = r.kind === 'reset' ? formatReset(r.index, r.reason) : r.events.map(formatEvent).join('');
      if (chunk !== '') client.send(chunk);
    }
    if (!client.isClosed) this.clients.add(client);
    return () => {
      this.clients.delete(client);
    };
  }

  /** Closes every stream (node shutdown). */
  closeAll(): void {
    for (const c of [...this.clients]) c.close();
    this.clients.clear();
  }
}

/** The event as published: the command's `at` from the state's audit record, else this node's clock. */
/**
 * One event per applied change. Migration events also carry the record's phase, reason and progress figures, so a
 * client follows a live migration from the stream alone (the source writes progress about once a second).
 */
export function toClusterEvent(change: ChangeEvent, at: number, state?: Pick<ClusterStateMachine, 'getMigration'>): ClusterEvent {
  const event: ClusterEvent = { index: change.index, type: change.type, ids: [...change.ids], at };
  if (state !== undefined && change.type.startsWith('migration.')) {
    const m = state.getMigration(change.ids[0] ?? '');
    if (m !== null) return { ...event, migration: { id: m.id, vm: m.vm, source: m.source, target: m.target, phase: m.phase, reason: m.reason, progress: { ...m.progress } } };
  }
  return event;
}

export interface EventRouteDeps {
  hub: EventHub;
  /** True once bearer tokens are enforced: a stream opened without a token is closed after the next event. */
  authEnforced: () => boolean;
  heartbeatMs?: number;
  queueMax?: number;
}

const problemRef = { $ref: 'Problem#' } as const;

const eventFormat = [
  'A text/event-stream of cluster state changes. Each applied change is one event: `event: <type>` (the command, e.g.',
  '`cluster.init`, `token.create`, `token.revoke`, `vm.create`), `id: <raft index>`, `data: {"index","type","ids","at"}`',
  '(JSON; `ids` are the records changed, `at` ms since the epoch; `migration.*` events add `migration`: id, vm, source,',
  'target, phase, reason and the progress figures). A `: heartbeat` comment is sent every',
  `${eventsHeartbeatMs / 1000} s. Resume with the \`Last-Event-ID\` header or \`?after=INDEX\`: the last ${eventsRingMax} events are`,
  'replayed; if the client is further behind, it gets `event: reset` (`data: {"index","reason"}`) and must re-read the',
  `state. A client that does not read fast enough (${eventsClientQueueMax} chunks queued) is disconnected.`,
].join(' ');

export function registerEventRoutes(app: Api, deps: EventRouteDeps): void {
  const { hub } = deps;
  const heartbeatMs = deps.heartbeatMs ?? eventsHeartbeatMs;
  const queueMax = deps.queueMax ?? eventsClientQueueMax;

  // Long-lived streams would hold the server open at shutdown: end them first.
  app.addHook('preClose', (done) => {
    hub.closeAll();
    done();
  });

  app.get(
    '/v1/events',
    {
      config: { auth: 'viewer' },
      schema: {
        tags: ['cluster'],
        summary: 'Server-sent events of cluster state changes',
        description: eventFormat,
        querystring: Type.Object(
          { after: Type.Optional(Type.Integer({ minimum: 0, description: 'Replay events with a Raft index above this (like Last-Event-ID)' })) },
          { additionalProperties: false },
        ),
        headers: Type.Object({
          'last-event-id': Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$', description: 'Index of the last event seen: replay what follows' })),
        }),
        response: {
          200: { description: eventFormat, content: { 'text/event-stream': { schema: { type: 'string' } } } },
          400: problemRef,
          401: problemRef,
          403: problemRef,
        },
      },
    },
    (request, reply) => {
      const header = request.headers['last-event-id'];
      const after = typeof header === 'string' ? Number(header) : (request.query.after ?? null);
      const local = request.principal?.kind === 'local';
      const raw: ServerResponse = reply.raw;
      reply.hijack();
      raw.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-store',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      raw.write(`retry: ${eventsRetryMs}\n: connected\n\n`);

      let unsubscribe: () => void = () => undefined;
      const client = new EventClient(
        {
          write: (chunk) => {
            const ok = raw.write(chunk);
            if (local && deps.authEnforced() && chunk.startsWith('event:')) setImmediate(() => client.close());
            return ok;
          },
          close: () => raw.end(),
        },
        queueMax,
        (reason) => {
          clearInterval(timer);
          unsubscribe();
          if (reason === 'overflow') request.log.warn({ queueMax }, 'event stream client too slow: disconnected');
        },
      );
      const timer = setInterval(() => client.send(heartbeatChunk), heartbeatMs);
      timer.unref();
      raw.on('drain', () => client.drained());
      raw.on('close', () => client.close());
      unsubscribe = hub.subscribe(client, after);
    },
  );
}

/** The `at` of the command just applied (its audit record is appended before listeners run), else now. */
export function appliedAt(state: Pick<ClusterStateMachine, 'auditPage'>, change: ChangeEvent): number {
  const { nextSeq } = state.auditPage(Number.MAX_SAFE_INTEGER, 0);
  const last = state.auditPage(nextSeq - 2, 1).records[0];
  return last !== undefined && last.seq === nextSeq - 1 && last.action === change.type ? last.at : Date.now();
}
