// Proves LevelDB RaftStorage survives SIGKILL at every write point: each acknowledged write is kept, an in-flight one is all-or-nothing, and no torn record is ever read as valid.
//
// How "each write point" is covered. A child process (test/support/storage-crash-writer.mjs, running the
// built dist/ code) replays a seeded write program: appends of 1..300 entries of up to 4 KiB, overwrites of
// an uncommitted suffix with a new term, hard-state-only saves, compactions, snapshot installs and
// applied-state saves, each one synced batch. It prints `begin k` before write k and `ack k` after its
// promise resolved. The parent computes the exact state after every prefix of the program with the memory
// storage (same rules), and after each kill reopens the database (verifying every record) and requires it
// to equal the state after j or j + 1 writes, j being the last acknowledged one — every ack kept, the
// in-flight write applied whole or not at all. Then it restarts the writer from there on the same database.
//   1. Between writes: for every k = 1..N the writer stops after ack k and is killed; state must be exactly k.
//   2. On the ack: the writer runs freely and is killed the moment ack k arrives; write k+1 is then either in
//      flight or not yet begun (the woken parent often preempts the child), so both points are hit.
//   3. Random moments: killed at a random delay after it opened the database (mostly mid-batch), or at a
//      random delay after spawn (during open and LevelDB's log recovery of the previous crash).
// The test counts the kills that hit a write in flight (begin without ack) and requires some in mode 3.
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crc32c } from '../../consensus/storage/crc32c.js';
import { StorageLockedError } from '../../consensus/storage/errors.js';
import { LevelRaftStorage } from '../../consensus/storage/leveldb.js';
import { MemoryRaftStorage } from '../../consensus/storage/memory.js';
import type { ConfState, Entry, HardState, RaftStorage } from '../../consensus/types.js';
import type { AppliedStore } from '../../consensus/storage/base.js';
import { mulberry32 } from '../support/random.js';

const repoRoot = resolve(import.meta.dirname, '../..');
const writerPath = resolve(repoRoot, 'test/support/storage-crash-writer.mjs');
/** The child runs this build; a stale one would test old code. */
function assertFreshBuild(): void {
  const src = resolve(repoRoot, 'consensus/storage');
  const out = resolve(repoRoot, 'dist/consensus/storage');
  for (const f of readdirSync(src).filter((n) => n.endsWith('.ts'))) {
    const js = join(out, f.replace(/\.ts$/, '.js'));
    let stale: boolean;
    try {
      stale = statSync(js).mtimeMs < statSync(join(src, f)).mtimeMs;
    } catch {
      stale = true;
    }
    if (stale) throw new Error(`${js} is missing or older than its source: run \`npm run build\` (npm test does it)`);
  }
}

type Op =
  | { kind: 'save'; hardState: HardState | null; entries: { index: number; term: number; size: number }[] }
  | { kind: 'compact'; index: number; term: number; keep: number; size: number; conf: ConfState }
  | { kind: 'install'; index: number; term: number; size: number; conf: ConfState }
  | { kind: 'applied'; index: number; size: number };


/** A valid Raft-like write sequence: terms never go back, commit never goes back, only uncommitted entries are overwritten. */
function makeProgram(seed: number, n: number): Op[] {
  const rnd = mulberry32(seed);
  const int = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
  const conf: ConfState = { voters: ['n1', 'n2', 'n3'], learners: ['n4'], votersOutgoing: [] };
  const terms = new Map<number, number>();
  let term = 1;
  let commit = 0;
  let first = 1;
  let last = 0;
  let snapIndex = 0;
  let vote: string | null = 'n1';
  const ops: Op[] = [];
  while (ops.length < n) {
    const r = rnd();
    if (r < 0.6 || commit <= snapIndex) {
      let start = last + 1;
      if (rnd() < 0.2 && last > commit) {
        start = int(Math.max(commit + 1, snapIndex + 1, first), last);
        term++;
      }
      const big = rnd() < 0.3;
      const count = big ? int(50, 300) : int(1, 8);
      const entries = Array.from({ length: count }, (_, i) => ({ index: start + i, term, size: big ? int(1000, 4096) : int(0, 300) }));
      for (let i = start; i <= last; i++) terms.delete(i);
      for (const e of entries) terms.set(e.index, e.term);
      last = start + count - 1;
      commit = int(commit, last);
      ops.push({ kind: 'save', hardState: { term, vote, commit }, entries });
    } else if (r < 0.75) {
      const index = int(snapIndex + 1, commit);
      const keep = int(0, 20);
      ops.push({ kind: 'compact', index, term: terms.get(index)!, keep, size: int(0, 20_000), conf });
      for (let i = first; i <= index - keep; i++) terms.delete(i);
      first = Math.max(first, index - keep + 1);
      snapIndex = index;
    } else if (r < 0.85) {
      ops.push({ kind: 'applied', index: commit, size: int(0, 65_536) });
    } else if (r < 0.92) {
      const index = last + int(1, 5);
      ops.push({ kind: 'install', index, term, size: int(0, 20_000), conf });
      terms.clear();
      first = index + 1;
      last = index;
      snapIndex = index;
      commit = Math.max(commit, index);
    } else {
      term++;
      vote = rnd() < 0.5 ? null : 'n2';
      ops.push({ kind: 'save', hardState: { term, vote, commit }, entries: [] });
    }
  }
  return ops;
}

