// Proves the batching of writes a follower forwards to the leader: writes arriving while a request is in flight go
// together in the next one (bounded in count and bytes), each caller gets its own result or error shaped as a
// single request's (so the retry rule stays per write), local apply is awaited once per batch, and the leader
// proposes a batch in one turn and answers each command on its own; peer input is bounded and validated.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ClusterError, encodeCommand, validateCommand, type ApplyResult, type ClusterCommand } from '../../consensus/cluster/index.js';
import { NotLeaderError, RaftOverloadedError } from '../../consensus/driver.js';
import { MeshRemoteError } from '../../mesh/errors.js';
import {
  ForwardBatcher,
  batchOutcomes,
  forwardBatchBytesMax,
  forwardBatchCommandsMax,
  forwardQueuedMax,
  forwardRequestsInFlightMax,
  proposeBatch,
  validateBatchAnswer,
  validatePeerRequest,
  type ForwardLink,
  type ForwardOutcome,
} from '../../node/cluster/service.js';

const leader = '12D3KooWMKxtkcFCgBiKoiSxPPvQbQ8omxLXE9VY7FJFeFHKTXNJ';

function revoke(): ClusterCommand {
  return validateCommand({ type: 'token.revoke', at: 1_700_000_000_000, actor: { kind: 'node', id: leader }, from: null, id: randomUUID() });
}

function applied(index: number): ApplyResult {
  return { index, type: 'token.revoke', ids: [], auditSeq: index } as unknown as ApplyResult;
}

/** A leader stand-in: each request waits until released; answers come from `answer`. */
class FakeLink implements ForwardLink {
  readonly sent: ClusterCommand[][] = [];
  readonly waits: number[] = [];
  private releases: (() => void)[] = [];
  private next = 1;
  answer: (commands: ClusterCommand[]) => ForwardOutcome[] = (commands) => commands.map(() => ({ ok: true, result: applied(this.next++) }));
  waitError: Error | null = null;

  async send(_leader: string, commands: ClusterCommand[]): Promise<ForwardOutcome[]> {
    this.sent.push(commands);
    await new Promise<void>((r) => this.releases.push(r));
    return this.answer(commands);
  }

  waitApplied(index: number): Promise<void> {
    this.waits.push(index);
    return this.waitError === null ? Promise.resolve() : Promise.reject(this.waitError);
  }

  /** Answers the requests in flight. */
  async release(): Promise<void> {
    const r = this.releases;
    this.releases = [];
    for (const f of r) f();
    await new Promise((x) => setImmediate(x));
  }
}

const settle = <T>(p: Promise<T>): Promise<PromiseSettledResult<T>> => Promise.allSettled([p]).then(([r]) => r as PromiseSettledResult<T>);

