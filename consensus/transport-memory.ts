// In-process Raft transport for tests: every message goes through the wire codec, delivery is asynchronous,
// and links can be cut in one or both directions to make partitions.
import { decodeMessage, encodeMessage } from './core/codec.js';
import type { Message } from './core/messages.js';
import type { RaftTransport } from './driver.js';
import type { NodeId } from './types.js';

/** Messages queued towards one node before further ones are dropped (as a congested link would). */
export const memoryInboxMaxMessages = 10_000;

export class MemoryNetwork {
  private readonly handlers = new Map<NodeId, (m: Message) => void>();
  private readonly cut = new Set<string>();
  private readonly queued = new Map<NodeId, number>();
  delivered = 0;
  dropped = 0;

  transport(id: NodeId): RaftTransport {
    return {
      send: (m) => this.deliver(m),
      onMessage: (h) => {
        this.handlers.set(id, h);
      },
      close: () => {
        this.handlers.delete(id);
        return Promise.resolve();
      },
    };
  }

  /** Cuts the link from `a` to `b` (and back unless `oneWay`). */
  partition(a: NodeId, b: NodeId, oneWay = false): void {
    this.cut.add(`${a}>${b}`);
    if (!oneWay) this.cut.add(`${b}>${a}`);
  }

  /** Cuts `id` off from every other node. */
  isolate(id: NodeId, others: readonly NodeId[]): void {
    for (const o of others) if (o !== id) this.partition(id, o);
  }

  heal(): void {
    this.cut.clear();
  }

  private deliver(m: Message): void {
    if (this.cut.has(`${m.from}>${m.to}`)) {
      this.dropped++;
      return;
    }
    const pending = this.queued.get(m.to) ?? 0;
    if (pending >= memoryInboxMaxMessages) {
      this.dropped++;
      return;
    }
    this.queued.set(m.to, pending + 1);
    const bytes = encodeMessage(m);
    setImmediate(() => {
      this.queued.set(m.to, (this.queued.get(m.to) ?? 1) - 1);
      const h = this.handlers.get(m.to);
      if (h === undefined || this.cut.has(`${m.from}>${m.to}`)) {
        this.dropped++;
        return;
      }
      this.delivered++;
      h(decodeMessage(bytes));
    });
  }
}
