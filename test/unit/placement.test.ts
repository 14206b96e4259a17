// Proves VM placement: the fitting member with the most free memory wins (memory of VMs placed but not yet running counts against a node), a pinned node is honoured by id or name only if it fits, and a VM bigger than every node (memory or vCPUs), or a cluster without fresh telemetry, is refused with each node's reason.
import { describe, expect, it } from 'vitest';
import type { Member, Vm } from '../../consensus/cluster/index.js';
import { bytesPerMiB, nodeMemoryReserveMiB, placeVm, type NodeFigures } from '../../node/hypervisor/placement.js';

const gib = 1024 * bytesPerMiB;

function member(id: string, status: Member['status'] = 'active'): Member {
  return { id, name: `n-${id.toLowerCase()}`, role: 'voter', addresses: [], site: '', joinedAt: 0, status };
}

function figures(entries: Array<[string, number, number, boolean?]>): Map<string, NodeFigures> {
  return new Map(entries.map(([id, cores, freeGiB, reachable]) => [id, { cores, memoryAvailableBytes: freeGiB * gib, memoryTotalBytes: 32 * gib, reachable: reachable ?? true }]));
}

function vm(id: string, owner: string, memoryMiB: number, observed: string | null, desired: Vm['desired'] = 'running'): Vm {
  return {
    id,
    name: id,
    spec: { vcpus: 1, memoryMiB, disks: [], nics: [] },
    desired,
    owner,
    observed: observed === null ? null : { state: observed as 'running', reason: '', at: 0 },
    createdAt: 0,
    updatedAt: 0,
    version: 1,
  };
}

const members = [member('A'), member('B'), member('C')];
const spec = { vcpus: 2, memoryMiB: 1024 };

describe('placeVm', () => {
  it('picks the member with the most free memory that fits', () => {
    const r = placeVm({ members, figures: figures([['A', 4, 4], ['B', 4, 8], ['C', 1, 16]]), vms: [], spec });
    // C has the most memory but one core: B is the best fit.
    expect(r).toEqual({ ok: true, node: 'B', freeMiB: 8 * 1024 - nodeMemoryReserveMiB });
  });

  it('counts VMs placed but not yet running against their node', () => {
    const vms = [vm('v1', 'B', 6 * 1024, null), vm('v2', 'A', 3 * 1024, 'running'), vm('v3', 'B', 4 * 1024, null, 'stopped')];
    const r = placeVm({ members, figures: figures([['A', 4, 4], ['B', 4, 8]]), vms, spec });
    expect(r).toMatchObject({ ok: true, node: 'A' });
  });

  it('breaks ties by node id, so every node would choose the same', () => {
    const r = placeVm({ members: [member('B'), member('A')], figures: figures([['A', 2, 4], ['B', 2, 4]]), vms: [], spec });
    expect(r).toMatchObject({ ok: true, node: 'A' });
  });

  it('honours a pinned node by id or name, only if it fits', () => {
    const f = figures([['A', 4, 4], ['B', 4, 8]]);
    expect(placeVm({ members, figures: f, vms: [], spec, pinned: 'A' })).toMatchObject({ ok: true, node: 'A' });
    expect(placeVm({ members, figures: f, vms: [], spec, pinned: 'n-a' })).toMatchObject({ ok: true, node: 'A' });
    expect(placeVm({ members, figures: f, vms: [], spec: { vcpus: 8, memoryMiB: 64 }, pinned: 'A' })).toMatchObject({ ok: false, code: 'no_capacity' });
    expect(placeVm({ members, figures: f, vms: [], spec, pinned: 'nope' })).toMatchObject({ ok: false, code: 'not_found' });
  });

  it('refuses a VM larger than any node, naming each node\'s reason', () => {
    const f = figures([['A', 2, 4], ['B', 2, 8], ['C', 2, 2]]);
    const mem = placeVm({ members, figures: f, vms: [], spec: { vcpus: 1, memoryMiB: 1024 * 1024 } });
    expect(mem).toMatchObject({ ok: false, code: 'no_capacity' });
    if (!mem.ok) expect(mem.reason).toMatch(/n-a has \d+ MiB free for VMs.*n-b.*n-c/);
    const cpu = placeVm({ members, figures: f, vms: [], spec: { vcpus: 64, memoryMiB: 64 } });
    expect(cpu).toMatchObject({ ok: false, code: 'no_capacity' });
    if (!cpu.ok) expect(cpu.reason).toContain('2 CPU cores, the VM wants 64 vCPUs');
  });

  it('skips members without fresh telemetry or not active', () => {
    const f = figures([['A', 4, 16, false], ['B', 4, 16]]);
    expect(placeVm({ members: [member('A'), member('B', 'draining'), member('C')], figures: f, vms: [], spec })).toMatchObject({ ok: false, code: 'no_capacity' });
    expect(placeVm({ members: [], figures: f, vms: [], spec })).toMatchObject({ ok: false, code: 'no_capacity' });
  });
});
