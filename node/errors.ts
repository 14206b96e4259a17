// Typed errors shared by the node: every error has a class `name` and a stable snake_case `code`.
// node/api/problem.ts is the one place that maps codes to HTTP status and problem+json.

export interface ErrorOptions {
  cause?: unknown;
  details?: Record<string, unknown>;
}

export class NovaError extends Error {
  readonly code: string;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options.details;
  }
}

export interface ConfigIssue {
  /** Dotted key path, e.g. `api.port`; empty for the document root. */
  key: string;
  message: string;
  value?: unknown;
  /** Where the value came from: a file path, an environment variable or a flag. */
  source?: string;
}

export class ConfigError extends NovaError {
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[], options: ErrorOptions = {}) {
    super('config_invalid', formatConfigIssues(issues), { ...options, details: { issues } });
    this.issues = issues;
  }
}

function formatConfigIssues(issues: ConfigIssue[]): string {
  const lines = issues.map((i) => {
    const key = i.key === '' ? '(root)' : i.key;
    const value = i.value === undefined ? '' : ` (got ${JSON.stringify(i.value)})`;
    const source = i.source === undefined ? '' : ` [from ${i.source}]`;
    return `  ${key}: ${i.message}${value}${source}`;
  });
  return `invalid configuration:\n${lines.join('\n')}`;
}

export class DataDirError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('data_dir_invalid', message, options);
  }
}

export class ValidationError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('validation_failed', message, options);
  }
}

export class NotFoundError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('not_found', message, options);
  }
}

export class ConflictError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('conflict', message, options);
  }
}

export class UnauthorizedError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('unauthorized', message, options);
  }
}

export class ForbiddenError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('forbidden', message, options);
  }
}

export class NotReadyError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('not_ready', message, options);
  }
}

export class QemuUnsupportedError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('qemu_unsupported', message, options);
  }
}

export class InternalError extends NovaError {
  constructor(message: string, options: ErrorOptions = {}) {
    super('internal', message, options);
  }
}

/** An error from any module (consensus, mesh, …) that follows the convention of a string `code`. */
export interface CodedError extends Error {
  code: string;
  details?: Record<string, unknown>;
}

export function isCodedError(err: unknown): err is CodedError {
  return err instanceof Error && typeof (err as { code?: unknown }).code === 'string';
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
