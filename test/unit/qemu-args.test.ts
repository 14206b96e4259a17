// Proves the QEMU command-line builder: the fixed hardening flags, CPU/memory/disks/NICs (user-mode forwards and bridge), serial console and QMP sockets, kernel boot, escaping, and refusal of bad input; plus the KVM probe boot sector's shape.
import { describe, expect, it } from 'vitest';
import type { VmSpec } from '../../consensus/cluster/commands.js';
import { probeBootSector, probeExitCode } from '../../node/hypervisor/accel.js';
import { buildQemuArgs, configFromSpec, escapeOptionValue, vmPaths, type QemuVmConfig } from '../../node/hypervisor/qemu-args.js';
import { mapRunState } from '../../node/hypervisor/qemu.js';

const id = '0f8fad5b-d9cb-469f-a165-70867728950e';
const paths = vmPaths('/var/lib/novacron/run/vms', id);

function base(over: Partial<QemuVmConfig> = {}): QemuVmConfig {
  return { id, name: 'web-1', vcpus: 2, memoryMiB: 512, disks: [], nics: [], ...over };
}

/** The value following a flag (first occurrence), or every value of a repeated flag. */
function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
}
function flags(args: string[], name: string): string[] {
  return args.flatMap((a, i) => (a === name ? [args[i + 1] ?? ''] : []));
}

describe('buildQemuArgs', () => {
  it('always sets the isolation flags, identity, sizes, pidfile, QMP and a logged serial console', () => {
    const args = buildQemuArgs(base(), { accel: 'tcg', paths });
    for (const f of ['-nodefaults', '-no-user-config']) expect(args).toContain(f);
    expect(flag(args, '-display')).toBe('none');
    expect(flag(args, '-name')).toBe('guest=web-1,debug-threads=on');
    expect(flag(args, '-uuid')).toBe(id);
    expect(flag(args, '-smp')).toBe('2');
    expect(flag(args, '-m')).toBe('512M');
    expect(flag(args, '-accel')).toBe('tcg,thread=multi');
    expect(flag(args, '-cpu')).toBe('max');
    expect(flag(args, '-pidfile')).toBe(paths.pidFile);
    expect(flag(args, '-qmp')).toBe(`unix:${paths.qmpSocket},server=on,wait=off`);
    expect(flag(args, '-chardev')).toBe(`socket,id=console0,path=${paths.consoleSocket},server=on,wait=off,logfile=${paths.consoleLog},logappend=on`);
    expect(flag(args, '-serial')).toBe('chardev:console0');
    expect(args).not.toContain('-daemonize');
    expect(args).not.toContain('-kernel');
  });

  it('uses the host CPU under KVM unless a model is given', () => {
    expect(flag(buildQemuArgs(base(), { accel: 'kvm', paths }), '-cpu')).toBe('host');
    expect(flag(buildQemuArgs(base(), { accel: 'kvm', paths }), '-accel')).toBe('kvm');
    expect(flag(buildQemuArgs(base(), { accel: 'kvm', paths, cpuModel: 'Haswell' }), '-cpu')).toBe('Haswell');
  });

  it('attaches disks as virtio-blk, the first one bootable, with commas in paths escaped', () => {
    const args = buildQemuArgs(base({ disks: [{ path: '/d/a,b.qcow2' }, { path: '/d/seed.img', format: 'raw', readOnly: true }] }), { accel: 'tcg', paths });
    expect(flags(args, '-drive')).toEqual([
      'file=/d/a,,b.qcow2,format=qcow2,if=none,id=disk0,node-name=disk0-fmt,cache=writeback,discard=unmap',
      'file=/d/seed.img,format=raw,if=none,id=disk1,node-name=disk1-fmt,cache=writeback,discard=unmap,read-only=on',
    ]);
    expect(flags(args, '-device')).toEqual(['virtio-blk-pci,drive=disk0,id=vd0,bootindex=1', 'virtio-blk-pci,drive=disk1,id=vd1']);
  });

  it('starts paused waiting for a migration only when asked (incoming)', () => {
    expect(buildQemuArgs(base(), { accel: 'tcg', paths })).not.toContain('-incoming');
    const args = buildQemuArgs(base(), { accel: 'tcg', paths, incoming: true });
    expect(flag(args, '-incoming')).toBe('defer');
    expect(args).toContain('-S');
  });

  it('uses user-mode networking with loopback port forwards by default, and a bridge when configured', () => {
    const args = buildQemuArgs(
      base({
        nics: [
          { model: 'virtio-net-pci', mac: '52:54:00:12:34:56', network: { mode: 'user', portForwards: [{ hostPort: 2222, guestPort: 22 }, { protocol: 'udp', hostAddress: '0.0.0.0', hostPort: 5353, guestPort: 53 }] } },
          { model: 'e1000', network: { mode: 'bridge', bridge: 'br0' } },
          { model: 'virtio-net-pci' },
        ],
      }),
      { accel: 'tcg', paths },
    );
    expect(flags(args, '-netdev')).toEqual([
      'user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:0.0.0.0:5353-:53',
      'bridge,id=net1,br=br0',
      'user,id=net2',
    ]);
    expect(flags(args, '-device')).toEqual(['virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:12:34:56', 'e1000,netdev=net1,id=nic1', 'virtio-net-pci,netdev=net2,id=nic2']);
  });

  it('boots a kernel with initrd and command line when given', () => {
    const args = buildQemuArgs(base({ kernel: '/k/vmlinuz', initrd: '/k/initrd.img', cmdline: 'console=ttyS0 quiet' }), { accel: 'tcg', paths });
    expect(flag(args, '-kernel')).toBe('/k/vmlinuz');
    expect(flag(args, '-initrd')).toBe('/k/initrd.img');
    expect(flag(args, '-append')).toBe('console=ttyS0 quiet');
  });

  it('refuses what QEMU would misread or what cannot work', () => {
    const bad: [Partial<QemuVmConfig>, RegExp][] = [
      [{ id: 'not-a-uuid' }, /UUID/],
      [{ name: 'Bad Name' }, /DNS label/],
      [{ vcpus: 0 }, /vcpus/],
      [{ memoryMiB: 8 }, /memoryMiB/],
      [{ initrd: '/x' }, /needs a kernel/],
      [{ nics: [{ model: 'e1000', mac: 'zz:zz:zz:zz:zz:zz' }] }, /MAC/],
      [{ nics: [{ model: 'e1000', network: { mode: 'bridge', bridge: 'br0,helper=/bin/sh' } }] }, /bridge name/],
      [{ nics: [{ model: 'e1000', network: { mode: 'user', portForwards: [{ hostPort: 70_000, guestPort: 22 }] } }] }, /port/],
      [{ nics: [{ model: 'e1000', network: { mode: 'user', portForwards: [{ hostAddress: 'a:b', hostPort: 1, guestPort: 22 }] } }] }, /IPv4/],
      [{ disks: [{ path: 'a\nb' }] }, /path/],
    ];
    for (const [over, message] of bad) expect(() => buildQemuArgs(base(over), { accel: 'tcg', paths }), message.source).toThrow(message);
    const deep = vmPaths(`/${'d'.repeat(120)}`, id);
    expect(() => buildQemuArgs(base(), { accel: 'tcg', paths: deep })).toThrow(/unix socket limit/);
  });

  it('escapes commas by doubling them', () => {
    expect(escapeOptionValue('a,b,,c')).toBe('a,,b,,,,c');
  });
});

