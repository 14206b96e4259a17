// `/novacron/vm/1.0.0`: what only a VM's owner can do (read its console log, its stats, reset it), asked by any node
// over the mesh. Members only (the protocol layer's gate). Requests and answers are small JSON messages; the remote's
// refusal keeps its error code, so REST answers the same problem whichever node the client talks to.
import { NovaError } from '../errors.js';
import type { VmStats } from '../hypervisor/qemu.js';
import { consoleTailLinesMax } from './agent.js';

export const vmProtocol = '/novacron/vm/1.0.0';
/** Deadline of one request to the owner: a console tail or stats read, or a QMP reset. */
export const vmRequestTimeoutMs = 10_000;
/** Requests served at once per peer connection; they are cheap, and a flood must not pile up. */
export const vmInboundStreamsMax = 32;

export type VmRequest = { op: 'console'; vmId: string; lines: number } | { op: 'stats'; vmId: string } | { op: 'restart'; vmId: string };

export type ConsoleAnswer = { lines: string[] };

/** What the owner side needs: the local agent. */
export interface VmOwnerOps {
  console(vmId: string, lines: number): Promise<string[]>;
  stats(vmId: string): Promise<VmStats>;
  restart(vmId: string): Promise<void>;
}

/** The slice of the mesh's protocol layer this module uses (a fake in unit tests). */
export interface VmProtocolHost {
  handleRequest<Req, Res>(
    protocol: string,
    handler: (request: Req, ctx: { peer: string }) => Promise<Res>,
    options: { validate: (v: unknown) => Req; maxInboundStreams?: number; timeoutMs?: number },
  ): Promise<void>;
  unhandle(protocol: string): Promise<void>;
  request<Res>(peer: string, protocol: string, body: unknown, options: { validate: (v: unknown) => Res; timeoutMs?: number }): Promise<Res>;
}

/** A refusal by the owner node, carrying its code (vm_not_running, not_found, ...). */
export class RemoteVmError extends NovaError {
  constructor(code: string, message: string, owner: string) {
    super(code, message, { details: { owner } });
  }
}

const uuidish = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export function validateVmRequest(v: unknown): VmRequest {
  if (typeof v !== 'object' || v === null) throw new Error('request is not an object');
  const r = v as Record<string, unknown>;
  if (typeof r.vmId !== 'string' || !uuidish.test(r.vmId)) throw new Error('vmId is missing or malformed');
  if (r.op === 'console') {
    if (typeof r.lines !== 'number' || !Number.isInteger(r.lines) || r.lines < 1 || r.lines > consoleTailLinesMax) throw new Error(`lines must be 1..${consoleTailLinesMax}`);
    return { op: 'console', vmId: r.vmId, lines: r.lines };
  }
  if (r.op === 'stats' || r.op === 'restart') return { op: r.op, vmId: r.vmId };
  throw new Error('unknown op');
}

function validateConsole(v: unknown): ConsoleAnswer {
  const lines = (v as { lines?: unknown } | null)?.lines;
  if (!Array.isArray(lines) || !lines.every((l) => typeof l === 'string')) throw new Error('lines must be strings');
  return { lines };
}

function validateStats(v: unknown): VmStats {
  const s = v as Partial<VmStats> | null;
  if (s === null || typeof s !== 'object' || typeof s.vmId !== 'string' || typeof s.cpuTimeMs !== 'number' || typeof s.memory !== 'object') throw new Error('not VM stats');
  return s as VmStats;
}

function validateDone(v: unknown): { done: true } {
  if ((v as { done?: unknown } | null)?.done !== true) throw new Error('not an acknowledgement');
  return { done: true };
}

export async function registerVmProtocol(host: VmProtocolHost, ops: VmOwnerOps): Promise<void> {
  await host.handleRequest<VmRequest, unknown>(
    vmProtocol,
    async (req) => {
      switch (req.op) {
        case 'console':
          return { lines: await ops.console(req.vmId, req.lines) } satisfies ConsoleAnswer;
        case 'stats':
          return ops.stats(req.vmId);
        case 'restart':
          await ops.restart(req.vmId);
          return { done: true };
      }
    },
    { validate: validateVmRequest, maxInboundStreams: vmInboundStreamsMax, timeoutMs: vmRequestTimeoutMs },
  );
}

/** Routes an owner-only operation to the local agent or, over the mesh, to the owner node. */
export class VmOwnerClient {
  constructor(
    private readonly selfId: string,
    private readonly local: VmOwnerOps | null,
    private readonly host: VmProtocolHost | null,
  ) {}

  async console(owner: string, vmId: string, lines: number): Promise<string[]> {
    if (owner === this.selfId) return this.localOps().console(vmId, lines);
    return (await this.remote(owner, { op: 'console', vmId, lines }, validateConsole)).lines;
  }

  async stats(owner: string, vmId: string): Promise<VmStats> {
    if (owner === this.selfId) return this.localOps().stats(vmId);
    return this.remote(owner, { op: 'stats', vmId }, validateStats);
  }

  async restart(owner: string, vmId: string): Promise<void> {
    if (owner === this.selfId) return this.localOps().restart(vmId);
    await this.remote(owner, { op: 'restart', vmId }, validateDone);
  }

  private localOps(): VmOwnerOps {
    if (this.local === null) throw new NovaError('not_ready', 'the VM agent of this node is not running');
    return this.local;
  }

  private async remote<T>(owner: string, req: VmRequest, validate: (v: unknown) => T): Promise<T> {
    if (this.host === null) throw new NovaError('not_ready', 'the mesh of this node is not running');
    try {
      return await this.host.request(owner, vmProtocol, req, { validate, timeoutMs: vmRequestTimeoutMs });
    } catch (err) {
      // The owner's own refusal keeps its code (mesh_remote_error would hide e.g. vm_not_running).
      const code = (err as { details?: { remoteCode?: unknown } }).details?.remoteCode;
      if ((err as { code?: unknown }).code === 'mesh_remote_error' && typeof code === 'string') {
        throw new RemoteVmError(code, (err as Error).message, owner);
      }
      throw err;
    }
  }
}
