// Typed errors of the Raft storage layer. Corruption is StorageCorruptError in ../types.ts (the core knows it);
// these are misuse or environment errors the driver maps to actions (send a snapshot, refuse to start, ...).

/** Asked for entries below firstIndex: they were compacted into the snapshot (send the snapshot instead). */
export class StorageCompactedError extends Error {
  override readonly name = 'StorageCompactedError';
  readonly code = 'storage_compacted';
}

/** Asked for entries beyond lastIndex, or a snapshot beyond the log. */
export class StorageUnavailableError extends Error {
  override readonly name = 'StorageUnavailableError';
  readonly code = 'storage_unavailable';
}

/** applySnapshot/compact with a snapshot not newer than the one held. */
export class StorageSnapshotOutOfDateError extends Error {
  override readonly name = 'StorageSnapshotOutOfDateError';
  readonly code = 'storage_snapshot_out_of_date';
}

/** A caller bug: non-contiguous append, a gap after lastIndex, decreasing terms, an oversized record. */
export class StorageInvalidArgumentError extends Error {
  override readonly name = 'StorageInvalidArgumentError';
  readonly code = 'storage_invalid_argument';
}

/** Used after close(). */
export class StorageClosedError extends Error {
  override readonly name = 'StorageClosedError';
  readonly code = 'storage_closed';
}

/** The database is already open in another process (or another handle in this one): LevelDB's LOCK is held. */
export class StorageLockedError extends Error {
  override readonly name = 'StorageLockedError';
  readonly code = 'storage_locked';
}

/** The database was written by an incompatible format version, or is not a NovaCron Raft store. */
export class StorageVersionError extends Error {
  override readonly name = 'StorageVersionError';
  readonly code = 'storage_version';
}

/**
 * A write or read failed in the engine (disk full, I/O error, fsync failure). The store refuses every call
 * after a failed write: after a failed fsync the on-disk state is unknown, so the node must restart and
 * recover from what is really there rather than carry on from its cached view.
 */
export class StorageIoError extends Error {
  override readonly name = 'StorageIoError';
  readonly code = 'storage_io';
}
