// Proves the pure Raft core follows the paper's rules (§5.1–5.4, §6, §7) plus pre-vote, check-quorum, transfer, ReadIndex, learners and flow control.
import { describe, expect, test } from 'vitest';
import type { Entry } from '../../consensus/types.js';
import { ConfChangePendingError, NotLeaderError, ProposalDroppedError } from '../../consensus/core/errors.js';
import { encodeConfRecord } from '../../consensus/core/log.js';
import type { AppendMessage, AppendResponseMessage, Message, SnapshotMessage } from '../../consensus/core/messages.js';
import { Raft } from '../../consensus/core/raft.js';
import { Xoshiro128 } from '../../consensus/core/random.js';
import { Harness, bootstrapSnapshot, entryText } from '../../consensus/sim/harness.js';
import type { Durable } from '../../consensus/sim/harness.js';

const enc = new TextEncoder();
const ABC = ['a', 'b', 'c'];
const CONF = { voters: ABC, learners: [], votersOutgoing: [] };

function ent(index: number, term: number, text = `e${index}t${term}`): Entry {
  return { index, term, type: 'normal', data: enc.encode(text) };
}

function durable(term: number, entries: Entry[], commit = 0): Durable {
  return { hardState: { term, vote: null, commit }, snapshot: bootstrapSnapshot(CONF), entries };
}

function texts(h: Harness, id: string): string[] {
  return h.node(id).applied.filter((e) => e.type === 'normal').map(entryText);
}

function sentTo(h: Harness, to: string, type: Message['type']): Message[] {
  return h.sent.filter((m) => m.to === to && m.type === type);
}

describe('§5.1 terms', () => {
  test('§5.1 a server that sees a higher term adopts it and reverts to follower', () => {
    const h = new Harness(ABC);
    h.elect('a');
    expect(h.raft('a').status.role).toBe('leader');
    h.raft('a').step({ type: 'heartbeat', from: 'c', to: 'a', term: 7, commit: 0, ctx: null });
    expect(h.raft('a').status).toMatchObject({ role: 'follower', term: 7, leader: 'c' });
  });

  test('§5.1 a request with a stale term is rejected and tells the sender the current term', () => {
    const h = new Harness(ABC);
    h.elect('a');
    const b = h.raft('b');
    const before = b.status.lastIndex;
    b.step({ type: 'app', from: 'c', to: 'b', term: 0, index: before, logTerm: 1, entries: [ent(before + 1, 0)], commit: 0 });
    expect(b.status.lastIndex).toBe(before);
    h.processReady('b');
    const resp = h.queue.find((m) => m.to === 'c');
    expect(resp).toMatchObject({ type: 'appResp', term: b.status.term });
  });
});

