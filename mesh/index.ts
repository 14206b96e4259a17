// The mesh package's public surface: what node/, migration/ and tests import.
export * from './defaults.js';
export * from './errors.js';
export * from './identity.js';
export * from './join-token.js';
export * from './link-model.js';
export * from './log.js';
export * from './membership.js';
export * from './mesh.js';
export * from './protocol.js';
export * from './telemetry.js';
