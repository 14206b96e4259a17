// bandwidth/: the adaptive codec of live migration (framed chunks, raw or zstd at a level a controller picks from
// the measured link and compressor), token-bucket rate limits. Imports none of our other folders.
export * from './errors.js';
export * from './frame.js';
export * from './controller.js';
export * from './rate-limit.js';
export * from './encoder.js';
export * from './decoder.js';
export * from './compress-pool.js';
