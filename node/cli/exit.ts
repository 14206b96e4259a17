// CLI exit codes and the errors that select them, so scripts can tell a typo from a dead node.
import type { Problem } from '../api/problem.js';

export const ExitCode = {
  ok: 0,
  /** Unexpected failure inside the CLI itself. */
  failure: 1,
  /** Bad command line: unknown command or option, missing or malformed argument. */
  usage: 2,
  /** The node could not be reached: refused, timed out, DNS, TLS. */
  connection: 3,
  /** The node rejected the request (4xx): not found, invalid input, unauthorized, conflict. */
  rejected: 4,
  /** The node failed or is unavailable (5xx): internal error, no quorum, not ready. */
  server: 5,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export class CliUsageError extends Error {
  readonly code = 'usage';
  constructor(message: string) {
    super(message);
    this.name = 'CliUsageError';
  }
}

export class CliConnectionError extends Error {
  readonly code = 'connection_failed';
  constructor(
    readonly url: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CliConnectionError';
  }
}

export class CliApiError extends Error {
  readonly code: string;
  constructor(
    readonly status: number,
    readonly problem: Problem,
  ) {
    super(problem.detail === '' ? problem.title : problem.detail);
    this.name = 'CliApiError';
    this.code = problem.code;
  }
}

export function exitCodeFor(err: unknown): ExitCodeValue {
  if (err instanceof CliUsageError) return ExitCode.usage;
  if (err instanceof CliConnectionError) return ExitCode.connection;
  if (err instanceof CliApiError) return err.status >= 500 ? ExitCode.server : ExitCode.rejected;
  return ExitCode.failure;
}
