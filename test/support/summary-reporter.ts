// Prints one plain closing line "N passed, N failed, N skipped" so CI logs state the count unambiguously.
import type { Reporter, File, Task } from 'vitest';

function count(tasks: Task[], acc: { passed: number; failed: number; skipped: number }): void {
  for (const t of tasks) {
    if (t.type === 'suite') {
      count(t.tasks, acc);
      continue;
    }
    if (t.mode === 'skip' || t.mode === 'todo') acc.skipped += 1;
    else if (t.result?.state === 'pass') acc.passed += 1;
    else if (t.result?.state === 'fail') acc.failed += 1;
    else acc.skipped += 1;
  }
}

export default class SummaryReporter implements Reporter {
  onFinished(files: File[] = [], errors: unknown[] = []): void {
    const acc = { passed: 0, failed: 0, skipped: 0 };
    for (const f of files) {
      count(f.tasks, acc);
      if (f.result?.state === 'fail' && f.tasks.length === 0) acc.failed += 1; // a file that failed to load
    }
    acc.failed += errors.length;
    process.stdout.write(`\n${acc.passed} passed, ${acc.failed} failed, ${acc.skipped} skipped\n`);
  }
}
