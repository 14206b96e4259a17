// Errors the core throws to its caller; each has a stable string `code` for the API layer to map.
import type { NodeId } from '../types.js';

/** This node is not the leader; `leaderHint` is the leader it knows of, if any. */
export class NotLeaderError extends Error {
  override readonly name = 'NotLeaderError';
  readonly code = 'not_leader';
  constructor(readonly leaderHint: NodeId | null) {
    super(leaderHint === null ? 'not the leader; no leader known' : `not the leader; leader is ${leaderHint}`);
  }
}

/** The leader refused a proposal (leader transfer in progress, or too many uncommitted bytes); retry later. */
export class ProposalDroppedError extends Error {
  override readonly name = 'ProposalDroppedError';
  readonly code = 'proposal_dropped';
}

/** A membership change was refused: another is still uncommitted, or the leader has not committed in its term yet. */
export class ConfChangePendingError extends Error {
  override readonly name = 'ConfChangePendingError';
  readonly code = 'conf_change_pending';
}

/** A membership change that makes no sense for the current configuration (e.g. removing the last voter). */
export class ConfChangeInvalidError extends Error {
  override readonly name = 'ConfChangeInvalidError';
  readonly code = 'conf_change_invalid';
}

/** Leader transfer to a node that is not a voter. */
export class LeaderTransferError extends Error {
  override readonly name = 'LeaderTransferError';
  readonly code = 'transfer_invalid';
}

/** The driver misused the core (e.g. compacting past the applied index, or inconsistent persisted state). */
export class RaftUsageError extends Error {
  override readonly name = 'RaftUsageError';
  readonly code = 'raft_usage';
}

/** The core found its own state impossible (e.g. asked to truncate a committed entry): a safety bug or corrupt input. */
export class RaftInvariantError extends Error {
  override readonly name = 'RaftInvariantError';
  readonly code = 'raft_invariant';
}

/** A peer message failed to decode or validate; the message is dropped, the core never sees it. */
export class CodecError extends Error {
  override readonly name = 'CodecError';
  readonly code = 'message_malformed';
}
