// Proves the leader's voter management with 6 real node processes: 3 voters on distinct sites, 5 from 5 members, a SIGKILLed voter replaced by a healthy learner only after voterReplaceAfter, and site-aware placement.
// Six nodes on loopback are formed with the CLI (`cluster init`, `cluster join-token create` on a different member
// each time, `cluster join TOKEN --site S`) with sites v1 a, v2 b, v3 c, v4 a, v5 b, v6 c. Expected: 3 voters on
// the three sites at 3 members; the 4th stays a learner; the 5th joining makes 5 voters; the 6th stays a learner.
// Then `cluster settings set --voter-replace-after 3` and a non-leader voter is SIGKILLed while a client keeps
// writing: ~1 s later nothing has changed; within 20 s the learner is promoted and the dead node demoted (`node
// list`: learner, unreachable), 5 voters again, no write refused; neither change happens before 3 s. The killed node
// restarted on its data dir comes back as a learner, catches up and is not promoted back. Last, with `--max-voters 3`
// the leader demotes site duplicates (3 voters on 3 sites), and when the site-c voter dies the learner that replaces
// it must keep the voters on distinct sites (a site-c learner is available). Timings are printed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, spawnCli, waitForLog } from '../support/proc.js';
import { api, logCollector, nodeRows, outcome, pollFor, tokenNames, type NodeRow, type LoggedNodeProc as NodeProc } from '../support/cluster-http.js';

/** Joins, promotions and catch-up on a loaded 2-core machine. */
const convergeBoundMs = 20_000;
/** The replacement timeout set for this test (the default is 30 s). */
const replaceAfterS = 3;
/** Kill → replaced: the timeout, plus the telemetry TTL (health is "connected or fresh telemetry"), reconcile rounds and slack. */
const replaceBoundMs = 20_000;
/** Reconcile rounds (500 ms each) to wait before asserting that nothing more changes. */
const settleMs = 1_500;
/** How far a learner's applied index may trail the leader's commit index to count as caught up. */
const indexSlack = 16;

const sites: Record<string, string> = { v1: 'site-a', v2: 'site-b', v3: 'site-c', v4: 'site-a', v5: 'site-b', v6: 'site-c' };

interface Status {
  nodeId: string;
  raft: { role: string; term: number; leader: string | null; commit: number; applied: number } | null;
  members: Array<{ id: string; name: string; role: string; site: string }>;
}

/** Every process ever started (restarts included): afterAll kills those still running. */
const started: NodeProc[] = [];
/** The current process of each node by name. */
const nodes = new Map<string, NodeProc>();
const dataDirs: string[] = [];
let admin = '';
/** The phases build on each other: a later one refuses to run on a cluster an earlier one left broken. */
const done = { formed: false, replaced: false, restarted: false };

function needs(phase: keyof typeof done): void {
  if (!done[phase]) throw new Error(`not run: the earlier phase "${phase}" failed`);
}

async function startNode(name: string, dataDir?: string, meshListen = '/ip4/127.0.0.1/tcp/0'): Promise<NodeProc> {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), `nc-voters-${name}-`));
  if (dataDir === undefined) dataDirs.push(dir);
  const child = spawnCli([
    'node', 'start', '--data-dir', dir, '--name', name, '--api-host', '127.0.0.1', '--api-port', '0',
    '--set', `mesh.listen=${meshListen}`, '--set', 'mesh.mdns=false',
  ]);
  const log = logCollector(child);
  const p: NodeProc = { name, dataDir: dir, child, url: '', peerId: '', log, meshListen };
  started.push(p);
  const up = await waitForLog(child, (r) => r.msg === 'node started', 45_000);
  p.url = up.api as string;
  p.peerId = up.peerId as string;
  p.meshListen = (log.has('mesh started')?.listen as string[] | undefined)?.[0]?.replace(/\/p2p\/.*$/, '') ?? meshListen;
  nodes.set(name, p);
  return p;
}

/** A node's name from its peer id (for log lines). */
function nameOf(peerId: unknown): string {
  return [...nodes.values()].find((p) => p.peerId === peerId)?.name ?? String(peerId);
}

function node(name: string): NodeProc {
  const p = nodes.get(name);
  if (p === undefined) throw new Error(`no node ${name}`);
  return p;
}

async function cli(p: NodeProc, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCli([...args, '--api', p.url, '--json', ...(admin === '' ? [] : ['--token', admin])], { timeoutMs: 30_000 });
}