describe('§5.2 leader election', () => {
  test('§5.2 a follower that hears from no leader for an election timeout starts an election', () => {
    const h = new Harness(ABC, { preVote: false });
    h.tick('a', 20);
    expect(h.raft('a').status).toMatchObject({ role: 'candidate', term: 1, vote: 'a' });
    h.processReady('a');
    expect(h.queue.filter((m) => m.type === 'vote').map((m) => m.to).sort()).toEqual(['b', 'c']);
  });

  test('§5.2 election timeouts are randomized in [electionTimeoutTicks, 2*electionTimeoutTicks)', () => {
    const seen = new Set<number>();
    for (let seed = 1; seed <= 300; seed++) {
      const r = new Raft({ id: 'a', random: new Xoshiro128(seed), electionTimeoutTicks: 10, preVote: false }, { hardState: { term: 0, vote: null, commit: 0 }, snapshot: bootstrapSnapshot(CONF), entries: [] });
      let ticks = 0;
      while (r.status.role === 'follower') {
        r.tick();
        ticks++;
      }
      seen.add(ticks);
    }
    expect(Math.min(...seen)).toBe(10);
    expect(Math.max(...seen)).toBe(19);
    expect(seen.size).toBe(10);
  });

  test('§5.2 a candidate that receives votes from a majority becomes leader', () => {
    const h = new Harness(ABC, { preVote: false });
    h.crash('c');
    h.elect('a');
    expect(h.raft('a').status).toMatchObject({ role: 'leader', term: 1 });
    expect(h.raft('b').status).toMatchObject({ role: 'follower', leader: 'a', vote: 'a' });
  });

  test('§5.2 each server grants at most one vote per term (election safety)', () => {
    const h = new Harness(ABC, { preVote: false });
    const b = h.raft('b');
    b.step({ type: 'vote', from: 'a', to: 'b', term: 1, lastIndex: 0, lastTerm: 0, transfer: false });
    b.step({ type: 'vote', from: 'c', to: 'b', term: 1, lastIndex: 0, lastTerm: 0, transfer: false });
    h.processReady('b');
    const resps = h.queue.filter((m) => m.type === 'voteResp');
    expect(resps).toEqual([
      { type: 'voteResp', from: 'b', to: 'a', term: 1, reject: false },
      { type: 'voteResp', from: 'b', to: 'c', term: 1, reject: true },
    ]);
    // The vote is durable in the same Ready that carries the grant.
    expect(h.node('b').durable.hardState.vote).toBe('a');
  });

  test('§5.2 a candidate that hears from a leader of its term returns to follower', () => {
    const h = new Harness(ABC, { preVote: false });
    h.tick('c', 20);
    expect(h.raft('c').status.role).toBe('candidate');
    h.raft('c').step({ type: 'heartbeat', from: 'a', to: 'c', term: 1, commit: 0, ctx: null });
    expect(h.raft('c').status).toMatchObject({ role: 'follower', leader: 'a', term: 1 });
  });

  test('§5.2 a candidate rejected by a majority reverts to follower', () => {
    const h = new Harness(ABC, { preVote: false });
    h.tick('a', 20);
    h.raft('a').step({ type: 'voteResp', from: 'b', to: 'a', term: 1, reject: true });
    h.raft('a').step({ type: 'voteResp', from: 'c', to: 'a', term: 1, reject: true });
    expect(h.raft('a').status.role).toBe('follower');
  });
});

describe('§5.3 log replication', () => {
  test('§5.3 the leader commits an entry once a majority stores it, and followers learn the commit', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.isolate('c');
    const ref = h.propose('a', 'x');
    h.stabilize();
    expect(h.raft('a').status.commit).toBe(ref.index);
    h.tickAll(2);
    h.stabilize();
    expect(texts(h, 'a')).toEqual(['x']);
    expect(texts(h, 'b')).toEqual(['x']);
    expect(texts(h, 'c')).toEqual([]);
    h.heal();
    h.tickAll(2);
    h.stabilize();
    expect(texts(h, 'c')).toEqual(['x']);
  });

  test('§5.3 a follower rejects AppendEntries whose previous entry it does not hold (consistency check)', () => {
    const h = new Harness(ABC, {}, new Map([['b', durable(2, [ent(1, 1), ent(2, 1)])]]));
    const b = h.raft('b');
    b.step({ type: 'app', from: 'a', to: 'b', term: 2, index: 2, logTerm: 2, entries: [ent(3, 2)], commit: 0 });
    b.step({ type: 'app', from: 'a', to: 'b', term: 2, index: 5, logTerm: 2, entries: [ent(6, 2)], commit: 0 });
    expect(b.status.lastIndex).toBe(2);
    h.processReady('b');
    const resps = h.queue.filter((m): m is AppendResponseMessage => m.type === 'appResp');
    expect(resps.map((m) => [m.index, m.reject, m.rejectHint])).toEqual([
      [2, true, 2],
      [5, true, 2],
    ]);
  });

  test('§5.3 conflicting follower entries are overwritten by the leader (log matching)', () => {
    const initial = new Map<string, Durable>([
      ['a', durable(3, [ent(1, 1), ent(2, 1), ent(3, 3)], 1)],
      ['b', durable(3, [ent(1, 1), ent(2, 1), ent(3, 3)], 1)],
      ['c', durable(2, [ent(1, 1), ent(2, 2), ent(3, 2), ent(4, 2)], 1)],
    ]);
    const h = new Harness(ABC, {}, initial);
    h.elect('a');
    h.tickAll(1);
    h.stabilize();
    const a = h.raft('a');
    const c = h.raft('c');
    expect(c.status.lastIndex).toBe(a.status.lastIndex);
    for (let i = 1; i <= a.status.lastIndex; i++) expect(c.termAt(i)).toBe(a.termAt(i));
    expect(c.termAt(2)).toBe(1);
  });

  test('§5.3 fast backtracking: a conflict hint skips a whole divergent term in one round trip', () => {
    const leaderLog = [ent(1, 1), ...Array.from({ length: 19 }, (_, i) => ent(i + 2, 3))];
    const staleLog = [ent(1, 1), ...Array.from({ length: 49 }, (_, i) => ent(i + 2, 2))];
    const h = new Harness(ABC, {}, new Map([
      ['a', durable(3, leaderLog, 1)],
      ['b', durable(3, leaderLog, 1)],
      ['c', durable(2, staleLog, 1)],
    ]));
    h.elect('a');
    h.tickAll(1);
    h.stabilize();
    const rejects = h.sent.filter((m) => m.type === 'appResp' && m.from === 'c' && m.reject);
    expect(rejects.length).toBeLessThanOrEqual(2);
    expect(h.raft('c').status.lastIndex).toBe(h.raft('a').status.lastIndex);
    expect(h.raft('c').termAt(20)).toBe(3);
  });

  test('§5.3 every server applies committed entries once, in index order', () => {
    const h = new Harness(ABC);
    h.elect('a');
    for (let i = 0; i < 5; i++) {
      h.propose('a', `v${i}`);
      h.stabilize();
    }
    h.tickAll(2);
    h.stabilize();
    for (const id of ABC) {
      const idx = h.node(id).applied.map((e) => e.index);
      expect(idx).toEqual(Array.from({ length: idx.length }, (_, i) => i + 1));
      expect(texts(h, id)).toEqual(['v0', 'v1', 'v2', 'v3', 'v4']);
    }
  });
});

