// Raft storage: one contract (RaftStorage in ../types.ts + AppliedStore), two engines.
export { BaseRaftStorage, EMPTY_HARD_STATE, type AppliedState, type AppliedStore } from './base.js';
export * from './errors.js';
export { LevelRaftStorage, STORAGE_FORMAT_VERSION, type LevelOpenOptions } from './leveldb.js';
export { MemoryDisk, MemoryRaftStorage } from './memory.js';
export { ENTRY_DATA_MAX_BYTES, SNAPSHOT_DATA_MAX_BYTES, NODE_ID_MAX_BYTES, CONF_MEMBERS_MAX_COUNT } from './records.js';