async function cliJson<T>(p: NodeProc, args: string[]): Promise<T> {
  const r = await cli(p, args);
  expect(r.code, `novacron ${args.join(' ')} on ${p.name}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout) as T;
}

async function status(p: NodeProc): Promise<Status | null> {
  const r = await api<Status>(p.url, 'GET', '/v1/cluster/status', { token: admin, timeoutMs: 5_000 });
  return r.status === 200 ? r.body : null;
}

const isVoter = (r: NodeRow): boolean => r.raftRole === 'leader' || r.raftRole === 'voter';
const names = (rows: NodeRow[]): string[] => rows.map((r) => r.name).sort();
const voterSites = (rows: NodeRow[]): string[] => rows.filter(isVoter).map((r) => r.site).sort();
const describeRows = (rows: NodeRow[] | null): string =>
  rows === null ? '(no answer)' : rows.map((r) => `${r.name}:${r.site}:${r.raftRole}${r.reachable ? '' : ':down'}`).sort().join(' ');

/** The leader's own view of the configuration: GET /v1/nodes on the leader (polled until it answers). */
async function leaderRows(leader: NodeProc): Promise<NodeRow[]> {
  return pollFor(`GET /v1/nodes on ${leader.name}`, 10_000, () => nodeRows(leader.url, admin), 200);
}

/** Polls the leader's node list until `check` holds; the error says what the list was. */
async function untilRows(leader: NodeProc, what: string, check: (rows: NodeRow[]) => boolean, boundMs = convergeBoundMs): Promise<NodeRow[]> {
  let last: NodeRow[] | null = null;
  try {
    return await pollFor(what, boundMs, async () => {
      last = await nodeRows(leader.url, admin);
      return last !== null && check(last) ? last : null;
    }, 200);
  } catch (err) {
    throw new Error(`${(err as Error).message}; leader's node list: ${describeRows(last)}`);
  }
}

/** Joins through a token from `issuer`, then waits until the joiner follows the leader and has applied the log. */
async function joinNode(joiner: NodeProc, issuer: NodeProc, leader: NodeProc): Promise<void> {
  const { token } = await cliJson<{ token: string }>(issuer, ['cluster', 'join-token', 'create']);
  const site = sites[joiner.name] ?? '';
  await cliJson(joiner, ['cluster', 'join', token, '--site', site]);
  await caughtUp(joiner, leader);
}

/** Until `p` follows `leader` and its applied index is within indexSlack of the leader's commit index. */
async function caughtUp(p: NodeProc, leader: NodeProc): Promise<void> {
  let last = '';
  await pollFor(`${p.name} caught up`, convergeBoundMs, async () => {
    const [mine, lead] = [await status(p), await status(leader)];
    last = `${p.name} ${JSON.stringify(mine?.raft)}, ${leader.name} ${JSON.stringify(lead?.raft)}`;
    return mine?.raft != null && lead?.raft != null && mine.raft.leader === leader.peerId && lead.raft.commit - mine.raft.applied <= indexSlack;
  }, 200).catch((err: unknown) => {
    throw new Error(`${(err as Error).message}: ${last}`);
  });
}

/**
 * Kills a voter with SIGKILL while `writer` keeps writing, and samples the leader's node list until it was
 * replaced: `replacement` a learner that became a voter, the dead node a learner, `voters` voters again.
 */
