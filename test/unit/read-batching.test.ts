// Proves that linearizable reads share ReadIndex rounds in the Raft driver without losing linearizability: many
// concurrent reads take few rounds, a read never misses a write acknowledged before it was requested (also while
// other rounds are in flight), a lost round is asked again, and each read keeps its own timeout and the bound.
import { afterEach, describe, expect, it } from 'vitest';
import { RaftNode, RaftOverloadedError, ReadTimeoutError, maxPendingReads, readRoundRetryMs, type RaftLogger, type RaftTransport } from '../../consensus/driver.js';
import type { Message } from '../../consensus/core/messages.js';
import { Xoshiro128 } from '../../consensus/core/random.js';
import { MemoryRaftStorage } from '../../consensus/storage/memory.js';
import { MemoryNetwork } from '../../consensus/transport-memory.js';
import { KvMachine, encodeKv } from '../support/kv-machine.js';
import { waitUntil } from '../support/wait.js';

const ids = ['n1', 'n2', 'n3'];
const quiet: RaftLogger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };
/** Per-read timeout in these tests: well above the round retry, so a re-asked round is served before it. */
const readTimeoutMs = 4 * readRoundRetryMs;

interface Member {
  id: string;
  node: RaftNode;
  kv: KvMachine;
  inbound: Gate;
}

/** Holds back chosen inbound messages of one node until released, in arrival order (a slow link, per type). */
class Gate {
  private handler: ((m: Message) => void) | null = null;
  private readonly held: Message[] = [];
  holding = new Set<Message['type']>();

  wrap(inner: RaftTransport): RaftTransport {
    inner.onMessage((m) => {
      if (this.holding.has(m.type)) this.held.push(m);
      else this.handler?.(m);
    });
    return { send: (m) => inner.send(m), onMessage: (h) => void (this.handler = h), close: () => inner.close() };
  }

  /** Stops holding `type` and delivers what was held of it. */
  release(type: Message['type']): void {
    this.holding.delete(type);
    for (let i = 0; i < this.held.length; ) {
      const m = this.held[i];
      if (m !== undefined && m.type === type) {
        this.held.splice(i, 1);
        this.handler?.(m);
      } else i++;
    }
  }
}

let open: RaftNode[] = [];

afterEach(async () => {
  await Promise.allSettled(open.map((n) => n.close()));
  open = [];
});

async function cluster(net: MemoryNetwork): Promise<Member[]> {
  const members: Member[] = [];
  for (const [i, id] of ids.entries()) {
    const kv = new KvMachine();
    const inbound = new Gate();
    const node = await RaftNode.open({
      id,
      storage: await MemoryRaftStorage.open(),
      transport: inbound.wrap(net.transport(id)),
      stateMachine: kv,
      bootstrap: { voters: ids, learners: [], votersOutgoing: [] },
      random: new Xoshiro128(i + 1),
      logger: quiet,
      tickIntervalMs: 10,
      proposalTimeoutMs: 3_000,
      readTimeoutMs,
    });
    open.push(node);
    members.push({ id, node, kv, inbound });
  }
  return members;
}

async function roles(members: Member[]): Promise<{ leader: Member; follower: Member }> {
  await waitUntil(() => members.filter((m) => m.node.status().role === 'leader').length === 1 && members.every((m) => m.node.status().leader !== null), 5_000);
  const leader = members.find((m) => m.node.status().role === 'leader');
  const follower = members.find((m) => m.node.status().role === 'follower' && m.node.status().leader === leader?.id);
  if (leader === undefined || follower === undefined) throw new Error('no leader and follower');
  // The leader serves reads only once an entry of its term is committed: make sure one is.
  await leader.node.propose(encodeKv({ op: 'put', key: 'warm', value: '1' }));
  await waitUntil(() => follower.node.status().applied >= leader.node.status().applied, 5_000);
  return { leader, follower };
}

