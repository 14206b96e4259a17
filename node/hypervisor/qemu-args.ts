// The QEMU command line of a VM, as a pure function of its configuration, so it is unit-tested and the
// runtime record can store exactly what was run.
import { join } from 'node:path';
import { ValidationError } from '../errors.js';
import type { VmSpec } from '../../consensus/cluster/commands.js';
import type { Accel } from './accel.js';

/** sun_path is 108 bytes including the terminating NUL. */
export const unixSocketPathBytesMax = 107;
export const machineTypeDefault = 'q35';

export interface QemuDisk {
  /** A qcow2 overlay (or raw file) prepared by the caller. */
  path: string;
  format?: 'qcow2' | 'raw';
  readOnly?: boolean;
}

export interface PortForward {
  protocol?: 'tcp' | 'udp';
  /** Host address to bind; 127.0.0.1 unless set, so a forward is not exposed by accident. */
  hostAddress?: string;
  hostPort: number;
  guestPort: number;
}

export type QemuNetwork = { mode: 'user'; portForwards?: PortForward[] } | { mode: 'bridge'; bridge: string };

export interface QemuNic {
  model: 'virtio-net-pci' | 'e1000';
  mac?: string;
  /** User-mode networking when absent. */
  network?: QemuNetwork;
}

export interface QemuVmConfig {
  /** The VM's id: a UUID, passed as -uuid and used to recognise its QEMU process after a restart. */
  id: string;
  name: string;
  vcpus: number;
  memoryMiB: number;
  disks: QemuDisk[];
  nics: QemuNic[];
  kernel?: string;
  initrd?: string;
  cmdline?: string;
}

export interface QemuVmPaths {
  dir: string;
  qmpSocket: string;
  /** Serial console: a chardev socket server a console client can attach to later. */
  consoleSocket: string;
  /** Everything the guest writes to its serial console (chardev logfile=). */
  consoleLog: string;
  /** QEMU's own stdout/stderr, read for the reason when it dies. */
  stderrLog: string;
  pidFile: string;
  record: string;
}

export interface QemuArgsOptions {
  accel: Accel;
  paths: QemuVmPaths;
  /** Default: `host` under KVM, `max` under TCG. */
  cpuModel?: string;
  machine?: string;
  /** Start paused, waiting for a live migration the caller starts over QMP (`migrate-incoming`). */
  incoming?: boolean;
}

/** The block node (format layer) of disk i: named so the migration engine can mirror it and export it over NBD. */
export function diskNodeName(index: number): string {
  return `disk${index}-fmt`;
}

export function vmPaths(runDir: string, vmId: string): QemuVmPaths {
  const dir = join(runDir, vmId);
  return {
    dir,
    qmpSocket: join(dir, 'qmp.sock'),
    consoleSocket: join(dir, 'console.sock'),
    consoleLog: join(dir, 'console.log'),
    stderrLog: join(dir, 'qemu.log'),
    pidFile: join(dir, 'qemu.pid'),
    record: join(dir, 'runtime.json'),
  };
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const namePattern = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const macPattern = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const bridgePattern = /^[A-Za-z0-9_.-]{1,15}$/;
const ipv4Pattern = /^\d{1,3}(\.\d{1,3}){3}$/;

/** QEMU's option syntax escapes a comma by doubling it; any other character in a path is taken as is. */
export function escapeOptionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

function path(value: string, what: string): string {
  if (value === '' || value.includes('\0') || value.includes('\n')) throw new ValidationError(`${what} is not a usable path: ${JSON.stringify(value)}`);
  return escapeOptionValue(value);
}

function socketPath(value: string, what: string): string {
  if (Buffer.byteLength(value) > unixSocketPathBytesMax) {
    throw new ValidationError(`${what} ${value} is longer than ${unixSocketPathBytesMax} bytes (unix socket limit); use a shorter run dir`);
  }
  return path(value, what);
}

function port(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 1 || n > 65_535) throw new ValidationError(`${what} ${n} is not a TCP/UDP port`);
  return n;
}

function userNetdev(id: string, network: { portForwards?: PortForward[] }): string {
  const parts = [`user,id=${id}`];
  for (const f of network.portForwards ?? []) {
    const host = f.hostAddress ?? '127.0.0.1';
    if (!ipv4Pattern.test(host)) throw new ValidationError(`port forward host address ${host} is not an IPv4 address`);
    parts.push(`hostfwd=${f.protocol ?? 'tcp'}:${host}:${port(f.hostPort, 'host port')}-:${port(f.guestPort, 'guest port')}`);
  }
  return parts.join(',');
}