/** Same bytes as the writer's payload(). */
function payload(size: number, seed: number): Uint8Array {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (seed + i * 7) & 0xff;
  return b;
}

type Store = RaftStorage & AppliedStore;

async function applyOp(st: Store, op: Op): Promise<void> {
  if (op.kind === 'save') {
    const entries: Entry[] = op.entries.map((e) => ({ index: e.index, term: e.term, type: 'normal', data: payload(e.size, e.index * 131 + e.term) }));
    await st.save(op.hardState, entries);
  } else if (op.kind === 'compact') {
    await st.compact({ meta: { index: op.index, term: op.term, conf: op.conf }, data: payload(op.size, op.index) }, op.keep);
  } else if (op.kind === 'install') {
    await st.applySnapshot({ meta: { index: op.index, term: op.term, conf: op.conf }, data: payload(op.size, op.index) });
  } else {
    await st.saveApplied(op.index, payload(op.size, op.index + 1));
  }
}

/** Everything a store holds, condensed; reading every entry also runs every record's checksum. */
async function digest(st: Store): Promise<string> {
  const init = await st.initialState();
  const entries = await st.entries(init.firstIndex, init.lastIndex + 1);
  const snap = await st.snapshot();
  const applied = await st.loadApplied();
  const { hardState: hs, snapshot: meta } = init;
  // Field by field, so the digest does not depend on the key order of the objects an engine builds.
  return JSON.stringify({
    hardState: [hs.term, hs.vote, hs.commit],
    range: [init.firstIndex, init.lastIndex],
    meta: meta && [meta.index, meta.term, meta.conf.voters, meta.conf.learners, meta.conf.votersOutgoing],
    entries: entries.map((e) => [e.index, e.term, e.data.length, crc32c(e.data)]),
    snap: snap && [snap.meta.index, snap.meta.term, crc32c(snap.data)],
    applied: applied && [applied.index, crc32c(applied.data)],
  });
}

/** expected[k] = digest after the first k ops. */
async function expectedStates(program: Op[]): Promise<string[]> {
  const st = await MemoryRaftStorage.open();
  const out = [await digest(st)];
  for (const op of program) {
    await applyOp(st, op);
    out.push(await digest(st));
  }
  await st.close();
  return out;
}

interface RunResult {
  lastAck: number;
  lastBegin: number;
  ready: boolean;
  done: boolean;
  code: number | null;
  stderr: string;
}

interface KillPlan {
  stopAfter?: number;
  killAtAck?: number;
  killAfterReadyMs?: number;
  killAfterSpawnMs?: number;
}

function runWriter(dir: string, programFile: string, from: number, plan: KillPlan): Promise<RunResult> {
  const args = [writerPath, dir, programFile, String(from)];
  if (plan.stopAfter !== undefined) args.push(String(plan.stopAfter));
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const res: RunResult = { lastAck: from, lastBegin: from, ready: false, done: false, code: null, stderr: '' };
  const kill = (): void => {
    child.kill('SIGKILL');
  };
  if (plan.killAfterSpawnMs !== undefined) setTimeout(kill, plan.killAfterSpawnMs);
  let buf = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const [word, num] = buf.slice(0, nl).split(' ');
      buf = buf.slice(nl + 1);
      const k = Number(num);
      if (word === 'begin') res.lastBegin = k;
      else if (word === 'done') res.done = true;
      else if (word === 'ready') {
        res.ready = true;
        if (plan.killAfterReadyMs !== undefined) setTimeout(kill, plan.killAfterReadyMs);
      } else if (word === 'ack') {
        res.lastAck = k;
        if (k === plan.stopAfter || k === plan.killAtAck) kill();
      }
    }
  });
  child.stderr.on('data', (d: Buffer) => (res.stderr += d.toString()));
  return new Promise((resolvePromise, reject) => {
    const guard = setTimeout(() => {
      kill();
      reject(new Error(`writer did not finish or get killed within 30 s; stderr: ${res.stderr}`));
    }, 30_000);
    // 'close' fires after the pipes drained, so every ack the child wrote before dying has been counted.
    child.on('close', (code) => {
      clearTimeout(guard);
      res.code = code;
      resolvePromise(res);
    });
  });
}

interface Tally {
  kills: number;
  inFlight: number;
  inFlightApplied: number;
  beforeReady: number;
}

/**
 * Reopens the killed writer's database and finds which program prefix it holds: must be the last ack j, or
 * j + 1 when write j + 1 had begun. Returns that prefix length, from which the writer continues.
 */
