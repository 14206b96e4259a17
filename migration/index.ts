// migration/: the QEMU side of live migration (disk mirrors over NBD, the RAM stream, switch-over) and the tunnel that
// carries both over a mesh channel through the bandwidth codec. node/migration/ orchestrates it through Raft.
import type { MigrationEngine } from '../node/migration/engine.js';
import { estimateBeforeStart, runSource } from './source.js';
import { prepareTarget } from './target.js';

export * from './convergence.js';
export * from './errors.js';
export { estimateBeforeStart, runSource } from './source.js';
export { prepareTarget, exportName } from './target.js';
export { Tunnel, TunnelListener } from './tunnel.js';

export const qemuMigrationEngine: MigrationEngine = { prepareTarget, runSource, estimateBeforeStart };