describe('§5.4 safety', () => {
  test('§5.4.1 a voter denies its vote to a candidate whose log is less up to date', () => {
    const h = new Harness(ABC, {}, new Map([['b', durable(2, [ent(1, 1), ent(2, 2)])]]));
    const b = h.raft('b');
    b.step({ type: 'vote', from: 'a', to: 'b', term: 3, lastIndex: 5, lastTerm: 1, transfer: false });
    b.step({ type: 'vote', from: 'c', to: 'b', term: 4, lastIndex: 1, lastTerm: 2, transfer: false });
    b.step({ type: 'vote', from: 'c', to: 'b', term: 5, lastIndex: 2, lastTerm: 2, transfer: false });
    h.processReady('b');
    expect(h.queue.filter((m) => m.type === 'voteResp').map((m) => [m.term, 'reject' in m && m.reject])).toEqual([
      [3, true],
      [4, true],
      [5, false],
    ]);
  });

  function figure8(unsafe: boolean): Harness {
    // a holds an entry of term 2 that b and c lack; a wins term 3 with b. Entry 2 reaches b, the term-3 no-op does not.
    const h = new Harness(
      ABC,
      { preVote: false, maxSizePerMsgBytes: 1, unsafeTestFlags: { commitOldTermByCounting: unsafe } },
      new Map([
        ['a', durable(2, [ent(1, 1), ent(2, 2, 'ten bytes!')], 1)],
        ['b', durable(2, [ent(1, 1)], 1)],
        ['c', durable(2, [ent(1, 1)], 1)],
      ]),
    );
    h.cutLink('a', 'c');
    let firstProbe = true;
    h.filter = (m) => {
      if (m.type !== 'app' || !m.entries.some((e) => e.index === 3)) return true;
      const pass = firstProbe;
      firstProbe = false;
      return pass;
    };
    h.elect('a');
    expect(h.raft('a').status).toMatchObject({ role: 'leader', term: 3 });
    expect(h.raft('a').progress().get('b')?.match).toBe(2);
    return h;
  }

  test('§5.4.2 a leader never commits an entry of an earlier term by counting replicas', () => {
    const h = figure8(false);
    expect(h.raft('a').status.commit).toBe(1);
    // Once an entry of its own term reaches a majority, the earlier one commits with it.
    h.filter = () => true;
    h.tick('a', 1);
    h.stabilize();
    expect(h.raft('a').status.commit).toBe(3);
  });

  test('§5.4.2 (control) the unsafe counting rule would commit the old-term entry', () => {
    expect(figure8(true).raft('a').status.commit).toBe(2);
  });

  test('§5.4.3 a newly elected leader holds every committed entry (leader completeness)', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.isolate('c');
    h.propose('a', 'x');
    h.stabilize();
    h.propose('a', 'y');
    h.stabilize();
    const committed = h.raft('a').status.commit;
    h.heal();
    h.crash('a');
    for (let i = 0; i < 60 && h.leader() === null; i++) {
      h.tick('b');
      h.tick('c');
      h.stabilize();
    }
    expect(h.leader()).toBe('b');
    const b = h.raft('b');
    for (let i = 1; i <= committed; i++) expect(b.termAt(i)).toBe(h.node('a').durable.entries.find((e) => e.index === i)?.term);
  });

  test('§5.4.3 state machine safety: every server applies the same command at each index across leader changes', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.propose('a', 'x');
    h.stabilize();
    h.crash('a');
    for (let i = 0; i < 60 && h.leader() === null; i++) {
      h.tick('b');
      h.tick('c');
      h.stabilize();
    }
    const leader = h.leader() ?? 'b';
    h.propose(leader, 'y');
    h.stabilize();
    h.restart('a');
    h.tickAll(3);
    h.stabilize();
    const apply = (id: string): string[] => h.node(id).applied.map((e) => `${e.index}:${e.term}:${entryText(e)}`);
    expect(apply('b')).toEqual(apply('c'));
    expect(texts(h, 'b')).toEqual(['x', 'y']);
    expect(texts(h, 'a')).toEqual(['x', 'y']);
  });
});

