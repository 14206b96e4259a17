// Proves leader failover and catch-up: a SIGKILLed leader is replaced within 2 s with no acknowledged write lost, and the restarted node catches up through an InstallSnapshot.
// Three real node processes form a cluster through the CLI (init, join tokens, joins) with a small snapshot interval
// (raft.snapshotEveryEntries=50, raft.compactionKeepEntries=10) and the default timing (tick 100 ms, election timeout
// 8 ticks). Concurrent clients create API tokens with distinct names on all three nodes; the leader is SIGKILLed
// mid-load and the clients move to the survivors. Measured: the time from the kill until the first write started
// after the kill is acknowledged by a survivor (bound: 2 s, the issue's). Every acknowledged name must then be in a
// linearizable GET /v1/tokens on both survivors. More writes than the snapshot interval are made while the node is
// down, so the restarted node (same data dir) can only catch up through a snapshot: its stale read must show every
// acknowledged write and it must log "raft snapshot installed".
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli, spawnCli, waitForLog } from '../support/proc.js';
import { api, logCollector, outcome, pollFor, tokenNames, type LoggedNodeProc as NodeProc } from '../support/cluster-http.js';

/** The issue's bound: a new leader serves writes within 2 s of the kill. */
const failoverBoundMs = 2_000;
const snapshotEveryEntries = 50;
const compactionKeepEntries = 10;
/** Writes made while the killed node is down: well over one snapshot interval plus the kept entries. */
const writesWhileDown = 3 * snapshotEveryEntries;
const loadClients = 6;
/**
 * Pause between one client's writes: the load writes API tokens, and the cluster keeps at most 1000 (apiTokensMax),
 * so 6 clients over at most ~4.5 s of load (before the kill, a failover within its bound, after) plus the writes made
 * while a node is down must stay below that however fast the cluster answers.
 */
const loadPauseMs = 40;
/** Load before the kill, and after the first post-kill acknowledgement. */
const loadBeforeKillMs = 1_500;
const loadAfterFailoverMs = 1_000;

interface Status {
  nodeId: string;
  raft: { role: string; term: number; leader: string | null; commit: number; applied: number; snapshotIndex: number } | null;
  members: Array<{ id: string; role: string }>;
}

const procs: NodeProc[] = [];
const dataDirs: string[] = [];
let admin = '';

async function startNode(name: string, dataDir?: string, meshListen = '/ip4/127.0.0.1/tcp/0'): Promise<NodeProc> {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), `nc-failover-${name}-`));
  if (dataDir === undefined) dataDirs.push(dir);
  const child = spawnCli([
    'node', 'start', '--data-dir', dir, '--name', name, '--api-host', '127.0.0.1', '--api-port', '0',
    '--set', `mesh.listen=${meshListen}`, '--set', 'mesh.mdns=false',
    '--set', `raft.snapshotEveryEntries=${snapshotEveryEntries}`, '--set', `raft.compactionKeepEntries=${compactionKeepEntries}`,
  ]);
  const log = logCollector(child);
  const started = await waitForLog(child, (r) => r.msg === 'node started', 30_000);
  const listen = (log.has('mesh started')?.listen as string[] | undefined)?.[0]?.replace(/\/p2p\/.*$/, '') ?? meshListen;
  return { name, dataDir: dir, child, url: started.api as string, peerId: started.peerId as string, log, meshListen: listen };
}

async function cli(p: NodeProc, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCli([...args, '--api', p.url, '--json', ...(admin === '' ? [] : ['--token', admin])]);
}

async function status(p: NodeProc): Promise<Status | null> {
  const r = await api<Status>(p.url, 'GET', '/v1/cluster/status', { token: admin, timeoutMs: 5_000 });
  return r.status === 200 ? r.body : null;
}

afterAll(() => {
  for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  for (const d of dataDirs) rmSync(d, { recursive: true, force: true });
});

