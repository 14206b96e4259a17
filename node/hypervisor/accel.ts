// Accelerator choice. /dev/kvm existing is not enough: under nested virtualisation a KVM guest can enter
// long mode and then crawl (a Linux kernel prints nothing in minutes), so the probe boots a tiny guest
// under KVM that does real work (64 MiB of stores and a 50M-iteration loop in long mode) and must finish
// within a bound; otherwise the node uses TCG.
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NovaError, errorMessage, type ErrorOptions } from '../errors.js';
import type { Logger } from '../log.js';

export type Accel = 'kvm' | 'tcg';
export type AccelSetting = 'auto' | Accel;

/** Bound on the KVM probe guest; with working KVM it exits in well under 100 ms. */
export const kvmProbeTimeoutMs = 3_000;
export const kvmDevicePath = '/dev/kvm';
/** Value the probe guest writes to isa-debug-exit; QEMU then exits with (value << 1) | 1. */
export const probeExitValue = 0x2a;
export const probeExitCode = (probeExitValue << 1) | 1;
/** The probe touches memory up to 80 MiB. */
export const probeMemoryMiB = 128;

export class AccelUnavailableError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('accel_unavailable', message, options);
  }
}

export interface AccelChoice {
  accel: Accel;
  /** Why this accelerator: the override, or what the probe saw. */
  reason: string;
  /** Wall time of the KVM probe, when one ran. */
  probeMs?: number;
}

// Hand-assembled (GNU as, then checked with objdump) so no assembler is needed at run time.
// The boot sector is loaded at 0x7c00; the GDT sits at 0x7cb8 and the GDT pointer at 0x7cc8.
const bootCode: readonly (readonly [string, string])[] = [
  ['fa', 'cli'],
  ['31c0', 'xor %ax,%ax'],
  ['8ed8', 'mov %ax,%ds'],
  ['8ec0', 'mov %ax,%es'],
  ['8ed0', 'mov %ax,%ss'],
  ['bc007c', 'mov $0x7c00,%sp'],
  ['bf0010', 'mov $0x1000,%di            ; page tables: PML4 0x1000, PDPT 0x2000, PD 0x3000'],
  ['31c0', 'xor %ax,%ax'],
  ['b90018', 'mov $0x1800,%cx'],
  ['f3ab', 'rep stosw                   ; zero 12 KiB'],
  ['c70600100320', 'movw $0x2003,0x1000        ; PML4[0] -> PDPT'],
  ['c70600200330', 'movw $0x3003,0x2000        ; PDPT[0] -> PD'],
  ['bf0030', 'mov $0x3000,%di'],
  ['66b883000000', 'mov $0x83,%eax             ; present | writable | 2 MiB page'],
  ['b90002', 'mov $0x200,%cx'],
  ['668905', '1: mov %eax,(%di)          ; identity-map 1 GiB'],
  ['660500002000', 'add $0x200000,%eax'],
  ['83c708', 'add $0x8,%di'],
  ['e2f2', 'loop 1b'],
  ['0f0116c87c', 'lgdtw 0x7cc8'],
  ['66b8a0000000', 'mov $0xa0,%eax             ; CR4.PAE | CR4.PGE'],
  ['0f22e0', 'mov %eax,%cr4'],
  ['66b800100000', 'mov $0x1000,%eax'],
  ['0f22d8', 'mov %eax,%cr3'],
  ['66b9800000c0', 'mov $0xc0000080,%ecx       ; EFER'],
  ['0f32', 'rdmsr'],
  ['660d00010000', 'or $0x100,%eax             ; EFER.LME'],
  ['0f30', 'wrmsr'],
  ['66b801000080', 'mov $0x80000001,%eax       ; CR0.PG | CR0.PE'],
  ['0f22c0', 'mov %eax,%cr0'],
  ['ea717c0800', 'ljmp $0x8,$0x7c71          ; into 64-bit code'],
  ['48c7c700000001', 'mov $0x1000000,%rdi       ; touch each 4 KiB page of 16..80 MiB'],
  ['48c7c600000005', 'mov $0x5000000,%rsi'],
  ['48893f', '2: mov %rdi,(%rdi)'],
  ['4881c700100000', 'add $0x1000,%rdi'],
  ['4839f7', 'cmp %rsi,%rdi'],
  ['72f1', 'jb 2b'],
  ['48c7c700000001', 'mov $0x1000000,%rdi       ; then store 64 MiB'],
  ['48c7c100008000', 'mov $0x800000,%rcx'],
  ['4831c0', 'xor %rax,%rax'],
  ['f348ab', 'rep stosq'],
  ['48c7c180f0fa02', 'mov $50000000,%rcx        ; then a 50M-iteration loop'],
  ['4801c8', '3: add %rcx,%rax'],
  ['48ffc9', 'dec %rcx'],
  ['75f8', 'jnz 3b'],
  ['b02a', 'mov $0x2a,%al'],
  ['e6f4', 'out %al,$0xf4               ; isa-debug-exit: QEMU exits with 85'],
  ['f4', '4: hlt'],
  ['ebfd', 'jmp 4b'],
];
const gdtOffset = 0xb8;
const gdt = '0000000000000000' + '00000000009a2000'; // null descriptor, 64-bit code segment (little-endian)
const gdtPointer = '0f00' + 'b87c0000'; // limit 15, base 0x7cb8

