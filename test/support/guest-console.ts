// What the demo guest reports on its serial console, read from console lines (REST tails or log files).
import { parseConsoleLine } from '../../node/hypervisor/demo-guest.js';

/** The first capture group of the last line matching `re`. */
export function lastMatch(lines: readonly string[], re: RegExp): string | null {
  for (let i = lines.length - 1; i >= 0; i--) {
    const m = re.exec(lines[i] ?? '');
    if (m !== null) return m[1] ?? null;
  }
  return null;
}

export const lastHeartbeat = (lines: readonly string[]): number => Number(lastMatch(lines, /NOVACRON-HEARTBEAT (\d+)/) ?? -1);
export const lastBootId = (lines: readonly string[]): string | null => lastMatch(lines, /NOVACRON-BOOT-ID ([0-9a-f-]{36})/);
export const lastMemtouchPass = (lines: readonly string[]): number => Number(lastMatch(lines, /NOVACRON-MEMTOUCH pass=(\d+) ok/) ?? -1);
export const memtouchCorrupt = (lines: readonly string[]): string[] => lines.filter((l) => parseConsoleLine(l)?.kind === 'memtouch-corrupt');

/** The QEMU pid the agent reports in a running VM's observed reason. */
export function qemuPid(vm: { observed: { reason: string } | null }): number {
  const m = /QEMU pid (\d+)/.exec(vm.observed?.reason ?? '');
  if (m === null) throw new Error(`no pid in ${vm.observed?.reason}`);
  return Number(m[1]);
}