describe('§6 membership changes', () => {
  test('§6 a configuration takes effect when appended; a new voter catches up and counts towards the quorum', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.propose('a', 'x');
    h.stabilize();
    h.addBlankNode('d');
    h.raft('a').proposeConfChange({ type: 'addVoter', nodeId: 'd' });
    expect(h.raft('a').status.conf.voters).toEqual(['a', 'b', 'c', 'd']);
    h.stabilize();
    h.tickAll(2);
    h.stabilize();
    expect(texts(h, 'd')).toEqual(['x']);
    expect(h.raft('d').status.conf.voters).toContain('d');
    h.crash('c');
    const y = h.propose('a', 'y');
    h.stabilize();
    expect(h.raft('a').status.commit).toBe(y.index); // a, b, d = 3 of 4
    h.crash('b');
    const z = h.propose('a', 'z');
    h.stabilize();
    expect(h.raft('a').status.commit).toBeLessThan(z.index); // a, d = 2 of 4 is no quorum
  });

  test('§6 only one membership change may be uncommitted at a time', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.addBlankNode('d');
    h.raft('a').proposeConfChange({ type: 'addLearner', nodeId: 'd' });
    expect(() => h.raft('a').proposeConfChange({ type: 'addVoter', nodeId: 'd' })).toThrow(ConfChangePendingError);
    h.stabilize();
    expect(() => h.raft('a').proposeConfChange({ type: 'addVoter', nodeId: 'd' })).not.toThrow();
  });

  test('§6 a new leader must commit an entry of its own term before proposing a membership change', () => {
    const h = new Harness(ABC, { preVote: false });
    h.tick('a', 20);
    h.deliverOnce(); // vote requests
    h.deliverOnce(); // grants
    expect(h.raft('a').status.role).toBe('leader');
    expect(() => h.raft('a').proposeConfChange({ type: 'removeNode', nodeId: 'c' })).toThrow(
      expect.objectContaining({ code: 'conf_change_pending' }) as Error,
    );
    h.stabilize();
    expect(() => h.raft('a').proposeConfChange({ type: 'removeNode', nodeId: 'c' })).not.toThrow();
  });

  test('§6 a configuration entry that is truncated from a log is rolled back', () => {
    const withD = { voters: ['a', 'b', 'c', 'd'], learners: [], votersOutgoing: [] };
    const confEntry: Entry = { index: 2, term: 2, type: 'conf', data: encodeConfRecord({ change: { type: 'addVoter', nodeId: 'd' }, conf: withD }) };
    const h = new Harness(ABC, {}, new Map([
      ['a', durable(3, [ent(1, 1), ent(2, 3)], 1)],
      ['b', durable(3, [ent(1, 1), ent(2, 3)], 1)],
      ['c', durable(2, [ent(1, 1), confEntry], 1)],
    ]));
    expect(h.raft('c').status.conf.voters).toEqual(['a', 'b', 'c', 'd']);
    h.elect('a');
    h.tickAll(1);
    h.stabilize();
    expect(h.raft('c').status.conf.voters).toEqual(ABC);
  });

  test('§6 a leader that removes itself steps down once the change commits; the rest elect a leader', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.raft('a').proposeConfChange({ type: 'removeNode', nodeId: 'a' });
    h.stabilize();
    expect(h.raft('a').status.role).toBe('follower');
    for (let i = 0; i < 60 && h.leader() === null; i++) {
      h.tickAll(1);
      h.stabilize();
    }
    expect(['b', 'c']).toContain(h.leader());
    h.tick('a', 100);
    expect(h.raft('a').status.role).toBe('follower'); // no longer promotable
  });

  test('learners receive the log but never vote or count for quorum; addVoter promotes them', () => {
    const h = new Harness(ABC, { learners: ['l'] });
    h.elect('a');
    h.propose('a', 'x');
    h.stabilize();
    h.tickAll(2);
    h.stabilize();
    expect(texts(h, 'l')).toEqual(['x']);
    h.tick('l', 100);
    h.processReady('l');
    expect(h.raft('l').status.role).toBe('follower');
    expect(h.sent.some((m) => m.from === 'l' && (m.type === 'vote' || m.type === 'preVote'))).toBe(false);
    h.crash('b');
    h.crash('c');
    const y = h.propose('a', 'y');
    h.stabilize();
    expect(h.raft('l').status.lastIndex).toBe(y.index); // the learner stores it...
    expect(h.raft('a').status.commit).toBeLessThan(y.index); // ...but does not count
    h.restart('b');
    h.tickAll(2);
    h.stabilize();
    h.raft('a').proposeConfChange({ type: 'addVoter', nodeId: 'l' });
    h.stabilize();
    expect(h.raft('l').status.conf.voters).toContain('l');
    expect(h.raft('l').status.conf.learners).not.toContain('l');
  });
});

