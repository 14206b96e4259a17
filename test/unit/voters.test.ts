// Proves the leader's membership decisions (node/cluster/voters.ts): the Raft configuration follows the member list,
// 3 voters (5 from 5 members, capped by settings), caught-up healthy learners only, distinct sites then low RTT
// first, an unreachable voter replaced only after voterReplaceAfterMs (promote first, then demote), never the leader.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Member } from '../../consensus/cluster/index.js';
import { learnerCatchUpMaxLag, nextVoterAction, targetVoters, type VoterInputs } from '../../node/cluster/voters.js';

const replaceAfterMs = 30_000;
const now = 1_000_000;

function member(id: string, role: 'voter' | 'learner', site = ''): Member {
  return { id, name: id.toLowerCase(), role, addresses: [], site, joinedAt: 0, status: 'active' };
}

/** A leader A with the given voters and learners, all healthy and caught up unless overridden. */
function inputs(voters: string[], learners: string[], over: Partial<VoterInputs> = {}, sites: Record<string, string> = {}): VoterInputs {
  const ids = [...voters, ...learners];
  return {
    self: 'A',
    members: ids.map((id) => member(id, voters.includes(id) ? 'voter' : 'learner', sites[id] ?? '')),
    conf: { voters, learners, votersOutgoing: [] },
    lastIndex: 100,
    match: new Map(ids.map((id) => [id, 100])),
    healthy: new Set(ids),
    unhealthySinceMs: new Map(),
    rttMs: new Map(),
    nowMs: now,
    settings: { desiredVoters: 5, voterReplaceAfterMs: replaceAfterMs },
    ...over,
  };
}

describe('targetVoters', () => {
  it('keeps 3 voters, 5 from 5 members, never more than members or settings allow', () => {
    expect([1, 2, 3, 4, 5, 9].map((n) => targetVoters(n, 5))).toEqual([1, 2, 3, 3, 5, 5]);
    expect(targetVoters(9, 3)).toBe(3);
    expect(targetVoters(9, 1)).toBe(1);
  });
});

