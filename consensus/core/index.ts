// Public surface of the pure Raft core.
export * from './errors.js';
export * from './messages.js';
export * from './raft.js';
export * from './random.js';
export { decodeMessage, encodeMessage, CODEC_VERSION, MAX_MESSAGE_BYTES } from './codec.js';
export { decodeConfRecord, encodeConfRecord } from './log.js';