describe('configFromSpec', () => {
  const spec: VmSpec = { vcpus: 1, memoryMiB: 256, disks: [{ sizeGiB: 4 }], nics: [{ model: 'virtio-net-pci', mac: '52:54:00:00:00:01' }], kernel: 'k', cmdline: 'quiet' };

  it('joins the replicated spec with node-local paths', () => {
    const c = configFromSpec(id, 'vm', spec, { diskPaths: ['/vms/disk0.qcow2'], kernel: '/images/k', network: { mode: 'bridge', bridge: 'br0' } });
    expect(c).toEqual({
      id,
      name: 'vm',
      vcpus: 1,
      memoryMiB: 256,
      disks: [{ path: '/vms/disk0.qcow2', format: 'qcow2' }],
      nics: [{ model: 'virtio-net-pci', mac: '52:54:00:00:00:01', network: { mode: 'bridge', bridge: 'br0' } }],
      kernel: '/images/k',
      cmdline: 'quiet',
    });
  });

  it('refuses a disk count mismatch', () => {
    expect(() => configFromSpec(id, 'vm', spec, { diskPaths: [] })).toThrow(/1 disks/);
  });
});

describe('run state and probe sector', () => {
  it('maps QEMU run states', () => {
    expect(mapRunState('running')).toBe('running');
    expect(mapRunState('paused')).toBe('paused');
    expect(mapRunState('shutdown')).toBe('shutdown');
    expect(mapRunState('inmigrate')).toBe('migrating');
    expect(mapRunState('guest-panicked')).toBe('error');
  });

  it('builds a 512-byte boot sector with the boot signature that writes to isa-debug-exit', () => {
    const s = probeBootSector();
    expect(s.length).toBe(512);
    expect([s[510], s[511]]).toEqual([0x55, 0xaa]);
    expect(s.includes(Buffer.from([0xe6, 0xf4]))).toBe(true); // out %al,$0xf4
    expect(probeExitCode).toBe(85);
  });
});