describe('nextVoterAction', () => {
  it('makes the configuration follow the member list first', () => {
    const base = inputs(['A', 'B'], ['C']);
    expect(nextVoterAction({ ...base, members: base.members.filter((m) => m.id !== 'C') })).toMatchObject({ kind: 'removeFromConf', id: 'C' });
    expect(nextVoterAction({ ...base, members: [...base.members, member('D', 'learner')] })).toMatchObject({ kind: 'addLearner', id: 'D' });
    const stale = base.members.map((m) => (m.id === 'B' ? { ...m, role: 'learner' as const } : m));
    expect(nextVoterAction({ ...base, members: stale })).toEqual({ kind: 'setRole', id: 'B', role: 'voter', reason: expect.any(String) as string });
  });

  it('promotes caught-up, healthy learners up to 3 voters and no further below 5 members', () => {
    expect(nextVoterAction(inputs(['A'], ['B', 'C']))).toMatchObject({ kind: 'promote', id: 'B' });
    expect(nextVoterAction(inputs(['A', 'B', 'C'], ['D']))).toBeNull();
    const lagging = inputs(['A'], ['B'], { match: new Map([['B', 100 - learnerCatchUpMaxLag - 1]]) });
    expect(nextVoterAction(lagging)).toBeNull();
    expect(nextVoterAction(inputs(['A'], ['B'], { healthy: new Set(['A']) }))).toBeNull();
    expect(nextVoterAction(inputs(['A', 'B', 'C'], ['D', 'E']))).toMatchObject({ kind: 'promote' });
    expect(nextVoterAction(inputs(['A', 'B', 'C'], ['D', 'E'], { settings: { desiredVoters: 3, voterReplaceAfterMs: replaceAfterMs } }))).toBeNull();
  });

  it('prefers a site no voter has, then the lowest RTT', () => {
    const sites = { A: 'x', B: 'x', C: 'y' };
    expect(nextVoterAction(inputs(['A'], ['B', 'C'], { rttMs: new Map([['B', 1], ['C', 50]]) }, sites))).toMatchObject({ kind: 'promote', id: 'C' });
    expect(nextVoterAction(inputs(['A'], ['B', 'C'], { rttMs: new Map([['B', 9], ['C', 2]]) }))).toMatchObject({ kind: 'promote', id: 'C' });
  });

  it('replaces a voter unreachable beyond the timeout: promote a learner, then demote it; never before', () => {
    const downSince = new Map([['C', now - replaceAfterMs + 1]]);
    const healthy = new Set(['A', 'B', 'D']);
    expect(nextVoterAction(inputs(['A', 'B', 'C'], ['D'], { healthy, unhealthySinceMs: downSince }))).toBeNull();
    const longDown = new Map([['C', now - replaceAfterMs]]);
    expect(nextVoterAction(inputs(['A', 'B', 'C'], ['D'], { healthy, unhealthySinceMs: longDown }))).toMatchObject({ kind: 'promote', id: 'D' });
    expect(nextVoterAction(inputs(['A', 'B', 'C', 'D'], [], { healthy, unhealthySinceMs: longDown }))).toMatchObject({ kind: 'demote', id: 'C' });
    // No healthy learner: the dead voter stays (removing it would not help the quorum).
    expect(nextVoterAction(inputs(['A', 'B', 'C'], [], { healthy, unhealthySinceMs: longDown }))).toBeNull();
  });

  it('replaces a dead voter with a learner on its site, not the nearest one on a covered site', () => {
    const sites = { A: 'a', B: 'b', C: 'c', D: 'a', E: 'b', F: 'c' };
    const inp = inputs(['A', 'B', 'C'], ['D', 'E', 'F'], {
      healthy: new Set(['A', 'C', 'D', 'E', 'F']),
      unhealthySinceMs: new Map([['B', now - replaceAfterMs]]),
      rttMs: new Map([['D', 1], ['E', 5], ['F', 2]]),
      settings: { desiredVoters: 3, voterReplaceAfterMs: replaceAfterMs },
    }, sites);
    expect(nextVoterAction(inp)).toMatchObject({ kind: 'promote', id: 'E' });
  });

  it('rebalances voters that share a site when a learner covers a new one, then stays put', () => {
    const sites = { A: 'a', B: 'a', C: 'b', D: 'c' };
    const three = { desiredVoters: 3 as const, voterReplaceAfterMs: replaceAfterMs };
    expect(nextVoterAction(inputs(['A', 'B', 'C'], ['D'], { settings: three }, sites))).toMatchObject({ kind: 'promote', id: 'D' });
    expect(nextVoterAction(inputs(['A', 'B', 'C', 'D'], [], { settings: three }, sites))).toMatchObject({ kind: 'demote', id: 'B' });
    expect(nextVoterAction(inputs(['A', 'C', 'D'], ['B'], { settings: three }, sites))).toBeNull();
  });

  it('waits while a joint configuration settles', () => {
    const base = inputs(['A'], ['B']);
    expect(nextVoterAction({ ...base, conf: { ...base.conf, votersOutgoing: ['A'] } })).toBeNull();
  });

  it('never removes or demotes the leader, and promotes only healthy learners of the configuration', () => {
    const ids = ['A', 'B', 'C', 'D', 'E', 'F', 'G'];
    fc.assert(
      fc.property(
        fc.subarray(ids.slice(1)),
        fc.subarray(ids.slice(1)),
        fc.subarray(ids),
        fc.constantFrom(1, 3, 5),
        (voterPick, healthyPick, memberPick, desiredVoters) => {
          const voters = ['A', ...voterPick];
          const learners = ids.filter((id) => !voters.includes(id));
          const memberIds = new Set(['A', ...memberPick]);
          const inp = inputs(voters, learners, {
            healthy: new Set(['A', ...healthyPick]),
            unhealthySinceMs: new Map(ids.map((id) => [id, now - 2 * replaceAfterMs])),
            settings: { desiredVoters, voterReplaceAfterMs: replaceAfterMs },
          });
          const action = nextVoterAction({ ...inp, members: inp.members.filter((m) => memberIds.has(m.id)) });
          if (action === null) return;
          if (action.kind === 'demote' || action.kind === 'removeFromConf') expect(action.id).not.toBe('A');
          if (action.kind === 'promote') {
            expect(learners).toContain(action.id);
            expect(inp.healthy.has(action.id)).toBe(true);
            expect(memberIds.has(action.id)).toBe(true);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
