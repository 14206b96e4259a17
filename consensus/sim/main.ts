// Simulator CLI: `--seeds N [--from S]` runs many seeds and prints one JSON summary line; `--seed S` replays one.
import { runSeed, runSeeds } from './simulator.js';
import type { SimOptions, SimResult } from './simulator.js';

function usage(): never {
  process.stderr.write('usage: sim --seeds N [--from S] | --seed S   [--break log-matching|old-term-commit]\n');
  process.exit(2);
}

function intArg(args: string[], name: string): number | undefined {
  const at = args.indexOf(name);
  if (at < 0) return undefined;
  const v = Number(args[at + 1]);
  if (!Number.isSafeInteger(v) || v < 0) usage();
  return v;
}

function reportFailure(r: SimResult): void {
  const flags = process.argv.includes('--break') ? ` --break ${process.argv[process.argv.indexOf('--break') + 1] ?? ''}` : '';
  process.stderr.write(`seed ${r.seed} FAILED:\n  ${r.violations.join('\n  ')}\n  replay: npm run sim -- --seed ${r.seed}${flags}\n`);
}

/** `--break` runs a deliberately unsafe core, to see the simulator fail. */
function extraOptions(args: string[]): Omit<SimOptions, 'seed'> {
  const at = args.indexOf('--break');
  if (at < 0) return {};
  const what = args[at + 1];
  if (what === 'log-matching') return { unsafeTestFlags: { skipLogMatchingCheck: true } };
  if (what === 'old-term-commit') return { unsafeTestFlags: { commitOldTermByCounting: true } };
  return usage();
}

function main(argv: string[]): number {
  const seed = intArg(argv, '--seed');
  const extra = extraOptions(argv);
  if (seed !== undefined) {
    const started = performance.now();
    const r = runSeed({ ...extra, seed });
    const out = { seed: r.seed, nodes: r.nodes, traceHash: r.traceHash, steps: r.steps, ops: r.ops, indeterminateOps: r.indeterminateOps, commitIndex: r.commitIndex, faults: r.faults, violations: r.violations, linearizability: r.linearizability, durationMs: Math.round(performance.now() - started) };
    process.stdout.write(`${JSON.stringify(out)}\n`);
    if (r.violations.length > 0) {
      reportFailure(r);
      return 1;
    }
    return 0;
  }
  const count = intArg(argv, '--seeds');
  if (count === undefined) usage();
  const from = intArg(argv, '--from') ?? 1;
  const summary = runSeeds(from, count, extra, (r) => {
    if (r.violations.length > 0) reportFailure(r);
  });
  const { failedSeeds, ...rest } = summary;
  process.stdout.write(`${JSON.stringify({ ...rest, linearizability: { ok: rest.linearizability.ok, unknown: rest.linearizability.unknown }, failedSeeds })}\n`);
  return failedSeeds.length > 0 ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