describe('leader failover and catch-up through a snapshot', () => {
  it('replaces a SIGKILLed leader within 2 s, loses no acknowledged write, and a restarted node catches up via a snapshot', async () => {
    procs.push(...(await Promise.all(['f1', 'f2', 'f3'].map((n) => startNode(n)))));
    const [n1, n2, n3] = procs as [NodeProc, NodeProc, NodeProc];

    // Form the cluster with the CLI.
    const init = await cli(n1, ['cluster', 'init']);
    expect(init.code, init.stderr).toBe(0);
    admin = (JSON.parse(init.stdout) as { adminToken: string }).adminToken;
    for (const joiner of [n2, n3]) {
      const created = await cli(n1, ['cluster', 'join-token', 'create']);
      expect(created.code, created.stderr).toBe(0);
      const joined = await cli(joiner, ['cluster', 'join', (JSON.parse(created.stdout) as { token: string }).token]);
      expect(joined.code, joined.stderr).toBe(0);
    }
    await pollFor('3 voters in `cluster status`', 20_000, async () => {
      const r = await cli(n1, ['cluster', 'status']);
      if (r.code !== 0) return null;
      const s = JSON.parse(r.stdout) as Status;
      return s.members.length === 3 && s.members.every((m) => m.role === 'voter') && s.raft?.role === 'leader' ? s : null;
    }, 200);
    // Every node knows the leader (and the followers have caught up enough to forward).
    for (const p of [n2, n3]) await pollFor(`${p.name} follows ${n1.name}`, 10_000, async () => (await status(p))?.raft?.leader === n1.peerId);
    const leader = n1;
    const survivors = [n2, n3];
    const termBefore = (await status(leader))?.raft?.term ?? -1;

    // Load: distinct token names, round-robin over all nodes until the kill, then over the survivors.
    const acked = new Map<string, { node: string; startedAt: number; endedAt: number }>();
    const failures = new Map<string, number>();
    /** Writes not acknowledged, by name: what the client was told. */
    const refused = new Map<string, string>();
    let seq = 0;
    let killedAt = 0;
    let firstAckAfterKill = 0;
    let stop = false;
    const client = async (c: number): Promise<void> => {
      let turn = c;
      while (!stop) {
        const targets = killedAt === 0 ? procs.slice(0, 3) : survivors;
        const target = targets[turn++ % targets.length]!;
        const name = `load-${seq++}`;
        const startedAt = performance.now();
        const r = await api(target.url, 'POST', '/v1/tokens', { token: admin, body: { name, role: 'viewer' }, timeoutMs: 20_000 });
        const endedAt = performance.now();
        if (r.status >= 200 && r.status < 300) {
          acked.set(name, { node: target.name, startedAt, endedAt });
          if (killedAt !== 0 && startedAt >= killedAt && firstAckAfterKill === 0) firstAckAfterKill = endedAt;
          await new Promise((res) => setTimeout(res, loadPauseMs));
        } else {
          const k = `${target.name}${killedAt !== 0 && startedAt >= killedAt ? '(after kill)' : ''} ${outcome(r)}`;
          failures.set(k, (failures.get(k) ?? 0) + 1);
          refused.set(name, `${target.name} ${outcome(r)}`);
          await new Promise((res) => setTimeout(res, 20));
        }
      }
    };
    const clients = Array.from({ length: loadClients }, (_, c) => client(c));
    await new Promise((r) => setTimeout(r, loadBeforeKillMs));
    const ackedBeforeKill = acked.size;
    killedAt = performance.now();
    leader.child.kill('SIGKILL');
    const deadline = killedAt + 15_000;
    while (firstAckAfterKill === 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, loadAfterFailoverMs));
    stop = true;
    await Promise.all(clients);
    const failoverMs = firstAckAfterKill === 0 ? Infinity : Math.round(firstAckAfterKill - killedAt);
    const after = await Promise.all(survivors.map((p) => status(p)));
    const newLeader = after[0]?.raft?.leader ?? null;
    console.log(
      `[cluster-failover] failover ${failoverMs} ms (bound ${failoverBoundMs}); acked ${ackedBeforeKill} before the kill, ${acked.size} in all of ${seq} attempts; ` +
        `term ${termBefore} -> ${after.map((s) => s?.raft?.term).join('/')}; new leader ${newLeader === n2.peerId ? n2.name : newLeader === n3.peerId ? n3.name : newLeader}; ` +
        `failures ${JSON.stringify(Object.fromEntries(failures))}`,
    );
    expect(ackedBeforeKill, 'the load made writes before the kill').toBeGreaterThan(10);
    expect([n2.peerId, n3.peerId]).toContain(newLeader);
    expect(failoverMs, `a write through a survivor succeeded ${failoverMs} ms after the leader was killed`).toBeLessThan(failoverBoundMs);

    // No acknowledged write lost: every acked name is in a linearizable read on both survivors.
    for (const p of survivors) {
      const names = await tokenNames(p.url, admin);
      expect(names, `linearizable GET /v1/tokens on ${p.name}`).not.toBeNull();
      const have = new Set(names);
      const lost = [...acked.keys()].filter((n) => !have.has(n));
      expect(lost, `acknowledged writes missing on ${p.name}`).toEqual([]);
      expect(names!.length - have.size, `duplicate token names on ${p.name}`).toBe(0);
    }
    // A write answered with a 4xx refusal must not have been made; 503/504/network failures may go either way.
    const stateNow = new Set((await tokenNames(survivors[0]!.url, admin)) ?? []);
    const refusedButMade = [...refused].filter(([n]) => stateNow.has(n)).map(([n, how]) => `${n} (${how})`);
    console.log(`[cluster-failover] not acknowledged: ${refused.size}; of them applied anyway: ${JSON.stringify(refusedButMade)}`);
    expect(
      refusedButMade.filter((x) => / 4\d\d:/.test(x)),
      'writes refused with 4xx (e.g. already_exists after an internal retry of a write the dead leader had taken) but applied',
    ).toEqual([]);

    // Writes while the old leader is down: several snapshot intervals, so its log position is compacted away.
    for (let i = 0; i < writesWhileDown; i += 5) {
      const batch = await Promise.all(
        [0, 1, 2, 3, 4].map(async (j) => {
          const name = `down-${i + j}`;
          const r = await api(survivors[j % 2]!.url, 'POST', '/v1/tokens', { token: admin, body: { name, role: 'viewer' } });
          return { name, r };
        }),
      );
      for (const { name, r } of batch) {
        expect(r.status, `${name}: ${outcome(r)}`).toBe(201);
        acked.set(name, { node: '', startedAt: 0, endedAt: 0 });
      }
    }
    const leaderNow = survivors.find((p) => p.peerId === newLeader)!;
    const ls = await status(leaderNow);
    const oldLeaderSnapshotTaken = leader.log.records.filter((r) => r.msg === 'raft snapshot taken, log compacted').length;
    expect(ls?.raft?.snapshotIndex, 'the new leader snapshotted and compacted its log').toBeGreaterThan(0);

    // Restart the killed node on its data dir: it catches up, through an InstallSnapshot.
    const restartAt = performance.now();
    const restarted = await startNode(leader.name, leader.dataDir, leader.meshListen);
    procs.push(restarted);
    const startedMs = Math.round(performance.now() - restartAt);
    let lastSeen = '';
    const names = await pollFor('the restarted node shows every acknowledged write (stale read)', 30_000, async () => {
      const stale = await tokenNames(restarted.url, admin, true);
      const missing = stale === null ? ['(read failed)'] : [...acked.keys()].filter((n) => !stale.includes(n));
      lastSeen = `${missing.length} missing (${missing.slice(0, 5).join(', ')}); status ${JSON.stringify((await status(restarted))?.raft)}`;
      return missing.length === 0 ? stale : null;
    }).catch((err: unknown) => {
      const raftLines = restarted.log.records.filter((r) => r.component === 'raft' || r.level !== 'info' || /raft|mesh|join/i.test(r.msg));
      throw new Error(`${(err as Error).message}: ${lastSeen}\nrestarted node log:\n${raftLines.map((r) => JSON.stringify(r)).join('\n').slice(-6000)}`);
    });
    const catchUpMs = Math.round(performance.now() - restartAt);
    const installed = restarted.log.has('raft snapshot installed');
    const rs = await status(restarted);
    console.log(
      `[cluster-failover] restarted ${leader.name}: node started after ${startedMs} ms, caught up (${names.length} tokens) ${catchUpMs} ms after the restart; ` +
        `snapshot installed ${installed === undefined ? 'NO' : `at index ${String(installed.index)} (${String(installed.bytes)} bytes)`}; leader snapshotIndex ${ls?.raft?.snapshotIndex}; ` +
        `its own snapshots before the kill ${oldLeaderSnapshotTaken}; term now ${rs?.raft?.term}, leader ${rs?.raft?.leader === newLeader ? 'unchanged' : String(rs?.raft?.leader)}`,
    );
    expect(installed, 'the restarted node logged "raft snapshot installed"').toBeDefined();
    expect(Number(installed?.index)).toBeGreaterThan(0);
    // It rejoined as a follower of the new leader and its linearizable reads work.
    await pollFor('the restarted node follows the new leader', 10_000, async () => (await status(restarted))?.raft?.leader === newLeader);
    expect(await tokenNames(restarted.url, admin), 'linearizable read on the restarted node').not.toBeNull();
  }, 90_000);
});
