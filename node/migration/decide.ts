// What a node does about one migration record, as pure functions of the record and local facts, so the rules that keep
// "never two running copies, never a lost VM" are unit-tested without QEMU or Raft. The service (service.ts) gathers
// the facts, calls these on every state change and at start, and carries the actions out.
import type { Migration } from '../../consensus/cluster/index.js';

/** Facts the source node knows locally. */
export interface SourceFacts {
  /** A migration run (pre-checks, prepare, engine) is in progress in this process. */
  running: boolean;
  /** The record was already active when this process started (the node restarted during the migration). */
  inherited: boolean;
  /** This process already finished handling the record (a run ended, or a terminal record was cleaned up). */
  handled: boolean;
  /** The VM record's owner is this node. */
  ownerIsSelf: boolean;
}

export type SourceAction =
  | { kind: 'none' }
  /** requested: run the pre-checks and drive the migration. */
  | { kind: 'start' }
  /** The run in progress must stop: the record went cancelled or failed under it. */
  | { kind: 'abort'; reason: string }
  /** Restarted mid-migration: the tunnel died with the old process; mark it failed (the guest then resumes here). */
  | { kind: 'fail'; reason: string }
  /** Terminal but not completed, no run here: make sure QEMU has no migration or block job left (the agent resumes it). */
  | { kind: 'recover' }
  /** Completed: the VM lives on the target now; the local copy (paused QEMU, overlays) goes. */
  | { kind: 'cleanupMovedAway' };

export function decideSource(m: Migration, f: SourceFacts): SourceAction {
  switch (m.phase) {
    case 'requested':
      if (f.running || f.handled) return { kind: 'none' };
      // Restarted before the run began: nothing happened yet, so starting now is as good as before.
      return { kind: 'start' };
    case 'preparing':
    case 'transferring':
    case 'switching':
      if (f.running) return { kind: 'none' };
      // The record outlived the process that drove it (restart). QEMU's migration ran through a socket of the dead
      // process, so it is broken; retrying is a new migration, a decision for the caller. In `switching` the guest is
      // paused here and `completed` was not proposed by anyone (only this node proposes it, and the state says it
      // did not happen): failing is safe, as the target only goes live on `completed`, and the state machine then
      // refuses `completed` for good.
      if (f.inherited || f.handled) return { kind: 'fail', reason: `the source node restarted during ${m.phase}: the migration stream died with it; the VM stays on the source` };
      return { kind: 'none' };
    case 'failed':
    case 'cancelled':
      if (f.running) return { kind: 'abort', reason: m.reason ?? m.phase };
      if (f.handled) return { kind: 'none' };
      return { kind: 'recover' };
    case 'completed':
      if (f.running || f.handled || f.ownerIsSelf) return { kind: 'none' };
      return { kind: 'cleanupMovedAway' };
  }
}

/** Facts the target node knows locally. */
export interface TargetFacts {
  /** none: nothing prepared in this process; preparing: the prepare request is being served; ready: QEMU waits for the stream; live: resumed. */
  session: 'none' | 'preparing' | 'ready' | 'live';
  inherited: boolean;
  handled: boolean;
  ownerIsSelf: boolean;
  /** This node has a QEMU or disk folder of the VM. */
  leftovers: boolean;
}

export type TargetAction =
  | { kind: 'none' }
  /** The migration completed with this node as owner: stop NBD, `cont` (idempotent). */
  | { kind: 'goLive' }
  /** Kill the incoming QEMU and delete the new overlays; with `fail`, also mark the migration failed. */
  | { kind: 'cleanup'; fail: string | null };

export function decideTarget(m: Migration, f: TargetFacts): TargetAction {
  switch (m.phase) {
    case 'requested':
    case 'preparing':
    case 'transferring':
      // A session of a dead process cannot be resumed: the incoming QEMU lost its stream and its NBD tunnel.
      if (f.session === 'none' && f.inherited && !f.handled) {
        return { kind: 'cleanup', fail: `the target node restarted during ${m.phase}: its incoming QEMU was discarded; the VM stays on the source` };
      }
      return { kind: 'none' };
    case 'switching':
      // The source may be committing right now: the received QEMU must survive until the record is final.
      return { kind: 'none' };
    case 'completed':
      if (f.session === 'ready') return { kind: 'goLive' };
      // Restarted after the commit: the agent adopts the paused, complete QEMU it finds (owner is this node now).
      return { kind: 'none' };
    case 'failed':
    case 'cancelled':
      // Never touch a VM this node owns (a later migration may have brought it here).
      if (f.ownerIsSelf || f.handled) return { kind: 'none' };
      if (f.session !== 'none' || f.leftovers) return { kind: 'cleanup', fail: null };
      return { kind: 'none' };
  }
}

/**
 * Guest downtime measured on the source's clock alone: from the pause to the moment the target resumed. The target's
 * answer arrives after the round trip; `handledMs` of it were spent on the target, so the answer's way back takes
 * about half of the rest, and the guest resumed `resumedAgoMs` before the answer left (0 when the request did the
 * `cont`). Error bound: ± half the network part of the round trip (the asymmetry of the two legs).
 */
export function downtimeMs(pausedAtMs: number, requestSentAtMs: number, answerAtMs: number, handledMs: number, resumedAgoMs = 0): { downtimeMs: number; errorBoundMs: number } {
  const network = Math.max(0, answerAtMs - requestSentAtMs - handledMs);
  const resumedAt = answerAtMs - network / 2 - resumedAgoMs;
  return { downtimeMs: Math.max(0, resumedAt - pausedAtMs), errorBoundMs: network / 2 };
}

/** Progress goes through Raft at most this often (each update is a log entry on every node). */
export const progressProposeIntervalMs = 1_000;

/** Whether a progress update is due: the interval passed and none is in flight. Pure: the caller gives the clock. */
export function progressDue(nowMs: number, lastProposedAtMs: number | null, inFlight: boolean, intervalMs = progressProposeIntervalMs): boolean {
  if (inFlight) return false;
  return lastProposedAtMs === null || nowMs - lastProposedAtMs >= intervalMs;
}
