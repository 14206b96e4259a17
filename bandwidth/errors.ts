// Typed bandwidth errors. bandwidth/ imports none of our other folders, so these follow node/errors.ts's
// convention: a class `name` and a stable snake_case `code` (node/api/problem.ts maps codes to HTTP statuses).

export type BandwidthErrorCode = 'bandwidth_frame_invalid' | 'bandwidth_stream_truncated' | 'bandwidth_aborted' | 'bandwidth_options_invalid';

export class BandwidthError extends Error {
  readonly code: BandwidthErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: BandwidthErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BandwidthError';
    this.code = code;
    this.details = options.details;
  }
}