describe('§7 log compaction', () => {
  test('§7 compaction discards covered entries and a lagging follower is caught up with InstallSnapshot', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.isolate('c');
    for (let i = 0; i < 5; i++) h.propose('a', `v${i}`);
    h.stabilize();
    h.tickAll(1);
    h.stabilize();
    const a = h.raft('a');
    const applied = a.status.applied;
    const snap = a.compact(applied, enc.encode('state-at-' + String(applied)));
    expect(snap.meta).toMatchObject({ index: applied, conf: CONF });
    expect(a.status.firstIndex).toBe(applied + 1);
    expect(a.termAt(1)).toBeUndefined();
    h.heal();
    h.tickAll(2);
    h.stabilize();
    h.propose('a', 'after');
    h.stabilize();
    h.tickAll(2);
    h.stabilize();
    const c = h.node('c');
    expect(c.installedSnapshots.map((s) => s.meta.index)).toEqual([applied]);
    expect(new TextDecoder().decode(c.installedSnapshots[0]?.data)).toBe(`state-at-${applied}`);
    expect(texts(h, 'c')).toEqual(['after']);
    expect(c.raft.status.commit).toBe(a.status.commit);
  });

  test('§7 InstallSnapshot is sent in chunks of snapshotChunkBytes with offsets and reassembled, surviving a lost chunk', () => {
    const h = new Harness(ABC, { snapshotChunkBytes: 16 });
    h.elect('a');
    h.isolate('c');
    h.propose('a', 'x');
    h.stabilize();
    const data = Uint8Array.from({ length: 100 }, (_, i) => i);
    h.raft('a').compact(h.raft('a').status.applied, data);
    h.heal();
    let dropped = false;
    h.filter = (m) => {
      if (m.type === 'snap' && m.offset === 48 && !dropped) {
        dropped = true;
        return false;
      }
      return true;
    };
    for (let i = 0; i < 10; i++) {
      h.tickAll(1);
      h.stabilize();
    }
    const chunks = sentTo(h, 'c', 'snap') as SnapshotMessage[];
    expect(dropped).toBe(true);
    expect(new Set(chunks.map((m) => m.offset))).toEqual(new Set([0, 16, 32, 48, 64, 80, 96]));
    expect(chunks.every((m) => m.data.length <= 16 && m.totalBytes === 100)).toBe(true);
    expect(h.node('c').installedSnapshots[0]?.data).toEqual(data);
  });

  test('§7 a restarted node recovers from its persisted snapshot, hard state and log', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.propose('a', 'x');
    h.stabilize();
    h.tickAll(2);
    h.stabilize();
    const b = h.node('b');
    const snap = b.raft.compact(b.raft.status.applied, enc.encode('S'));
    b.durable.snapshot = snap;
    b.durable.entries = b.durable.entries.filter((e) => e.index > snap.meta.index);
    const before = b.raft.status;
    h.crash('b');
    h.restart('b');
    expect(h.raft('b').status).toMatchObject({ term: before.term, vote: before.vote, commit: before.commit, firstIndex: snap.meta.index + 1 });
    h.propose('a', 'y');
    h.stabilize();
    h.tickAll(2);
    h.stabilize();
    expect(texts(h, 'b')).toEqual(['y']);
  });
});

