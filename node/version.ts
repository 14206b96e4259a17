// The package version, read once from package.json so the CLI, API and telemetry all report the same one.
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const packageNameExpected = 'novacron';
const searchDepthMax = 6;

function findPackageVersion(): string {
  // Walk up because this file sits at different depths in the source tree and in dist/.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < searchDepthMax; i++) {
    const candidate = join(dir, 'package.json');
    if (existsSync(candidate)) {
      const pkg = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === packageNameExpected && typeof pkg.version === 'string') return pkg.version;
    }
    dir = dirname(dir);
  }
  return '0.0.0-unknown';
}

export const novacronVersion: string = findPackageVersion();
export const apiVersion = 'v1';
