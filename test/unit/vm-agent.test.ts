// Proves the VM agent's reconcile logic against a fake driver and the real cluster state machine: it starts only VMs this node owns (disks as overlays, kernel/initrd image ids resolved), pauses/resumes/stops as desired changes, reports observed state only on change, reports a dead QEMU as error without restarting it until desired is set again (also across an agent restart), re-attaches instead of starting, stops a local VM whose ownership moved away, and deletes the files of a VM removed from the state.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClusterStateMachine, encodeCommand, hashSecret, type ClusterCommand, type VmSpec } from '../../consensus/cluster/index.js';
import { VmAgent, type AgentDriver } from '../../node/agent/agent.js';
import type { ImageSource, LocalImage } from '../../node/hypervisor/image-types.js';
import type { AttachResult, RuntimeRecord, StopResult, VmExitListener, VmStats, VmStatus } from '../../node/hypervisor/qemu.js';
import type { QemuVmConfig } from '../../node/hypervisor/qemu-args.js';

const A = 'NodeA';
const B = 'NodeB';
const kernelId = 'a'.repeat(64);
const diskImage = 'b'.repeat(64);
const logger = pino({ level: 'silent' });

class FakeDriver implements AgentDriver {
  vms = new Map<string, { config: QemuVmConfig; state: 'running' | 'paused' | 'exited'; pid: number; reason?: string }>();
  calls: string[] = [];
  attachable: AttachResult[] = [];
  private listeners = new Set<VmExitListener>();
  private nextPid = 100;

  async start(config: QemuVmConfig): Promise<RuntimeRecord> {
    this.calls.push(`start ${config.name}`);
    const pid = this.nextPid++;
    this.vms.set(config.id, { config, state: 'running', pid });
    return { pid, vmId: config.id } as RuntimeRecord;
  }
  async attachAll(): Promise<AttachResult[]> {
    return this.attachable;
  }
  async status(vmId: string): Promise<VmStatus> {
    const v = this.vms.get(vmId);
    if (v === undefined) throw new Error('unknown');
    return { vmId, state: v.state, pid: v.pid, ...(v.reason === undefined ? {} : { reason: v.reason }) };
  }
  async stop(vmId: string): Promise<StopResult> {
    this.calls.push(`stop ${vmId}`);
    this.vms.delete(vmId);
    return { how: 'acpi', elapsedMs: 1 };
  }
  async pause(vmId: string): Promise<void> {
    this.calls.push('pause');
    this.vms.get(vmId)!.state = 'paused';
  }
  async resume(vmId: string): Promise<void> {
    this.calls.push('resume');
    this.vms.get(vmId)!.state = 'running';
  }
  async reboot(): Promise<void> {
    this.calls.push('reboot');
  }
  async delete(vmId: string): Promise<void> {
    this.calls.push(`delete ${vmId}`);
    this.vms.delete(vmId);
  }
  async stats(vmId: string): Promise<VmStats> {
    return { vmId, atMs: 0, cpuTimeMs: 1, memory: { configuredBytes: 1, rssBytes: 1 }, block: [], net: [] };
  }
  onVmExit(listener: VmExitListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  list(): string[] {
    return [...this.vms.keys()];
  }
  close(): void {
    this.calls.push('close');
  }
  /** QEMU dies on its own. */
  die(vmId: string, reason: string): void {
    const v = this.vms.get(vmId)!;
    v.state = 'exited';
    v.reason = reason;
    for (const l of this.listeners) l(vmId, reason);
  }
}

class FakeImages implements ImageSource {
  disks: Array<[string, string | null, number]> = [];
  async ensure(id: string): Promise<LocalImage> {
    return { id, name: id.slice(0, 4), sizeBytes: 1, format: 'kernel', path: `/images/${id}` };
  }
  async createDisk(dest: string, baseId: string | null, sizeGiB: number): Promise<void> {
    this.disks.push([dest, baseId, sizeGiB]);
    writeFileSync(dest, 'disk');
  }
}

let dir: string;
let sm: ClusterStateMachine;
let index: number;
let clock: number;
let driver: FakeDriver;
let images: FakeImages;
let agents: VmAgent[];
let observedWrites: number;

function run(cmd: Record<string, unknown>): void {
  const full = { at: clock++, actor: { kind: 'token', id: 'admin' }, from: null, ...cmd } as unknown as ClusterCommand;
  sm.apply(encodeCommand(full), ++index);
}

async function propose(cmd: ClusterCommand): Promise<unknown> {
  if (cmd.type === 'vm.setObserved') observedWrites += 1;
  return sm.apply(encodeCommand({ ...cmd, at: clock++ }), ++index);
}

function newAgent(d: FakeDriver = driver): VmAgent {
  const agent = new VmAgent({
    nodeId: A,
    state: sm,
    propose,
    ready: () => true,
    createDriver: async () => d,
    images,
    vmsDir: join(dir, 'vms'),
    runDir: join(dir, 'run'),
    logger,
    reconcileIntervalMs: 60_000,
    reportBackoffMs: 1,
  });
  agents.push(agent);
  return agent;
}

async function settle(agent: VmAgent): Promise<void> {
  agent.schedule();
  await agent.idle();
}

const vmId = '11111111-2222-4333-8444-555555555555';
const spec: VmSpec = { vcpus: 1, memoryMiB: 64, disks: [{ imageId: diskImage, sizeGiB: 1 }, { sizeGiB: 2 }], nics: [{ model: 'virtio-net-pci' }], kernel: kernelId, initrd: '/boot/initrd.img', cmdline: 'console=ttyS0' };

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'nc-agent-'));
  mkdirSync(join(dir, 'vms'));
  mkdirSync(join(dir, 'run'));
  sm = new ClusterStateMachine();
  index = 0;
  clock = 1_000;
  observedWrites = 0;
  driver = new FakeDriver();
  images = new FakeImages();
  agents = [];
  const node = (id: string) => ({ id, name: id.toLowerCase(), addresses: [], site: '' });
  run({ type: 'cluster.init', actor: { kind: 'system', id: A }, clusterId: 'c1', node: node(A), adminToken: { id: 'adm', name: 'admin', secretHash: hashSecret('x') } });
  run({ type: 'member.add', node: node(B), role: 'learner' });
  run({ type: 'image.add', id: kernelId, name: 'k', sizeBytes: 1, node: A });
  run({ type: 'image.add', id: diskImage, name: 'd', sizeBytes: 1, node: A });
});