describe('elections in practice: pre-vote, check-quorum, leader transfer', () => {
  test('pre-vote: a partitioned node does not inflate its term and does not disrupt the leader when it returns', () => {
    const h = new Harness(ABC);
    h.elect('a');
    const term = h.raft('a').status.term;
    h.isolate('c');
    for (let i = 0; i < 100; i++) {
      h.tickAll(1);
      h.stabilize();
    }
    expect(h.raft('c').status.term).toBe(term);
    h.heal();
    h.tickAll(3);
    h.stabilize();
    expect(h.leader()).toBe('a');
    expect(h.raft('a').status.term).toBe(term);
  });

  test('pre-vote (control): without it the partitioned node keeps raising its term', () => {
    const h = new Harness(ABC, { preVote: false, checkQuorum: false });
    h.elect('a');
    h.isolate('c');
    h.tick('c', 100);
    expect(h.raft('c').status.term).toBeGreaterThan(h.raft('a').status.term);
  });

  test('check-quorum: a leader that hears from no quorum for an election timeout steps down', () => {
    const h = new Harness(ABC, { electionTimeoutTicks: 10 });
    h.elect('a');
    h.isolate('a');
    for (let i = 0; i < 25; i++) {
      h.tick('a');
      h.stabilize();
    }
    expect(h.raft('a').status.role).toBe('follower');
  });

  test('leader lease: a follower that heard from its leader within an election timeout ignores vote requests', () => {
    const h = new Harness(ABC);
    h.elect('a');
    const b = h.raft('b');
    const term = b.status.term;
    b.step({ type: 'vote', from: 'c', to: 'b', term: term + 5, lastIndex: 100, lastTerm: term + 4, transfer: false });
    b.step({ type: 'preVote', from: 'c', to: 'b', term: term + 1, lastIndex: 100, lastTerm: term, transfer: false });
    expect(b.status).toMatchObject({ term, leader: 'a' });
    h.processReady('b');
    expect(h.queue.filter((m) => m.to === 'c')).toEqual([]);
  });

  test('leader transfer: the leader catches the target up, sends TimeoutNow, and the target wins', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.isolate('c');
    h.propose('a', 'x');
    h.stabilize();
    h.heal();
    const term = h.raft('a').status.term;
    h.raft('a').transferLeader('c');
    expect(() => h.propose('a', 'during')).toThrow(ProposalDroppedError);
    h.stabilize();
    expect(h.leader()).toBe('c');
    expect(h.raft('c').status.term).toBe(term + 1);
    const timeoutAt = h.sent.findIndex((m) => m.type === 'timeoutNow');
    const caughtUpAt = h.sent.findIndex((m) => m.type === 'appResp' && m.from === 'c' && !m.reject && m.index >= 2);
    expect(caughtUpAt).toBeGreaterThanOrEqual(0);
    expect(timeoutAt).toBeGreaterThan(caughtUpAt);
  });

  test('leader transfer to an unreachable target is abandoned after an election timeout', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.crash('c');
    h.raft('a').transferLeader('c');
    expect(() => h.propose('a', 'x')).toThrow(ProposalDroppedError);
    for (let i = 0; i < 11; i++) {
      h.tick('a');
      h.stabilize();
    }
    expect(() => h.propose('a', 'x')).not.toThrow();
  });
});