/** The 512-byte probe boot sector. */
export function probeBootSector(): Buffer {
  const sector = Buffer.alloc(512);
  const code = Buffer.from(bootCode.map(([hex]) => hex).join(''), 'hex');
  if (code.length > gdtOffset) throw new Error('probe boot code overlaps its GDT');
  code.copy(sector, 0);
  Buffer.from(gdt + gdtPointer, 'hex').copy(sector, gdtOffset);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

export async function kvmAccessible(devicePath = kvmDevicePath): Promise<boolean> {
  try {
    await access(devicePath, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export interface ProbeResult {
  ok: boolean;
  reason: string;
  elapsedMs: number;
}

/**
 * Boots the probe sector (under KVM unless told otherwise: tests run it under TCG to prove the guest is
 * right); ok only if the guest exits with the expected code within the bound.
 */
export async function probeKvm(qemuBinary: string, timeoutMs = kvmProbeTimeoutMs, accel: Accel = 'kvm'): Promise<ProbeResult> {
  const dir = await mkdtemp(join(tmpdir(), 'novacron-kvm-probe-'));
  const started = Date.now();
  try {
    const image = join(dir, 'probe.img');
    await writeFile(image, probeBootSector());
    const args = [
      '-accel', accel,
      '-nodefaults', '-no-user-config', '-display', 'none',
      '-m', String(probeMemoryMiB),
      '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
      '-drive', `file=${image.replaceAll(',', ',,')},format=raw,if=ide`,
    ];
    return await new Promise<ProbeResult>((resolve) => {
      let stderr = '';
      const child = spawn(qemuBinary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (s: string) => {
        if (stderr.length < 4096) stderr += s;
      });
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, timeoutMs);
      child.on('error', (err) => {
        clearTimeout(timer);
        resolve({ ok: false, reason: `could not run ${qemuBinary}: ${err.message}`, elapsedMs: Date.now() - started });
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        const elapsedMs = Date.now() - started;
        if (timedOut) resolve({ ok: false, reason: `${accel} probe guest did not finish within ${timeoutMs} ms`, elapsedMs });
        else if (code === probeExitCode) resolve({ ok: true, reason: `${accel} probe guest finished in ${elapsedMs} ms`, elapsedMs });
        else resolve({ ok: false, reason: `${accel} probe exited with ${code}: ${stderr.trim().split('\n').slice(-2).join(' ')}`, elapsedMs });
      });
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const cache = new Map<string, Promise<AccelChoice>>();

/** Decides the accelerator once per process (per binary and setting). */
export function chooseAccel(qemuBinary: string, setting: AccelSetting = 'auto', logger?: Logger): Promise<AccelChoice> {
  const key = `${setting}\0${qemuBinary}`;
  let result = cache.get(key);
  if (result === undefined) {
    result = decide(qemuBinary, setting, logger);
    cache.set(key, result);
    // A failure (forced kvm without /dev/kvm) is not cached, so fixing the host and retrying works.
    result.catch(() => cache.delete(key));
  }
  return result;
}

/** For tests: forget cached decisions. */
export function clearAccelCache(): void {
  cache.clear();
}

async function decide(qemuBinary: string, setting: AccelSetting, logger?: Logger): Promise<AccelChoice> {
  if (setting === 'tcg') return { accel: 'tcg', reason: 'configured' };
  const accessible = await kvmAccessible();
  if (setting === 'kvm') {
    if (!accessible) throw new AccelUnavailableError(`KVM is configured but ${kvmDevicePath} is missing or not accessible`);
    return { accel: 'kvm', reason: 'configured' };
  }
  if (!accessible) {
    const choice: AccelChoice = { accel: 'tcg', reason: `${kvmDevicePath} is missing or not accessible` };
    logger?.info(choice, 'accelerator chosen');
    return choice;
  }
  let probe: ProbeResult;
  try {
    probe = await probeKvm(qemuBinary);
  } catch (err) {
    probe = { ok: false, reason: `KVM probe failed: ${errorMessage(err)}`, elapsedMs: 0 };
  }
  const choice: AccelChoice = { accel: probe.ok ? 'kvm' : 'tcg', reason: probe.reason, probeMs: probe.elapsedMs };
  logger?.info(choice, 'accelerator chosen');
  return choice;
}