describe('ForwardBatcher (follower)', () => {
  it('sends writes at once while a request slot is free, then those arriving meanwhile as one batch; each gets its own result', async () => {
    const link = new FakeLink();
    const b = new ForwardBatcher(link);
    const total = forwardRequestsInFlightMax + 50;
    const all = Array.from({ length: total }, () => b.forward(leader, revoke(), 100));
    const singles = Array.from({ length: forwardRequestsInFlightMax }, () => 1);
    expect(link.sent.map((s) => s.length)).toEqual(singles);
    expect(b.queued).toBe(50);
    await link.release();
    expect(link.sent.map((s) => s.length)).toEqual([...singles, 50]);
    await link.release();
    const results = await Promise.all(all);
    expect(results.map((r) => r.index)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    // Local apply is awaited once per request, for its highest index.
    expect(link.waits).toEqual([...singles.map((_, i) => i + 1), total]);
    expect(b.queued).toBe(0);
  });

  it('bounds a batch by command count and by bytes', async () => {
    const link = new FakeLink();
    const b = new ForwardBatcher(link);
    const all = Array.from({ length: forwardRequestsInFlightMax }, () => b.forward(leader, revoke(), 10));
    for (let i = 0; i < forwardBatchCommandsMax + 10; i++) all.push(b.forward(leader, revoke(), 10));
    const big = Math.floor(forwardBatchBytesMax / 3);
    for (let i = 0; i < 4; i++) all.push(b.forward(leader, revoke(), big));
    for (let i = 0; i < 5; i++) await link.release();
    await Promise.all(all);
    const sizes = link.sent.map((s) => s.length).slice(forwardRequestsInFlightMax);
    expect(sizes[0]).toBe(forwardBatchCommandsMax);
    // 10 small + 2 big fit the byte bound, the other 2 big go next.
    expect(sizes.slice(1)).toEqual([12, 2]);
  });

  it('gives each write its own refusal, shaped as a single request raises it, and fails only the others on apply timeout', async () => {
    const link = new FakeLink();
    const b = new ForwardBatcher(link);
    const first = Promise.all(Array.from({ length: forwardRequestsInFlightMax }, () => b.forward(leader, revoke(), 100)));
    const batch = [b.forward(leader, revoke(), 100), b.forward(leader, revoke(), 100), b.forward(leader, revoke(), 100)].map(settle);
    await link.release(); // first answered
    await first;
    link.answer = (commands) =>
      batchOutcomes(
        { results: commands.map((_, i) => (i === 1 ? { ok: false, code: 'not_leader', message: 'not the leader' } : { ok: true, result: applied(10 + i) })) },
        leader,
      );
    const apply = new Error('not applied here in time');
    link.waitError = apply;
    await link.release();
    const [a, refused, c] = await Promise.all(batch);
    expect(refused).toMatchObject({ status: 'rejected' });
    const err = (refused as PromiseRejectedResult).reason as MeshRemoteError;
    expect(err).toBeInstanceOf(MeshRemoteError);
    expect(err.details?.remoteCode).toBe('not_leader');
    for (const r of [a, c]) expect(r).toEqual({ status: 'rejected', reason: apply });
    expect(link.waits.at(-1)).toBe(12);
  });

  it('gives every write of a failed request that request\'s error', async () => {
    const link = new FakeLink();
    const b = new ForwardBatcher(link);
    const failure = new MeshRemoteError('not the leader', { details: { remoteCode: 'not_leader' } });
    link.answer = () => {
      throw failure;
    };
    const all = Array.from({ length: forwardRequestsInFlightMax + 2 }, () => b.forward(leader, revoke(), 1)).map(settle);
    await link.release();
    await link.release();
    for (const r of await Promise.all(all)) expect(r).toEqual({ status: 'rejected', reason: failure });
    expect(link.sent.map((s) => s.length)).toEqual([...Array.from({ length: forwardRequestsInFlightMax }, () => 1), 2]);
  });

  it(`refuses writes beyond ${forwardQueuedMax} queued`, async () => {
    const link = new FakeLink();
    const b = new ForwardBatcher(link);
    const all = Array.from({ length: forwardQueuedMax + forwardRequestsInFlightMax }, () => b.forward(leader, revoke(), 1));
    for (const p of all) p.catch(() => undefined);
    await expect(b.forward(leader, revoke(), 1)).rejects.toBeInstanceOf(RaftOverloadedError);
    while (link.sent.length < Math.ceil(forwardQueuedMax / forwardBatchCommandsMax) + 1) await link.release();
    await link.release();
    await Promise.all(all);
  });
});

describe('proposeBatch (leader)', () => {
  it('proposes every command in one turn, in order, and answers each on its own', async () => {
    const commands = [revoke(), revoke(), revoke()];
    const proposed: Uint8Array[] = [];
    const resolvers: ((v: unknown) => void)[] = [];
    const answer = proposeBatch((bytes) => {
      proposed.push(bytes);
      if (proposed.length === 2) throw new NotLeaderError(null); // leadership lost mid-batch: only this one refused
      if (proposed.length === 3) return Promise.reject(new ClusterError('not_found', 'no such token'));
      return new Promise((r) => resolvers.push(r));
    }, commands);
    // All proposed before any is applied: they share the leader's next Ready.
    expect(proposed).toEqual(commands.map((c) => encodeCommand(c)));
    for (const r of resolvers) r(applied(7));
    const { results } = await answer;
    expect(results[0]).toEqual({ ok: true, result: applied(7) });
    expect(results[1]).toMatchObject({ ok: false, code: 'not_leader' });
    expect(results[2]).toMatchObject({ ok: false, code: 'not_found', message: 'no such token' });
  });

  it('validates a batch from a peer: bounded count, every command checked; and the answer on the way back', () => {
    const cmd = revoke();
    expect(validatePeerRequest({ op: 'proposeBatch', commands: [cmd, cmd] })).toEqual({ op: 'proposeBatch', commands: [cmd, cmd] });
    expect(() => validatePeerRequest({ op: 'proposeBatch', commands: [] })).toThrow();
    expect(() => validatePeerRequest({ op: 'proposeBatch', commands: Array.from({ length: forwardBatchCommandsMax + 1 }, () => cmd) })).toThrow();
    expect(() => validatePeerRequest({ op: 'proposeBatch', commands: [cmd, { ...cmd, type: 'nope' }] })).toThrow();
    expect(() => validatePeerRequest({ op: 'proposeBatch', commands: 'x' })).toThrow();
    expect(validateBatchAnswer({ results: [{ ok: true, result: applied(3) }, { ok: false, code: 'conflict', message: 'm' }] }, 2).results).toHaveLength(2);
    expect(() => validateBatchAnswer({ results: [{ ok: true, result: applied(3) }] }, 2)).toThrow();
    expect(() => validateBatchAnswer({ results: [{ ok: true, result: { index: 'x' } }] }, 1)).toThrow();
    expect(() => validateBatchAnswer({ results: [{ ok: false, code: 1 }] }, 1)).toThrow();
  });
});