describe('ReadIndex', () => {
  test('ReadIndex: the leader releases a read state only after a heartbeat round confirms its leadership', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.propose('a', 'x');
    h.stabilize();
    const commit = h.raft('a').status.commit;
    h.raft('a').readIndex('r1');
    h.processReady('a');
    expect(h.node('a').readStates).toEqual([]);
    expect(h.queue.filter((m) => m.type === 'heartbeat' && m.ctx === 'r1').length).toBe(2);
    h.stabilize();
    expect(h.node('a').readStates).toEqual([{ ctx: 'r1', index: commit }]);
  });

  test('ReadIndex: a follower forwards the request and receives the leader read index', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.propose('a', 'x');
    h.stabilize();
    h.raft('b').readIndex('rb');
    h.stabilize();
    expect(h.node('b').readStates).toEqual([{ ctx: 'rb', index: h.raft('a').status.commit }]);
  });

  test('ReadIndex: a leader cut off from the quorum never serves a read', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.isolate('a');
    h.raft('a').readIndex('stale');
    for (let i = 0; i < 30; i++) {
      h.tick('a');
      h.stabilize();
    }
    expect(h.node('a').readStates).toEqual([]);
    expect(() => h.raft('a').readIndex('again')).toThrow(NotLeaderError);
  });

  test('ReadIndex: a new leader defers reads until it has committed an entry of its term', () => {
    const h = new Harness(ABC, { preVote: false });
    h.tick('a', 20);
    h.deliverOnce();
    h.deliverOnce();
    expect(h.raft('a').status.role).toBe('leader');
    h.raft('a').readIndex('early');
    h.processReady('a');
    expect(h.queue.some((m) => m.type === 'heartbeat' && m.ctx === 'early')).toBe(false);
    h.stabilize();
    expect(h.node('a').readStates).toEqual([{ ctx: 'early', index: h.raft('a').status.commit }]);
  });
});

