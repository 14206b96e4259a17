// Typed refusals of the cluster state machine. apply() throws them; the Raft driver catches anything apply
// throws and rejects only that entry's proposer, so a refusal never stops replication. Each has a `name` and
// a stable snake_case `code` (the project convention, see node/errors.ts) for node/api/problem.ts to map.

export type ClusterErrorCode =
  /** The command bytes or shape are malformed (refused by the validator at propose time and again at apply). */
  | 'command_invalid'
  /** Any command but cluster.init before the cluster exists, or cluster.init twice. */
  | 'cluster_not_initialized'
  | 'cluster_already_initialized'
  | 'not_found'
  | 'already_exists'
  /** Optimistic concurrency: `expectedVersion` is not the record's current version. */
  | 'version_conflict'
  /** The change would break an invariant (last voter, last admin token, VM still owned, image in use…). */
  | 'conflict'
  | 'migration_transition_invalid'
  | 'join_token_invalid'
  | 'join_token_expired'
  | 'join_token_used'
  | 'join_token_revoked'
  /** The actor may not make this change (e.g. an agent writing the observed state of a VM it does not own). */
  | 'forbidden'
  | 'limit_exceeded'
  /** A snapshot that cannot be restored (unknown newer schema version, bad bytes). */
  | 'snapshot_invalid';

export class ClusterError extends Error {
  override readonly name = 'ClusterError';
  readonly code: ClusterErrorCode;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ClusterErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.code = code;
    this.details = details;
  }
}
