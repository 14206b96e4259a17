// Proves QEMU version parsing and the 8.2 floor, and that the QEMU installed for CI is one the node accepts.
import { describe, expect, it } from 'vitest';
import { assertQemuSupported, parseQemuVersion, probeQemu, qemuSupported } from '../../node/hypervisor/qemu-version.js';
import { QemuUnsupportedError } from '../../node/errors.js';
import { commandWorks, describeIf } from '../support/prereq.js';

describe('parseQemuVersion', () => {
  it('parses Debian and upstream banners', () => {
    expect(parseQemuVersion('QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright')).toMatchObject({ major: 10, minor: 0, micro: 2 });
    expect(parseQemuVersion('QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)')).toMatchObject({ major: 7, minor: 2, micro: 15 });
    expect(parseQemuVersion('QEMU emulator version 8.2')).toMatchObject({ major: 8, minor: 2, micro: 0 });
    expect(parseQemuVersion('bash: qemu: command not found')).toBeNull();
  });

  it('accepts 8.2 and newer only', () => {
    const v = (s: string) => parseQemuVersion(`QEMU emulator version ${s}`)!;
    expect(qemuSupported(v('7.2.0'))).toBe(false);
    expect(qemuSupported(v('8.1.5'))).toBe(false);
    expect(qemuSupported(v('8.2.0'))).toBe(true);
    expect(qemuSupported(v('10.0.2'))).toBe(true);
  });

  it('refuses old or missing QEMU with an error that says why and what to do', () => {
    expect(() => assertQemuSupported(parseQemuVersion('QEMU emulator version 7.2.15'), 'qemu-system-x86_64')).toThrow(QemuUnsupportedError);
    expect(() => assertQemuSupported(parseQemuVersion('QEMU emulator version 7.2.15'), 'qemu-system-x86_64')).toThrow(/bookworm-backports/);
    expect(() => assertQemuSupported(null, '/nope/qemu')).toThrow(/not found/);
  });

  it('reports a missing binary as unsupported', async () => {
    const probe = await probeQemu('/nonexistent/qemu-system-x86_64');
    expect(probe.supported).toBe(false);
    expect(probe.error).toMatch(/ENOENT/);
  });
});

describeIf({ 'qemu-system-x86_64': commandWorks('qemu-system-x86_64') })('installed QEMU', () => {
  it('is 8.2 or newer (bookworm-backports)', async () => {
    const probe = await probeQemu('qemu-system-x86_64');
    expect(probe.version).not.toBeNull();
    expect(probe.supported).toBe(true);
  });
});