export function buildQemuArgs(vm: QemuVmConfig, options: QemuArgsOptions): string[] {
  if (!uuidPattern.test(vm.id)) throw new ValidationError(`VM id ${vm.id} is not a UUID`);
  if (!namePattern.test(vm.name) || vm.name.length > 63) throw new ValidationError(`VM name ${JSON.stringify(vm.name)} is not a DNS label`);
  if (!Number.isInteger(vm.vcpus) || vm.vcpus < 1) throw new ValidationError(`vcpus must be a positive integer, got ${vm.vcpus}`);
  if (!Number.isInteger(vm.memoryMiB) || vm.memoryMiB < 16) throw new ValidationError(`memoryMiB must be an integer >= 16, got ${vm.memoryMiB}`);
  if (vm.initrd !== undefined && vm.kernel === undefined) throw new ValidationError('an initrd needs a kernel');
  if (vm.cmdline !== undefined && vm.kernel === undefined) throw new ValidationError('a kernel command line needs a kernel');
  const { paths, accel } = options;
  const cpu = options.cpuModel ?? (accel === 'kvm' ? 'host' : 'max');
  const args: string[] = [
    '-name', `guest=${vm.name},debug-threads=on`,
    '-uuid', vm.id.toLowerCase(),
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-machine', options.machine ?? machineTypeDefault,
    // Several vCPUs under TCG need one host thread each, or they share one.
    '-accel', accel === 'tcg' ? 'tcg,thread=multi' : 'kvm',
    '-cpu', cpu,
    '-smp', String(vm.vcpus),
    '-m', `${vm.memoryMiB}M`,
    '-pidfile', path(paths.pidFile, 'pidfile'),
    '-qmp', `unix:${socketPath(paths.qmpSocket, 'QMP socket')},server=on,wait=off`,
    '-chardev',
    `socket,id=console0,path=${socketPath(paths.consoleSocket, 'console socket')},server=on,wait=off,logfile=${path(paths.consoleLog, 'console log')},logappend=on`,
    '-serial', 'chardev:console0',
  ];
  vm.disks.forEach((d, i) => {
    const ro = d.readOnly === true ? ',read-only=on' : '';
    args.push('-drive', `file=${path(d.path, `disk ${i}`)},format=${d.format ?? 'qcow2'},if=none,id=disk${i},node-name=${diskNodeName(i)},cache=writeback,discard=unmap${ro}`);
    args.push('-device', `virtio-blk-pci,drive=disk${i},id=vd${i}${i === 0 ? ',bootindex=1' : ''}`);
  });
  vm.nics.forEach((n, i) => {
    const id = `net${i}`;
    const network = n.network ?? { mode: 'user' };
    if (network.mode === 'bridge') {
      if (!bridgePattern.test(network.bridge)) throw new ValidationError(`bridge name ${JSON.stringify(network.bridge)} is not an interface name`);
      args.push('-netdev', `bridge,id=${id},br=${network.bridge}`);
    } else {
      args.push('-netdev', userNetdev(id, network));
    }
    if (n.mac !== undefined && !macPattern.test(n.mac)) throw new ValidationError(`MAC ${n.mac} is malformed`);
    args.push('-device', `${n.model},netdev=${id},id=nic${i}${n.mac === undefined ? '' : `,mac=${n.mac}`}`);
  });
  if (vm.kernel !== undefined) args.push('-kernel', vm.kernel);
  if (vm.initrd !== undefined) args.push('-initrd', vm.initrd);
  if (vm.cmdline !== undefined) args.push('-append', vm.cmdline);
  if (options.incoming === true) args.push('-S', '-incoming', 'defer');
  return args;
}

export interface SpecResolution {
  /** One path per spec disk, in order (qcow2 overlays created by the image store). */
  diskPaths: string[];
  /** Applied to every NIC; user-mode networking when absent. */
  network?: QemuNetwork;
  /** Kernel and initrd as local paths when the spec names them by something else. */
  kernel?: string;
  initrd?: string;
}

/** Joins a replicated VM spec with the node-local paths the caller resolved. */
export function configFromSpec(id: string, name: string, spec: VmSpec, resolved: SpecResolution): QemuVmConfig {
  if (resolved.diskPaths.length !== spec.disks.length) {
    throw new ValidationError(`spec has ${spec.disks.length} disks but ${resolved.diskPaths.length} paths were supplied`);
  }
  const config: QemuVmConfig = {
    id,
    name,
    vcpus: spec.vcpus,
    memoryMiB: spec.memoryMiB,
    disks: resolved.diskPaths.map((p) => ({ path: p, format: 'qcow2' })),
    nics: spec.nics.map((n) => ({ model: n.model, ...(n.mac === undefined ? {} : { mac: n.mac }), ...(resolved.network === undefined ? {} : { network: resolved.network }) })),
  };
  const kernel = resolved.kernel ?? spec.kernel;
  const initrd = resolved.initrd ?? spec.initrd;
  if (kernel !== undefined) config.kernel = kernel;
  if (initrd !== undefined) config.initrd = initrd;
  if (spec.cmdline !== undefined) config.cmdline = spec.cmdline;
  return config;
}
