// The leader's view of one follower (etcd's Progress): probe, replicate or snapshot, with bounded in-flight appends.
import type { Snapshot } from '../types.js';

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  /** In probe state: one append is outstanding, wait for its answer (or a heartbeat response) before the next. */
  probeSent = false;
  /** Last index of each unacknowledged append sent in replicate state, oldest first. */
  inflights: number[] = [];
  /** Heard from since the last check-quorum round. */
  recentActive: boolean;
  /** In snapshot state: the snapshot being streamed and the byte offset the follower acknowledged. */
  snapshot: Snapshot | null = null;
  snapOffset = 0;
  /** Highest commit index sent to this follower in an append (lets the leader skip redundant commit-only appends). */
  sentCommit = 0;

  constructor(
    next: number,
    private readonly maxInflightMsgs: number,
    recentActive: boolean,
  ) {
    this.next = next;
    this.recentActive = recentActive;
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflights.length >= this.maxInflightMsgs;
      case 'snapshot':
        return true;
    }
  }

  becomeProbe(): void {
    // After a snapshot the follower holds at least the snapshot index.
    this.next = this.state === 'snapshot' && this.snapshot ? Math.max(this.match + 1, this.snapshot.meta.index + 1) : this.match + 1;
    this.state = 'probe';
    this.probeSent = false;
    this.inflights = [];
    this.snapshot = null;
  }

  becomeReplicate(): void {
    this.next = this.match + 1;
    this.state = 'replicate';
    this.inflights = [];
    this.snapshot = null;
  }

  becomeSnapshot(snapshot: Snapshot): void {
    this.state = 'snapshot';
    this.snapshot = snapshot;
    this.snapOffset = 0;
    this.inflights = [];
  }

  /** Success response up to n; returns whether match advanced. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  /** Rejection of the append after `rejected`; `matchHint` is the follower's guess. Returns false for stale rejections. */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1, 1);
    this.probeSent = false;
    return true;
  }

  freeInflightsUpTo(index: number): void {
    let k = 0;
    while (k < this.inflights.length && (this.inflights[k] ?? 0) <= index) k++;
    if (k > 0) this.inflights.splice(0, k);
  }
}
