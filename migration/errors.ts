// Typed errors of the migration engine, following node/errors.ts's convention (a class `name`, a stable code that
// node/api/problem.ts maps to an HTTP status).
import { NovaError } from '../node/errors.js';

export type MigrationEngineErrorCode =
  | 'migration_aborted'
  | 'migration_deadline'
  | 'migration_qemu_failed'
  | 'migration_tunnel_closed'
  | 'migration_target_failed'
  | 'migration_switchover_refused';

export class MigrationEngineError extends NovaError {
  declare readonly code: MigrationEngineErrorCode;
  constructor(code: MigrationEngineErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(code, message, options);
  }
}
