// The cluster state machine replicated by Raft: commands, validation, records, snapshots and the read API.
export * from './commands.js';
export * from './errors.js';
export * from './records.js';
export * from './snapshot.js';
export * from './state.js';
export * from './secrets.js';
