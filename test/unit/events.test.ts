// The event stream's pure parts: the replay ring (bounded, reset when too far behind or after a snapshot), the
// per-client bounded queue (a slow client that overflows is disconnected), the hub and the CLI's SSE parser.
import { describe, expect, it } from 'vitest';
import { EventClient, EventHub, EventRing, formatEvent, heartbeatChunk, type ClusterEvent, type EventSink } from '../../node/api/routes/events.js';
import { SseParser, formatEventLine } from '../../node/cli/commands/events.js';

function ev(index: number, type = 'token.create'): ClusterEvent {
  return { index, type, ids: [`id-${index}`], at: 1_700_000_000_000 + index };
}

class FakeSink implements EventSink {
  written: string[] = [];
  closed = false;
  full = false;
  write(chunk: string): boolean {
    this.written.push(chunk);
    return !this.full;
  }
  close(): void {
    this.closed = true;
  }
}

describe('EventRing', () => {
  it('replays events after an index, oldest first', () => {
    const ring = new EventRing(8);
    for (const i of [1, 2, 4, 7]) ring.push(ev(i));
    expect(ring.replay(0)).toEqual({ kind: 'events', events: [ev(1), ev(2), ev(4), ev(7)] });
    expect(ring.replay(2)).toEqual({ kind: 'events', events: [ev(4), ev(7)] });
    expect(ring.replay(7)).toEqual({ kind: 'events', events: [] });
  });

  it('stays bounded and resets a client further behind than it holds', () => {
    const ring = new EventRing(3);
    for (let i = 1; i <= 10; i++) ring.push(ev(i));
    expect(ring.size).toBe(3);
    expect(ring.replay(7)).toEqual({ kind: 'events', events: [ev(8), ev(9), ev(10)] });
    expect(ring.replay(6)).toMatchObject({ kind: 'reset', index: 10 }); // event 7 was evicted
    expect(ring.replay(0)).toMatchObject({ kind: 'reset' });
  });

  it('resets clients from before its start, ahead of it, or before a snapshot restore', () => {
    const ring = new EventRing(8, 50);
    expect(ring.replay(50)).toEqual({ kind: 'events', events: [] });
    expect(ring.replay(49)).toMatchObject({ kind: 'reset', index: 50 });
    expect(ring.replay(51)).toMatchObject({ kind: 'reset' });
    ring.push(ev(51));
    ring.push(ev(60, 'snapshot.restore'));
    ring.push(ev(61));
    expect(ring.size).toBe(1);
    expect(ring.replay(51)).toMatchObject({ kind: 'reset' });
    expect(ring.replay(60)).toEqual({ kind: 'events', events: [ev(61)] });
  });
});

describe('EventClient', () => {
  it('writes straight through while the socket drains, queues while it is full, flushes on drain', () => {
    const sink = new FakeSink();
    const c = new EventClient(sink, 2);
    expect(c.send('a')).toBe(true);
    sink.full = true;
    expect(c.send('b')).toBe(true); // written, socket now full
    expect(c.send('c')).toBe(true); // queued
    expect(c.queued).toBe(1);
    expect(sink.written).toEqual(['a', 'b']);
    sink.full = false;
    c.drained();
    expect(sink.written).toEqual(['a', 'b', 'c']);
    expect(c.queued).toBe(0);
  });

  it('disconnects a client that overflows its queue and frees the queue', () => {
    const sink = new FakeSink();
    const reasons: string[] = [];
    const c = new EventClient(sink, 2, (r) => reasons.push(r));
    sink.full = true;
    c.send('x'); // written, now full
    c.send('q1');
    c.send('q2');
    expect(c.send('q3')).toBe(false);
    expect(sink.closed).toBe(true);
    expect(c.isClosed).toBe(true);
    expect(c.queued).toBe(0);
    expect(reasons).toEqual(['overflow']);
    expect(c.send('late')).toBe(false);
    c.close();
    expect(reasons).toEqual(['overflow']);
  });
});

describe('EventHub', () => {
  it('replays then delivers live events, drops overflowing clients, closes all', () => {
    const hub = new EventHub({ ringMax: 4 });
    hub.publish(ev(1));
    hub.publish(ev(2));
    const sink = new FakeSink();
    const unsubscribe = hub.subscribe(new EventClient(sink, 1), 1);
    expect(sink.written).toEqual([formatEvent(ev(2))]);
    hub.publish(ev(3));
    expect(sink.written[1]).toBe(formatEvent(ev(3)));
    expect(hub.subscribers).toBe(1);

    const slow = new FakeSink();
    slow.full = true;
    hub.subscribe(new EventClient(slow, 1), null);
    hub.publish(ev(4)); // written, full
    hub.publish(ev(5)); // queued
    hub.publish(ev(6)); // overflow: dropped
    expect(slow.closed).toBe(true);
    expect(hub.subscribers).toBe(1);

    const behind = new FakeSink();
    hub.subscribe(new EventClient(behind), 0);
    expect(behind.written[0]).toMatch(/^event: reset\nid: 6\n/);

    unsubscribe();
    hub.closeAll();
    expect(hub.subscribers).toBe(0);
    expect(behind.closed).toBe(true);
  });

  it('formats the SSE event and the CLI parses it back', () => {
    const text = formatEvent(ev(42));
    expect(text).toBe(`event: token.create\nid: 42\ndata: {"index":42,"type":"token.create","ids":["id-42"],"at":1700000000042}\n\n`);
    const p = new SseParser();
    expect(p.push(`retry: 2000\n: connected\n\n${heartbeatChunk}${text.slice(0, 10)}`)).toEqual([]);
    const [e] = p.push(text.slice(10));
    expect(e).toEqual({ event: 'token.create', id: '42', data: JSON.stringify({ index: 42, type: 'token.create', ids: ['id-42'], at: 1_700_000_000_042 }) });
    expect(formatEventLine(e!)).toMatch(/^2023-11-14T\S+\s+42\s+token\.create\s+id-42$/);
  });
});
