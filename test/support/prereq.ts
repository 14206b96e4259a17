// Gate for tests that need a host prerequisite (QEMU, root, Chromium, network namespaces).
// Locally a missing prerequisite skips the suite; with CI=true it is a failure, never a silent skip.
import { execFileSync } from 'node:child_process';
import { describe } from 'vitest';

export const inCi = process.env.CI === 'true' || process.env.CI === '1';

export function commandWorks(cmd: string, args: string[] = ['--version']): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** `describe` when every prerequisite holds; otherwise `describe.skip` locally, and a failing suite in CI. */
export function describeIf(prereqs: Record<string, boolean>): ReturnType<typeof describe.skipIf> {
  const missing = Object.entries(prereqs).filter(([, ok]) => !ok).map(([name]) => name);
  if (missing.length > 0 && inCi) throw new Error(`CI is missing test prerequisites: ${missing.join(', ')}`);
  return describe.skipIf(missing.length > 0);
}