afterEach(async () => {
  for (const a of agents) await a.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('VmAgent', () => {
  it('starts an owned VM with its disks and boot files and follows desired changes', async () => {
    // /boot/initrd.img may not exist here: the agent refuses a missing path, so point it at a real file.
    const initrd = join(dir, 'initrd.img');
    writeFileSync(initrd, 'x');
    run({ type: 'vm.create', id: vmId, name: 'web', spec: { ...spec, initrd }, desired: 'running', owner: A });
    run({ type: 'vm.create', id: '99999999-2222-4333-8444-555555555555', name: 'other', spec: { ...spec, initrd }, desired: 'running', owner: B });
    const agent = newAgent();
    await agent.start();
    await agent.idle();
    expect(driver.calls).toEqual(['start web']);
    const cfg = driver.vms.get(vmId)!.config;
    expect(cfg).toMatchObject({ kernel: `/images/${kernelId}`, initrd, cmdline: 'console=ttyS0', memoryMiB: 64 });
    expect(cfg.disks.map((d) => d.path)).toEqual([join(dir, 'vms', vmId, 'disk0.qcow2'), join(dir, 'vms', vmId, 'disk1.qcow2')]);
    expect(images.disks.map(([, base, size]) => [base, size])).toEqual([[diskImage, 1], [null, 2]]);
    expect(sm.getVm(vmId)?.observed).toMatchObject({ state: 'running', reason: 'QEMU pid 100' });
    expect(agent.counts()).toEqual({ running: 1, total: 1 });

    // Nothing changed: no write.
    const writes = observedWrites;
    await settle(agent);
    expect(observedWrites).toBe(writes);

    run({ type: 'vm.setDesired', id: vmId, desired: 'paused' });
    await settle(agent);
    expect(sm.getVm(vmId)?.observed?.state).toBe('paused');
    run({ type: 'vm.setDesired', id: vmId, desired: 'running' });
    await settle(agent);
    expect(sm.getVm(vmId)?.observed?.state).toBe('running');
    run({ type: 'vm.setDesired', id: vmId, desired: 'stopped' });
    await settle(agent);
    expect(sm.getVm(vmId)?.observed?.state).toBe('stopped');
    expect(driver.calls).toEqual(['start web', 'pause', 'resume', `stop ${vmId}`]);
    // Disks are kept while stopped, and reused (not re-created) on the next start.
    run({ type: 'vm.setDesired', id: vmId, desired: 'running' });
    await settle(agent);
    expect(images.disks).toHaveLength(2);
    await agent.restart(vmId);
    expect(driver.calls.at(-1)).toBe('reboot');
    await expect(agent.restart('99999999-2222-4333-8444-555555555555')).rejects.toMatchObject({ code: 'conflict' });
  });

  it('reports a dead QEMU as error and does not restart it until desired is set again, also after an agent restart', async () => {
    run({ type: 'vm.create', id: vmId, name: 'web', spec: { ...spec, initrd: undefined }, desired: 'running', owner: A });
    const agent = newAgent();
    await agent.start();
    await agent.idle();
    driver.die(vmId, 'QEMU killed by SIGKILL: qemu: terminating on signal 9');
    await agent.idle();
    await settle(agent);
    expect(sm.getVm(vmId)?.observed).toMatchObject({ state: 'error', reason: expect.stringContaining('killed by SIGKILL') as unknown });
    expect(driver.calls).toEqual(['start web', `stop ${vmId}`]);
    await settle(agent);
    expect(driver.calls.filter((c) => c.startsWith('start'))).toHaveLength(1);

    // A new agent (node restart) honours the reported failure.
    await agent.stop();
    const agent2 = newAgent();
    await agent2.start();
    await agent2.idle();
    expect(driver.calls.filter((c) => c.startsWith('start'))).toHaveLength(1);

    // `vm start` sets desired again (a new version): now it starts.
    run({ type: 'vm.setDesired', id: vmId, desired: 'running' });
    await settle(agent2);
    expect(driver.calls.filter((c) => c.startsWith('start'))).toHaveLength(2);
    expect(sm.getVm(vmId)?.observed?.state).toBe('running');
  });

  it('re-attaches to a running QEMU instead of starting one, and says so', async () => {
    run({ type: 'vm.create', id: vmId, name: 'web', spec: { ...spec, initrd: undefined }, desired: 'running', owner: A });
    driver.vms.set(vmId, { config: {} as QemuVmConfig, state: 'running', pid: 4242 });
    driver.attachable = [{ vmId, name: 'web', pid: 4242, attached: true }];
    const agent = newAgent();
    await agent.start();
    await agent.idle();
    expect(driver.calls).toEqual([]);
    expect(sm.getVm(vmId)?.observed).toMatchObject({ state: 'running', reason: 'QEMU pid 4242, re-attached after a node restart' });
  });

  it('stops a VM whose ownership moved away and deletes the files of a VM that left the state', async () => {
    run({ type: 'vm.create', id: vmId, name: 'web', spec: { ...spec, initrd: undefined }, desired: 'running', owner: A });
    const agent = newAgent();
    await agent.start();
    await agent.idle();
    expect(existsSync(join(dir, 'vms', vmId, 'disk0.qcow2'))).toBe(true);
    run({ type: 'vm.setOwner', id: vmId, owner: B });
    await settle(agent);
    expect(driver.calls).toEqual(['start web', `stop ${vmId}`]);
    expect(existsSync(join(dir, 'vms', vmId))).toBe(true);
    // Deleted from the state: removed after the orphan grace (two passes).
    run({ type: 'vm.delete', id: vmId });
    await settle(agent);
    await settle(agent);
    expect(driver.calls.at(-1)).toBe(`delete ${vmId}`);
    expect(existsSync(join(dir, 'vms', vmId))).toBe(false);
  });

  it('reports an unusable boot file as error without starting QEMU', async () => {
    run({ type: 'vm.create', id: vmId, name: 'web', spec: { ...spec, initrd: '/nonexistent/initrd' }, desired: 'running', owner: A });
    const agent = newAgent();
    await agent.start();
    await agent.idle();
    expect(driver.calls).toEqual([]);
    expect(sm.getVm(vmId)?.observed).toMatchObject({ state: 'error', reason: expect.stringContaining('/nonexistent/initrd does not exist') as unknown });
  });
});