async function verifyAfterKill(dir: string, expected: string[], run: RunResult, tally: Tally): Promise<number> {
  if (run.code !== null) {
    expect(run.stderr).toBe('');
    expect(run.done).toBe(true);
  }
  const st = await LevelRaftStorage.open(dir);
  let got: string;
  try {
    got = await digest(st);
  } finally {
    await st.close();
  }
  const j = run.lastAck;
  const candidates = run.lastBegin > j ? [j + 1, j] : [j];
  const matched = candidates.find((c) => expected[c] === got);
  if (matched === undefined) {
    const actual = expected.indexOf(got);
    throw new Error(`after a kill with last ack ${j} (last begin ${run.lastBegin}) the database holds ${actual < 0 ? 'a state no prefix of the program produces' : `the state after ${actual} writes`}`);
  }
  tally.kills++;
  if (!run.ready) tally.beforeReady++;
  if (run.lastBegin > j) {
    tally.inFlight++;
    if (matched === j + 1) tally.inFlightApplied++;
  }
  return matched;
}

describe('LevelDB RaftStorage under SIGKILL', () => {
  let work: string;
  beforeAll(() => {
    assertFreshBuild();
    work = mkdtempSync(join(tmpdir(), 'nc-crash-'));
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  function setup(name: string, seed: number, n: number): { dir: string; file: string; program: Op[] } {
    const program = makeProgram(seed, n);
    const file = join(work, `${name}.json`);
    writeFileSync(file, JSON.stringify(program));
    return { dir: join(work, name), file, program };
  }

  it('a kill after each acknowledged write k = 1..N keeps exactly the first k writes', { timeout: 180_000 }, async () => {
    const { dir, file, program } = setup('between', 101, 40);
    const expected = await expectedStates(program);
    const tally: Tally = { kills: 0, inFlight: 0, inFlightApplied: 0, beforeReady: 0 };
    for (let k = 1; k <= program.length; k++) {
      const run = await runWriter(dir, file, k - 1, { stopAfter: k });
      expect(run.lastAck).toBe(k);
      expect(await verifyAfterKill(dir, expected, run, tally)).toBe(k);
    }
    expect(tally.kills).toBe(program.length);
  });

  it('a kill the moment the k-th ack arrives (write k+1 often in flight) keeps every ack and no torn write', { timeout: 180_000 }, async () => {
    const { dir, file, program } = setup('on-ack', 202, 300);
    const expected = await expectedStates(program);
    const tally: Tally = { kills: 0, inFlight: 0, inFlightApplied: 0, beforeReady: 0 };
    const rnd = mulberry32(7);
    let from = 0;
    for (let cycle = 0; cycle < 30 && from < program.length - 4; cycle++) {
      const run = await runWriter(dir, file, from, { killAtAck: from + 1 + Math.floor(rnd() * 3) });
      from = await verifyAfterKill(dir, expected, run, tally);
    }
    // Not asserted: when the parent wakes on the ack it often preempts the child before write k+1 begins.
    console.log(`kill on ack: ${JSON.stringify(tally)}, reached write ${from} of ${program.length}`);
  });

  it('kills at random moments (mid-batch, during open and recovery) keep every ack and no torn write', { timeout: 180_000 }, async () => {
    const { dir, file, program } = setup('random', 303, 400);
    const expected = await expectedStates(program);
    const tally: Tally = { kills: 0, inFlight: 0, inFlightApplied: 0, beforeReady: 0 };
    const rnd = mulberry32(11);
    let from = 0;
    for (let cycle = 0; cycle < 45 && from < program.length - 4; cycle++) {
      // Every third run dies before or while opening (the spawn-to-ready time here is ~100-300 ms).
      const plan: KillPlan = cycle % 3 === 2 ? { killAfterSpawnMs: Math.floor(rnd() * 250) } : { killAfterReadyMs: Math.floor(rnd() * 40) };
      const run = await runWriter(dir, file, from, plan);
      from = await verifyAfterKill(dir, expected, run, tally);
    }
    console.log(`random kills: ${JSON.stringify(tally)}, reached write ${from} of ${program.length}`);
    expect(tally.inFlight).toBeGreaterThan(0);
  });

  it('a second process cannot open the database the writer holds (typed StorageLockedError)', { timeout: 60_000 }, async () => {
    const { dir, file } = setup('lock', 404, 3);
    const child = spawn(process.execPath, [writerPath, dir, file, '0', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      await new Promise<void>((resolvePromise, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          if (d.toString().includes('ack 1')) resolvePromise();
        });
        child.on('close', () => reject(new Error('writer exited early')));
      });
      const err: unknown = await LevelRaftStorage.open(dir).then(
        async (s) => {
          await s.close();
          return null;
        },
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StorageLockedError);
      expect(err).toMatchObject({ name: 'StorageLockedError', code: 'storage_locked' });
    } finally {
      child.kill('SIGKILL');
    }
  });
});