describe('RaftNode read batching', () => {
  it('serves many concurrent reads with a few ReadIndex rounds, on a follower and on the leader', async () => {
    const net = new MemoryNetwork();
    const { leader, follower } = await roles(await cluster(net));
    for (const m of [follower, leader]) {
      const before = m.node.counters.readIndexRequests;
      await Promise.all(Array.from({ length: 500 }, () => m.node.readBarrier()));
      const rounds = m.node.counters.readIndexRequests - before;
      // Reads made in one turn join one round; a second one at most if a retry fired on a very slow machine.
      expect(rounds).toBeGreaterThanOrEqual(1);
      expect(rounds).toBeLessThanOrEqual(2);
    }
  });

  it('takes one round per wave of reads that arrive while another round is in flight', async () => {
    const net = new MemoryNetwork();
    const { follower } = await roles(await cluster(net));
    const before = follower.node.counters.readIndexRequests;
    const waves: Promise<void>[] = [];
    // 20 waves of 25 reads, one wave per event-loop turn: each waits for the round in flight, never joins it.
    for (let w = 0; w < 20; w++) {
      for (let i = 0; i < 25; i++) waves.push(follower.node.readBarrier());
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(waves);
    const rounds = follower.node.counters.readIndexRequests - before;
    expect(rounds).toBeGreaterThanOrEqual(1);
    expect(rounds).toBeLessThan(20);
  });

  it('never returns state older than a write acknowledged before the read, while other reads keep rounds in flight', async () => {
    const net = new MemoryNetwork();
    const { leader, follower } = await roles(await cluster(net));
    let stop = false;
    // Background readers on the follower: a round is nearly always in flight when the checked read arrives.
    const background = Array.from({ length: 8 }, async () => {
      while (!stop) await follower.node.readBarrier();
    });
    try {
      for (let i = 1; i <= 60; i++) {
        await leader.node.propose(encodeKv({ op: 'put', key: 'x', value: String(i) }));
        await follower.node.readBarrier();
        expect(follower.kv.data.get('x')).toBe(String(i));
      }
    } finally {
      stop = true;
      await Promise.all(background);
    }
  });

  it('does not let a read join a round started before it: a write acknowledged in between is seen', async () => {
    const net = new MemoryNetwork();
    const { leader, follower } = await roles(await cluster(net));
    await leader.node.propose(encodeKv({ op: 'put', key: 'x', value: 'old' }));
    await waitUntil(() => follower.kv.data.get('x') === 'old', 5_000);
    // The follower hears no new entries (the write commits with the third voter) and its round's answer is held.
    follower.inbound.holding = new Set<Message['type']>(['app', 'readIndexResp']);
    const early = follower.node.readBarrier(); // starts round R; the leader answers with a read point before the write
    await new Promise((r) => setTimeout(r, 50));
    await leader.node.propose(encodeKv({ op: 'put', key: 'x', value: 'new' })); // acknowledged
    let seen: string | undefined;
    const late = follower.node.readBarrier().then(() => {
      seen = follower.kv.data.get('x');
    });
    follower.inbound.release('readIndexResp'); // R completes: it may serve `early`, never `late`
    await early;
    await new Promise((r) => setTimeout(r, 50));
    expect(seen).toBeUndefined(); // `late` waits for a read point at or after the write, which is not applied here yet
    follower.inbound.release('app');
    await late;
    expect(seen).toBe('new');
  });

  it('asks a lost round again, and times out each read on its own when no read point can come', async () => {
    const net = new MemoryNetwork();
    const { leader, follower } = await roles(await cluster(net));
    // Requests from the follower to the leader are lost; the leader's heartbeats still arrive, so it stays known.
    net.partition(follower.id, leader.id, true);
    const before = follower.node.counters.readIndexRequests;
    const lost = follower.node.readBarrier();
    await new Promise((r) => setTimeout(r, readRoundRetryMs / 2));
    net.heal();
    await lost; // served by the re-asked round, before the read's own timeout
    expect(follower.node.counters.readIndexRequests - before).toBeGreaterThanOrEqual(2);

    net.partition(follower.id, leader.id, true);
    const started = Date.now();
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => follower.node.readBarrier()));
    expect(Date.now() - started).toBeGreaterThanOrEqual(readTimeoutMs - 50);
    expect(results.every((r) => r.status === 'rejected' && r.reason instanceof ReadTimeoutError)).toBe(true);
    net.heal();
    await follower.node.readBarrier();
  });

  it(`refuses reads beyond ${maxPendingReads} pending`, async () => {
    const net = new MemoryNetwork();
    const { leader, follower } = await roles(await cluster(net));
    net.partition(follower.id, leader.id, true);
    const pending = Array.from({ length: maxPendingReads }, () => follower.node.readBarrier());
    for (const p of pending) p.catch(() => undefined);
    await expect(follower.node.readBarrier()).rejects.toBeInstanceOf(RaftOverloadedError);
    net.heal();
    await Promise.all(pending);
    await follower.node.readBarrier();
  });
});