async function killAndWatch(leader: NodeProc, victim: NodeProc, voters: number, checkAtMs: number) {
  const before = await leaderRows(leader);
  const learnersBefore = before.filter((r) => r.raftRole === 'learner').map((r) => r.name);
  const samples: Array<{ t: number; rows: NodeRow[] }> = [];
  let stop = false;
  const sampler = (async () => {
    while (!stop) {
      const rows = await nodeRows(leader.url, admin);
      if (rows !== null) samples.push({ t: performance.now(), rows });
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const killedAt = performance.now();
  victim.child.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, checkAtMs));
  const early = await leaderRows(leader);
  const earlyAt = Math.round(performance.now() - killedAt);
  const replaced = (rows: NodeRow[]): boolean =>
    rows.find((r) => r.id === victim.peerId)?.raftRole === 'learner' && rows.filter(isVoter).length === voters;
  let final: NodeRow[];
  try {
    final = await untilRows(leader, `${victim.name} replaced`, replaced, replaceBoundMs);
    // The sampler may not have seen the final rows yet: they count, at the time they were read.
    samples.push({ t: performance.now(), rows: final });
  } finally {
    stop = true;
    await sampler;
  }
  const firstAt = (pred: (rows: NodeRow[]) => boolean): number => {
    const s = samples.find((x) => pred(x.rows));
    return s === undefined ? Infinity : Math.round(s.t - killedAt);
  };
  const promotedName = learnersBefore.find((n) => final.some((r) => r.name === n && isVoter(r)));
  const timings = {
    unreachableMs: firstAt((rows) => rows.find((r) => r.id === victim.peerId)?.reachable === false),
    promotedMs: promotedName === undefined ? Infinity : firstAt((rows) => rows.some((r) => r.name === promotedName && isVoter(r))),
    demotedMs: firstAt((rows) => rows.find((r) => r.id === victim.peerId)?.raftRole === 'learner'),
    replacedMs: firstAt(replaced),
  };
  return { early, earlyAt, final, promotedName, timings, samples: samples.length };
}

beforeAll(async () => {
  await Promise.all(['v1', 'v2', 'v3', 'v4', 'v5', 'v6'].map((n) => startNode(n)));
}, 90_000);

afterAll(() => {
  for (const p of started) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  for (const d of dataDirs) rmSync(d, { recursive: true, force: true });
});

describe('voter count, placement and replacement', () => {
  it('keeps 3 voters on distinct sites, 5 from 5 members, and the 6th member a learner', async () => {
    const v1 = node('v1');
    const formStart = performance.now();
    const init = await cliJson<{ adminToken: string }>(v1, ['cluster', 'init']);
    admin = init.adminToken;
    await cliJson(v1, ['node', 'set', 'v1', '--site', 'site-a']);

    // v2 and v3 join (tokens from v1 and v2): every member is a voter, on three distinct sites.
    await joinNode(node('v2'), v1, v1);
    await joinNode(node('v3'), node('v2'), v1);
    const three = await untilRows(v1, '3 voters', (rows) => rows.length === 3 && rows.filter(isVoter).length === 3);
    expect(voterSites(three)).toEqual(['site-a', 'site-b', 'site-c']);
    expect(three.find((r) => r.name === 'v1')?.raftRole).toBe('leader');

    // v4 (token from v3) stays a learner: 3 voters below 5 members.
    await joinNode(node('v4'), node('v3'), v1);
    await untilRows(v1, 'v4 a learner', (rows) => rows.find((r) => r.name === 'v4')?.raftRole === 'learner');
    await new Promise((r) => setTimeout(r, settleMs));
    const four = await leaderRows(v1);
    expect(describeRows(four)).toBe('v1:site-a:leader v2:site-b:voter v3:site-c:voter v4:site-a:learner');

    // v5 (token from v4, a learner) makes 5 members: the leader keeps 5 voters.
    await joinNode(node('v5'), node('v4'), v1);
    const five = await untilRows(v1, '5 voters', (rows) => rows.length === 5 && rows.filter(isVoter).length === 5);
    expect(names(five.filter(isVoter))).toEqual(['v1', 'v2', 'v3', 'v4', 'v5']);

    // v6 (token from v5) stays a learner: 5 voters is the most.
    await joinNode(node('v6'), node('v5'), v1);
    await untilRows(v1, 'v6 a learner', (rows) => rows.find((r) => r.name === 'v6')?.raftRole === 'learner');
    await new Promise((r) => setTimeout(r, settleMs));
    const six = await cliJson<NodeRow[]>(v1, ['node', 'list']);
    expect(six).toHaveLength(6);
    expect(names(six.filter(isVoter))).toEqual(['v1', 'v2', 'v3', 'v4', 'v5']);
    expect(six.find((r) => r.name === 'v6')?.raftRole).toBe('learner');
    expect(new Set(voterSites(six))).toEqual(new Set(['site-a', 'site-b', 'site-c']));
    expect(six.every((r) => r.reachable && r.site === sites[r.name])).toBe(true);
    // The member records (replicated state) agree with the Raft configuration, on a follower too.
    const s = await cliJson<Status>(node('v6'), ['cluster', 'status']);
    expect(s.members.filter((m) => m.role === 'voter').map((m) => m.name).sort()).toEqual(['v1', 'v2', 'v3', 'v4', 'v5']);
    done.formed = true;
    console.log(`[cluster-voters] formed 6 members (5 voters over ${voterSites(six).join(',')}) in ${Math.round(performance.now() - formStart)} ms`);
  }, 120_000);

  it(`replaces a SIGKILLed voter by the healthy learner after --voter-replace-after ${replaceAfterS}, not before, and writes keep succeeding`, async () => {
    needs('formed');
    const v1 = node('v1');
    const set = await cliJson<{ desiredVoters: number; voterReplaceAfterMs: number }>(node('v3'), ['cluster', 'settings', 'set', '--voter-replace-after', String(replaceAfterS)]);
    expect(set).toEqual({ desiredVoters: 5, voterReplaceAfterMs: replaceAfterS * 1000 });
    expect(await cliJson(node('v6'), ['cluster', 'settings', 'show'])).toEqual(set);
    expect((await status(v1))?.raft?.role).toBe('leader');

    // A client writes through the leader and a follower throughout; every write must be acknowledged.
    const writes: Array<{ name: string; via: string; result: string }> = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        const via = i % 2 === 0 ? v1 : node('v3');
        const name = `w-${i}`;
        const r = await api(via.url, 'POST', '/v1/tokens', { token: admin, body: { name, role: 'viewer' }, timeoutMs: 20_000 });
        writes.push({ name, via: via.name, result: outcome(r) });
        await new Promise((res) => setTimeout(res, 100));
      }
    })();

    const victim = node('v2');
    let watched: Awaited<ReturnType<typeof killAndWatch>>;
    try {
      watched = await killAndWatch(v1, victim, 5, 1_000);
      // CLI writes succeed too, right after the replacement.
      await cliJson(node('v4'), ['token', 'create', '--name', 'after-replacement', '--role', 'viewer']);
    } finally {
      writing = false;
      await writer;
    }
    const { early, earlyAt, final, promotedName, timings } = watched;
    console.log(
      `[cluster-voters] kill ${victim.name} (voter) with replace-after ${replaceAfterS} s: leader saw it unreachable after ${timings.unreachableMs} ms, ` +
        `promoted ${promotedName ?? 'nobody'} after ${timings.promotedMs} ms, demoted ${victim.name} after ${timings.demotedMs} ms, ` +
        `5 voters again after ${timings.replacedMs} ms (bound ${replaceBoundMs}); ${watched.samples} samples; ` +
        `${writes.length} writes during the test, refused: ${JSON.stringify(writes.filter((w) => w.result !== '201'))}`,
    );

    // Before the timeout nothing changed: the dead node was still a voter, v6 still a learner.
    expect(earlyAt).toBeLessThan(replaceAfterS * 1000);
    expect(early.find((r) => r.name === victim.name)?.raftRole, `${earlyAt} ms after the kill: ${describeRows(early)}`).toBe('voter');
    expect(early.find((r) => r.name === 'v6')?.raftRole).toBe('learner');
    expect(timings.promotedMs, 'the learner was not promoted before the timeout').toBeGreaterThanOrEqual(replaceAfterS * 1000);
    expect(timings.demotedMs, 'the dead voter was not demoted before the timeout').toBeGreaterThanOrEqual(replaceAfterS * 1000);
    expect(timings.replacedMs).toBeLessThan(replaceBoundMs);

    // After: the healthy learner is a voter, the dead node a learner, 5 voters.
    expect(promotedName).toBe('v6');
    expect(names(final.filter(isVoter))).toEqual(['v1', 'v3', 'v4', 'v5', 'v6']);
    // The node list calls a member reachable while it is connected or its telemetry is fresh (a TTL of 3 beats + 1 s),
    // so the dead node turns unreachable there at most that long after the kill, maybe after its replacement.
    const listed = await pollFor('the dead node listed as unreachable', 10_000, async () => {
      const rows = await cliJson<NodeRow[]>(v1, ['node', 'list']);
      return rows.find((r) => r.name === victim.name)?.reachable === false ? rows : null;
    });
    expect(listed.find((r) => r.name === victim.name)).toMatchObject({ raftRole: 'learner', reachable: false });
    expect(listed.filter(isVoter)).toHaveLength(5);
    expect(new Set(voterSites(listed))).toEqual(new Set(['site-a', 'site-b', 'site-c']));
    const s = await status(node('v5'));
    expect(s?.members.find((m) => m.name === victim.name)?.role).toBe('learner');

    expect(writes.length, 'the writer made writes during the kill and replacement').toBeGreaterThan(10);
    expect(writes.filter((w) => w.result !== '201'), 'writes refused during the kill and replacement').toEqual([]);
    const held = new Set((await tokenNames(node('v5').url, admin)) ?? []);
    expect(writes.filter((w) => !held.has(w.name)).map((w) => w.name), 'acknowledged writes missing on v5').toEqual([]);
    done.replaced = true;
  }, 60_000);

  it('the killed node restarted comes back as a learner, catches up and is not promoted back', async () => {
    needs('replaced');
    const v1 = node('v1');
    const old = node('v2');
    const restartAt = performance.now();
    const v2 = await startNode('v2', old.dataDir, old.meshListen);
    const rows = await untilRows(v1, 'v2 reachable again, as a learner', (r) => r.find((x) => x.name === 'v2')?.reachable === true && r.find((x) => x.name === 'v2')?.raftRole === 'learner');
    expect(rows.filter(isVoter)).toHaveLength(5);
    await caughtUp(v2, v1);
    const stale = await tokenNames(v2.url, admin, true);
    expect(stale).toContain('after-replacement');
    const caughtUpMs = Math.round(performance.now() - restartAt);
    await new Promise((r) => setTimeout(r, settleMs));
    const after = await cliJson<NodeRow[]>(v1, ['node', 'list']);
    expect(after.find((r) => r.name === 'v2')).toMatchObject({ raftRole: 'learner', reachable: true });
    expect(names(after.filter(isVoter))).toEqual(['v1', 'v3', 'v4', 'v5', 'v6']);
    done.restarted = true;
    console.log(`[cluster-voters] restarted v2: a caught-up learner ${caughtUpMs} ms after the restart; voters still ${names(after.filter(isVoter)).join(',')}`);
  }, 60_000);

  it('with --max-voters 3 keeps the voters on distinct sites, also when it replaces a dead voter', async () => {
    needs('restarted');
    const v1 = node('v1');
    await cliJson(v1, ['cluster', 'settings', 'set', '--max-voters', '3']);
    // Demotion takes site duplicates first: whatever the RTTs, 3 voters on the 3 sites remain.
    const three = await untilRows(v1, '3 voters', (rows) => rows.filter(isVoter).length === 3);
    await new Promise((r) => setTimeout(r, settleMs));
    const settled = await leaderRows(v1);
    expect(settled.filter(isVoter), describeRows(settled)).toHaveLength(3);
    expect(voterSites(settled), describeRows(settled)).toEqual(['site-a', 'site-b', 'site-c']);
    expect(names(three.filter(isVoter))).toEqual(names(settled.filter(isVoter)));

    // A voter dies while a healthy learner on its site exists: its replacement must keep the voters on distinct
    // sites. The victim is the site-c voter, so the restarted v2 (a site-b learner) is a wrong choice here.
    const victimRow = settled.find((r) => r.raftRole === 'voter' && r.site === 'site-c');
    expect(victimRow, describeRows(settled)).toBeDefined();
    const victim = node(victimRow!.name);
    const sameSiteLearner = settled.find((r) => r.raftRole === 'learner' && r.site === 'site-c' && r.reachable);
    expect(sameSiteLearner, describeRows(settled)).toBeDefined();
    const learnerRtts = settled.filter((r) => r.raftRole === 'learner').map((r) => `${r.name}(${r.site}) ${r.rttMs?.toFixed(2) ?? '?'} ms`).join(', ');
    const logFrom = v1.log.records.length;
    const watched = await killAndWatch(v1, victim, 3, 1_000);
    const { final, promotedName, timings } = watched;
    const changes = v1.log.records.slice(logFrom).filter((r) => r.msg === 'raft membership changed');
    console.log(`[cluster-voters] leader's log: ${changes.map((r) => JSON.stringify({ action: r.action, node: nameOf(r.nodeId), reason: String(r.reason).replace(/12D3\w+/g, (id) => nameOf(id)) })).join(' ')}`);
    console.log(
      `[cluster-voters] max-voters 3: voters ${describeRows(settled.filter(isVoter))}; learners' RTT from the leader: ${learnerRtts}; ` +
        `killed ${victim.name} (site-c voter): promoted ${promotedName ?? 'nobody'} after ${timings.promotedMs} ms, 3 voters again after ${timings.replacedMs} ms; ` +
        `now ${describeRows(final)}`,
    );
    expect(timings.promotedMs).toBeGreaterThanOrEqual(replaceAfterS * 1000);
    expect(voterSites(final), `replacement of the site-c voter: ${describeRows(final)}`).toEqual(['site-a', 'site-b', 'site-c']);
    expect(promotedName).toBe(sameSiteLearner!.name);
  }, 60_000);
});
