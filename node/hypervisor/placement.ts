// Where a new VM runs: a pure function of the members, their latest telemetry and the VMs already placed, so it is
// unit-tested and can grow into the WAN-aware scheduler (sites, links, anti-affinity) without touching the REST layer.
import type { Member, Vm } from '../../consensus/cluster/records.js';

export const bytesPerMiB = 1024 * 1024;
/** Memory a node keeps for itself (node process, page cache, QEMU overhead) beyond what its VMs get. */
export const nodeMemoryReserveMiB = 256;

/** What a node's telemetry says about it (the mesh's cluster view). */
export interface NodeFigures {
  cores: number;
  memoryAvailableBytes: number;
  memoryTotalBytes: number;
  /** The sample is fresh (within the view's TTL). */
  reachable: boolean;
}

export interface PlacementInput {
  members: readonly Member[];
  /** Latest telemetry by node id; a member without an entry has never been heard from. */
  figures: ReadonlyMap<string, NodeFigures>;
  /** Every VM of the cluster: the ones placed on a node but not yet visible in its telemetry count against it. */
  vms: readonly Vm[];
  spec: { vcpus: number; memoryMiB: number };
  /** Id or name of a node the caller insists on. */
  pinned?: string | undefined;
}

export type PlacementResult =
  | { ok: true; node: string; freeMiB: number }
  | { ok: false; code: 'no_capacity' | 'not_found'; reason: string };

/** Memory of VMs placed on `node` that its telemetry cannot show yet (started or starting, not yet running). */
export function pendingMiB(node: string, vms: readonly Vm[]): number {
  let sum = 0;
  for (const v of vms) {
    if (v.owner !== node || v.desired === 'stopped') continue;
    const s = v.observed?.state;
    if (s === 'running' || s === 'paused' || s === 'error' || s === 'stopped') continue;
    sum += v.spec.memoryMiB;
  }
  return sum;
}

interface Candidate {
  member: Member;
  freeMiB: number;
  why: string | null;
}

function assess(member: Member, input: PlacementInput): Candidate {
  const f = input.figures.get(member.id);
  if (member.status !== 'active') return { member, freeMiB: 0, why: `${member.name} is ${member.status}` };
  if (f === undefined) return { member, freeMiB: 0, why: `${member.name} has sent no telemetry` };
  if (!f.reachable) return { member, freeMiB: 0, why: `${member.name} is unreachable (stale telemetry)` };
  const freeMiB = Math.floor(f.memoryAvailableBytes / bytesPerMiB) - nodeMemoryReserveMiB - pendingMiB(member.id, input.vms);
  if (input.spec.vcpus > f.cores) return { member, freeMiB, why: `${member.name} has ${f.cores} CPU cores, the VM wants ${input.spec.vcpus} vCPUs` };
  if (input.spec.memoryMiB > freeMiB) {
    return { member, freeMiB, why: `${member.name} has ${Math.max(0, freeMiB)} MiB free for VMs, the VM wants ${input.spec.memoryMiB} MiB` };
  }
  return { member, freeMiB, why: null };
}

/**
 * The node for a new VM: the pinned one if it fits, else the fitting member with the most free memory (ties: the lower node
 * id, so the choice is deterministic). A VM that fits nowhere is refused with the
 * reason of each node.
 */
export function placeVm(input: PlacementInput): PlacementResult {
  if (input.pinned !== undefined) {
    const member = input.members.find((m) => m.id === input.pinned) ?? input.members.find((m) => m.name === input.pinned);
    if (member === undefined) return { ok: false, code: 'not_found', reason: `no member node ${input.pinned}` };
    const c = assess(member, input);
    return c.why === null ? { ok: true, node: member.id, freeMiB: c.freeMiB } : { ok: false, code: 'no_capacity', reason: `cannot place the VM on ${c.why}` };
  }
  if (input.members.length === 0) return { ok: false, code: 'no_capacity', reason: 'the cluster has no member nodes' };
  const all = input.members.map((m) => assess(m, input));
  const fitting = all.filter((c) => c.why === null).sort((a, b) => b.freeMiB - a.freeMiB || (a.member.id < b.member.id ? -1 : a.member.id > b.member.id ? 1 : 0));
  const best = fitting[0];
  if (best === undefined) return { ok: false, code: 'no_capacity', reason: `no node has room for ${input.spec.vcpus} vCPUs and ${input.spec.memoryMiB} MiB: ${all.map((c) => c.why).join('; ')}` };
  return { ok: true, node: best.member.id, freeMiB: best.freeMiB };
}
