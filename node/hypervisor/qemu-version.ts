// QEMU version detection. Older QEMU (Debian 12's 7.2 under TCG) reported live migrations of fast-dirtying
// guests as complete while the target's memory was corrupt, so VMs are only started on QEMU >= 8.2.
import { execFile } from 'node:child_process';
import { QemuUnsupportedError, errorMessage } from '../errors.js';

export const qemuVersionMin = { major: 8, minor: 2 } as const;
export const qemuProbeTimeoutMs = 5_000;

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
  /** The first line QEMU printed, e.g. "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)". */
  raw: string;
}

export function parseQemuVersion(output: string): QemuVersion | null {
  const line = output.split('\n').find((l) => /version\s+\d+\.\d+/.test(l));
  if (line === undefined) return null;
  const m = /version\s+(\d+)\.(\d+)(?:\.(\d+))?/.exec(line);
  if (m === null) return null;
  return { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3] ?? 0), raw: line.trim() };
}

export function qemuSupported(v: QemuVersion): boolean {
  return v.major > qemuVersionMin.major || (v.major === qemuVersionMin.major && v.minor >= qemuVersionMin.minor);
}

export function assertQemuSupported(v: QemuVersion | null, binary: string): asserts v is QemuVersion {
  const min = `${qemuVersionMin.major}.${qemuVersionMin.minor}`;
  if (v === null) {
    throw new QemuUnsupportedError(`${binary} was not found or did not report a version; NovaCron needs QEMU ${min} or newer`);
  }
  if (!qemuSupported(v)) {
    throw new QemuUnsupportedError(
      `QEMU ${v.major}.${v.minor}.${v.micro} (${binary}) is older than ${min}: older QEMU can report live migrations as complete ` +
        `while the target's memory is corrupt. On Debian 12 install QEMU from bookworm-backports.`,
      { details: { found: `${v.major}.${v.minor}.${v.micro}`, required: min } },
    );
  }
}

export interface QemuProbe {
  binary: string;
  version: QemuVersion | null;
  supported: boolean;
  error?: string;
}

export function probeQemu(binary: string): Promise<QemuProbe> {
  return new Promise((resolve) => {
    execFile(binary, ['--version'], { timeout: qemuProbeTimeoutMs }, (err, stdout) => {
      if (err !== null) {
        resolve({ binary, version: null, supported: false, error: errorMessage(err) });
        return;
      }
      const version = parseQemuVersion(stdout);
      resolve({ binary, version, supported: version !== null && qemuSupported(version) });
    });
  });
}
