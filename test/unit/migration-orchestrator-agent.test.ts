// Proves the agent stays off migrating VMs: a paused guest of a migration out is not resumed (observed `migrating`) until the migration lets go, and the incoming QEMU of a VM owned elsewhere is not stopped while a migration to this node is in progress, but is once none is.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { ClusterStateMachine, encodeCommand, hashSecret, type ClusterCommand } from '../../consensus/cluster/index.js';
import { VmAgent, type AgentDriver } from '../../node/agent/agent.js';
import type { RuntimeRecord, StopResult, VmStatus } from '../../node/hypervisor/qemu.js';
import type { QemuVmConfig } from '../../node/hypervisor/qemu-args.js';

const A = 'NodeA';
const B = 'NodeB';
const vmId = '11111111-2222-4333-8444-555555555555';

class Driver implements AgentDriver {
  readonly vms = new Map<string, 'running' | 'paused' | 'migrating'>();
  readonly calls: string[] = [];
  async start(config: QemuVmConfig): Promise<RuntimeRecord> {
    this.calls.push('start');
    this.vms.set(config.id, 'running');
    return { pid: 1, vmId: config.id } as RuntimeRecord;
  }
  async attachAll() {
    return [];
  }
  async status(id: string): Promise<VmStatus> {
    return { vmId: id, state: this.vms.get(id) ?? 'exited', pid: 1 };
  }
  async stop(id: string): Promise<StopResult> {
    this.calls.push('stop');
    this.vms.delete(id);
    return { how: 'quit', elapsedMs: 1 };
  }
  async pause(id: string) {
    this.calls.push('pause');
    this.vms.set(id, 'paused');
  }
  async resume(id: string) {
    this.calls.push('resume');
    this.vms.set(id, 'running');
  }
  async reboot() {}
  async delete(id: string) {
    this.calls.push('delete');
    this.vms.delete(id);
  }
  async stats(): Promise<never> {
    throw new Error('unused');
  }
  onVmExit() {
    return () => undefined;
  }
  list() {
    return [...this.vms.keys()];
  }
  close() {}
}

let dir: string;
let sm: ClusterStateMachine;
let index = 0;
let agent: VmAgent | null = null;

function run(cmd: Record<string, unknown>): void {
  sm.apply(encodeCommand({ at: Date.now(), actor: { kind: 'system', id: A }, from: null, ...cmd } as unknown as ClusterCommand), ++index);
}

function node(id: string) {
  return { id, name: id.toLowerCase(), addresses: [`/ip4/127.0.0.1/tcp/1/p2p/${id}`], site: 's' };
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'nc-mig-agent-'));
  sm = new ClusterStateMachine();
  run({ type: 'cluster.init', clusterId: 'c1', node: node(A), adminToken: { id: 'tok', name: 'admin', secretHash: hashSecret('s') } });
  run({ type: 'member.add', node: node(B), role: 'voter' });
});

afterEach(async () => {
  await agent?.stop();
  agent = null;
  rmSync(dir, { recursive: true, force: true });
});

function startAgent(self: string, driver: Driver, role: { value: 'source' | 'target' | null }): Promise<void> {
  agent = new VmAgent({
    nodeId: self,
    state: sm,
    propose: async (cmd) => sm.apply(encodeCommand(cmd), ++index),
    ready: () => true,
    createDriver: async () => driver,
    images: { ensure: async () => Promise.reject(new Error('unused')), createDisk: async () => undefined },
    vmsDir: join(dir, 'vms'),
    runDir: join(dir, 'run'),
    logger: pino({ level: 'silent' }),
    reconcileIntervalMs: 60_000,
    migrations: { role: () => role.value },
  });
  return agent.start();
}

it('does not resume a guest the migration paused, and reports it migrating', async () => {
  run({ type: 'vm.create', id: vmId, name: 'demo', spec: { vcpus: 1, memoryMiB: 64, disks: [], nics: [] }, desired: 'running', owner: A });
  const driver = new Driver();
  driver.vms.set(vmId, 'paused'); // paused at pre-switchover by the engine
  const role = { value: 'source' as 'source' | 'target' | null };
  await startAgent(A, driver, role);
  await agent!.idle();
  await agent!.reconcileOnce();
  expect(driver.calls).toEqual([]);
  expect(sm.getVm(vmId)!.observed?.state).toBe('migrating');
  role.value = null; // the migration failed and let go: the agent resumes the guest as desired
  await agent!.reconcileOnce();
  expect(driver.calls).toEqual(['resume']);
  expect(sm.getVm(vmId)!.observed?.state).toBe('running');
});

it('leaves the incoming QEMU of a VM owned elsewhere alone during a migration to this node', async () => {
  run({ type: 'vm.create', id: vmId, name: 'demo', spec: { vcpus: 1, memoryMiB: 64, disks: [], nics: [] }, desired: 'running', owner: A });
  const driver = new Driver();
  driver.vms.set(vmId, 'migrating'); // -incoming, waiting for the stream
  const role = { value: 'target' as 'source' | 'target' | null };
  await startAgent(B, driver, role);
  await agent!.idle();
  await agent!.reconcileOnce();
  expect(driver.calls).toEqual([]);
  role.value = null; // no migration any more: a QEMU of a VM owned elsewhere must not run here
  await agent!.reconcileOnce();
  expect(driver.calls).toEqual(['stop']);
});