describe('flow control and errors', () => {
  test('bounded inflight: at most maxInflightMsgs appends are unacknowledged per follower', () => {
    const h = new Harness(ABC, { maxInflightMsgs: 3 });
    h.elect('a');
    h.filter = (m) => m.type !== 'appResp';
    const before = h.sent.length;
    for (let i = 0; i < 10; i++) {
      h.propose('a', `p${i}`);
      h.processReady('a');
    }
    const toB = h.sent.slice(before).filter((m): m is AppendMessage => m.to === 'b' && m.type === 'app' && m.entries.length > 0);
    expect(toB.length).toBe(3);
    expect(h.raft('a').progress().get('b')).toMatchObject({ state: 'replicate', inflight: 3 });
  });

  test('pipelining and batching: the leader sends ahead without waiting, up to maxSizePerMsgBytes per message', () => {
    const h = new Harness(ABC, { maxSizePerMsgBytes: 35 });
    h.elect('a');
    const before = h.sent.length;
    const first = h.propose('a', 'first');
    h.processReady('a');
    const second = h.propose('a', 'second');
    h.processReady('a');
    const pipelined = h.sent.slice(before).filter((m): m is AppendMessage => m.to === 'b' && m.type === 'app');
    expect(pipelined.map((m) => m.index)).toEqual([first.index - 1, second.index - 1]); // second sent before the first was acknowledged
    h.stabilize();
    h.isolate('c');
    for (let i = 0; i < 10; i++) h.propose('a', '0123456789');
    h.stabilize();
    h.heal();
    const mark = h.sent.length;
    h.tickAll(2);
    h.stabilize();
    const batches = h.sent.slice(mark).filter((m): m is AppendMessage => m.to === 'c' && m.type === 'app' && m.entries.length > 0);
    expect(batches.some((m) => m.entries.length === 3)).toBe(true);
    for (const m of batches) expect(m.entries.reduce((s, e) => s + e.data.length, 0)).toBeLessThanOrEqual(35);
  });

  test('coalescing: proposals before one ready() go out as one AppendEntries per follower; a commit advance as one more', () => {
    const h = new Harness(ABC);
    h.elect('a');
    const a = h.raft('a');
    const mark = h.sent.length;
    const refs = Array.from({ length: 50 }, (_, i) => h.propose('a', `w${i}`));
    expect(a.hasReady()).toBe(true); // the pending broadcast alone makes a Ready
    h.processReady('a');
    for (const id of ['b', 'c']) {
      const apps = h.sent.slice(mark).filter((m): m is AppendMessage => m.to === id && m.type === 'app');
      expect(apps.length).toBe(1);
      expect(apps[0]?.entries.map((e) => e.index)).toEqual(refs.map((r) => r.index));
    }
    // Followers persist and acknowledge; both acknowledgements reach the leader in one turn.
    h.deliverOnce();
    h.processReady('b');
    h.processReady('c');
    h.deliverOnce();
    const last = refs[refs.length - 1]?.index ?? 0;
    expect(a.status.commit).toBe(last);
    const mark2 = h.sent.length;
    h.processReady('a');
    for (const id of ['b', 'c']) {
      const apps = h.sent.slice(mark2).filter((m): m is AppendMessage => m.to === id && m.type === 'app');
      expect(apps.length).toBe(1); // one commit-carrying append, not one per acknowledgement
      expect(apps[0]).toMatchObject({ commit: last, entries: [] });
    }
    // Followers learn the commit index in the same round trip, without waiting for a heartbeat tick.
    h.deliverOnce();
    expect(h.raft('b').status.commit).toBe(last);
    expect(h.raft('c').status.commit).toBe(last);
    h.stabilize();
    for (const id of ABC) expect(texts(h, id)).toEqual(refs.map((_, i) => `w${i}`));
    // Nothing is left to send once everyone is up to date.
    expect(a.hasReady()).toBe(false);
  });

  test('a follower refuses proposals with NotLeaderError naming the leader', () => {
    const h = new Harness(ABC);
    h.elect('a');
    let caught: unknown;
    try {
      h.propose('b', 'x');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(NotLeaderError);
    expect(caught).toMatchObject({ name: 'NotLeaderError', code: 'not_leader', leaderHint: 'a' });
  });

  test('proposals are dropped with ProposalDroppedError beyond maxUncommittedEntriesBytes', () => {
    const h = new Harness(ABC, { maxUncommittedEntriesBytes: 20 });
    h.elect('a');
    h.crash('b');
    h.crash('c');
    h.propose('a', '0123456789');
    h.propose('a', '0123456789');
    expect(() => h.propose('a', 'x')).toThrow(expect.objectContaining({ code: 'proposal_dropped' }) as Error);
  });

  test('Ready: entries and hard state come in the same Ready as the messages that depend on them', () => {
    const h = new Harness(ABC);
    h.elect('a');
    h.propose('a', 'x');
    h.stabilize();
    for (const id of ['b', 'c']) {
      for (const rd of h.node(id).readies) {
        for (const m of rd.messages) {
          if (m.type !== 'appResp' || m.reject) continue;
          // Every acknowledged index is durable (in this Ready or an earlier one).
          expect(h.node(id).durable.entries.some((e) => e.index === m.index) || m.index === 0).toBe(true);
        }
      }
    }
  });
});
