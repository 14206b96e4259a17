// The Raft wire vocabulary: a discriminated union on `type`, every message carrying from, to and term.
import type { ConfState, Entry, NodeId, SnapshotMeta } from '../types.js';

interface MessageBase {
  readonly from: NodeId;
  readonly to: NodeId;
  /** Sender's term; for preVote it is the term the sender would campaign in (its term + 1). */
  readonly term: number;
}

/** RequestVote (§5.2) or its pre-vote probe; `transfer` is set when a leader transfer asked for it (bypasses leases). */
export interface VoteMessage extends MessageBase {
  readonly type: 'vote' | 'preVote';
  readonly lastIndex: number;
  readonly lastTerm: number;
  readonly transfer: boolean;
}

export interface VoteResponseMessage extends MessageBase {
  readonly type: 'voteResp' | 'preVoteResp';
  readonly reject: boolean;
}

/** AppendEntries (§5.3): entries follow (index, logTerm); commit is the leader's commit index. */
export interface AppendMessage extends MessageBase {
  readonly type: 'app';
  readonly index: number;
  readonly logTerm: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
}

/**
 * Success: `index` is the follower's last index matching the leader. Reject: `index` is the rejected prev index,
 * and (rejectHint, logTerm) is the follower's suggestion for where the logs may agree (fast backtracking).
 */
export interface AppendResponseMessage extends MessageBase {
  readonly type: 'appResp';
  readonly index: number;
  readonly reject: boolean;
  readonly rejectHint: number;
  readonly logTerm: number;
}

/** `commit` is min(leader commit, follower match) so a follower never commits entries it may not hold. */
export interface HeartbeatMessage extends MessageBase {
  readonly type: 'heartbeat';
  readonly commit: number;
  /** ReadIndex round this heartbeat confirms, echoed back in the response. */
  readonly ctx: string | null;
}

export interface HeartbeatResponseMessage extends MessageBase {
  readonly type: 'heartbeatResp';
  readonly ctx: string | null;
}

/** One chunk of InstallSnapshot (§7): bytes [offset, offset + data.length) of a snapshot of `totalBytes`. */
export interface SnapshotMessage extends MessageBase {
  readonly type: 'snap';
  readonly meta: SnapshotMeta;
  readonly offset: number;
  readonly totalBytes: number;
  readonly data: Uint8Array;
}

/** Chunk acknowledgement: the follower holds bytes [0, offset) of snapshot `index`. The last chunk is answered by appResp. */
export interface SnapshotResponseMessage extends MessageBase {
  readonly type: 'snapResp';
  readonly index: number;
  readonly offset: number;
}

/** Leader transfer: the target campaigns at once, skipping pre-vote. */
export interface TimeoutNowMessage extends MessageBase {
  readonly type: 'timeoutNow';
}

/** A follower forwards a ReadIndex request to the leader (term is informational; not term-checked). */
export interface ReadIndexMessage extends MessageBase {
  readonly type: 'readIndex';
  readonly ctx: string;
}

export interface ReadIndexResponseMessage extends MessageBase {
  readonly type: 'readIndexResp';
  readonly ctx: string;
  readonly index: number;
}

export type Message =
  | VoteMessage
  | VoteResponseMessage
  | AppendMessage
  | AppendResponseMessage
  | HeartbeatMessage
  | HeartbeatResponseMessage
  | SnapshotMessage
  | SnapshotResponseMessage
  | TimeoutNowMessage
  | ReadIndexMessage
  | ReadIndexResponseMessage;

export type MessageType = Message['type'];

export const MESSAGE_TYPES: readonly MessageType[] = [
  'vote',
  'voteResp',
  'preVote',
  'preVoteResp',
  'app',
  'appResp',
  'heartbeat',
  'heartbeatResp',
  'snap',
  'snapResp',
  'timeoutNow',
  'readIndex',
  'readIndexResp',
];

/**
 * A single-server membership change (Raft dissertation §4.1, with the fix that a leader commits an entry of its own
 * term before proposing one). addVoter on a learner promotes it; addLearner on a voter demotes it.
 */
export interface ConfChange {
  readonly type: 'addVoter' | 'addLearner' | 'removeNode';
  readonly nodeId: NodeId;
}

/** The payload of a `conf` entry: the change and the full configuration it produces (so no replay is needed). */
export interface ConfChangeRecord {
  readonly change: ConfChange;
  readonly conf: ConfState;
}

/** A linearizable read point: once the state machine has applied `index`, reads for `ctx` may be served. */
export interface ReadState {
  readonly ctx: string;
  readonly index: number;
}

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader';

/** Volatile state the driver may want to observe (not persisted). */
export interface SoftState {
  readonly leader: NodeId | null;
  readonly role: Role;
}
