// Proves the Raft core keeps every safety invariant and linearizable client histories over 500 faulty seeds, that runs replay exactly, and that the simulator catches a broken core.
import { describe, expect, test } from 'vitest';
import { runSeed, runSeeds } from '../../consensus/sim/simulator.js';

const SEEDS = 500;

describe('deterministic Raft simulation', () => {
  test(`${SEEDS} seeds: no invariant violations, histories linearizable, every fault exercised`, () => {
    const failures: string[] = [];
    const summary = runSeeds(1, SEEDS, {}, (r) => {
      if (r.violations.length > 0) failures.push(`${r.violations.join('; ')} (replay: npm run sim -- --seed ${r.seed})`);
    });
    expect(failures).toEqual([]);
    expect(summary.violations).toBe(0);
    expect(summary.linearizability.illegal).toBe(0);
    expect(summary.linearizability.ok + summary.linearizability.unknown).toBe(SEEDS);
    expect(summary.linearizability.unknown).toBeLessThanOrEqual(SEEDS / 50);
    for (const [fault, count] of Object.entries(summary.faults)) expect(count, fault).toBeGreaterThan(0);
  }, 120_000);

  test('the same seed replays to the same trace hash; different seeds differ', () => {
    const a = runSeed({ seed: 42 });
    const b = runSeed({ seed: 42 });
    expect(a.traceHash).toBe(b.traceHash);
    expect(a.faults).toEqual(b.faults);
    expect(a.ops).toBe(b.ops);
    expect(runSeed({ seed: 43 }).traceHash).not.toBe(a.traceHash);
  });

  test('a core that skips the log matching check is caught by the invariants', () => {
    const summary = runSeeds(1, 100, { unsafeTestFlags: { skipLogMatchingCheck: true } });
    expect(summary.failedSeeds.length).toBeGreaterThan(0);
  }, 60_000);
});
