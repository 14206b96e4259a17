// Typed mesh errors. mesh/ may not import node/errors.ts, so these follow its convention: a class `name`
// and a stable snake_case `code` that node/api/problem.ts maps to an HTTP status.

export interface MeshErrorOptions {
  cause?: unknown;
  details?: Record<string, unknown>;
}

export class MeshError extends Error {
  readonly code: string;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, options: MeshErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options.details;
  }
}

/** A request or stream operation did not finish before its deadline. */
export class MeshTimeoutError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super('mesh_timeout', message, options);
  }
}

/** A length-prefixed message was larger than the protocol allows; the stream was reset. */
export class MeshMessageTooLargeError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super('mesh_message_too_large', message, options);
  }
}

/** A message did not parse or failed the protocol's validation hook. */
export class MeshInvalidMessageError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super('mesh_invalid_message', message, options);
  }
}

/** The remote refused the stream (not a member, protocol unsupported) or reset it. */
export class MeshStreamRefusedError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}, code = 'mesh_stream_refused') {
    super(code, message, options);
  }
}

/**
 * A request's stream failed after the request was (perhaps partly) sent: the remote may have handled it. A
 * MeshStreamRefusedError for callers that only retry idempotent requests; non-idempotent ones must not retry.
 */
export class MeshAnswerLostError extends MeshStreamRefusedError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super(message, options, 'mesh_answer_lost');
  }
}

/** A peer is not in the member set: raised on the side that refuses it. */
export class MeshNotMemberError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super('mesh_not_member', message, options);
  }
}

/** The peer could not be dialled at any known address. */
export class MeshPeerUnreachableError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super('mesh_peer_unreachable', message, options);
  }
}

/** The remote handled the request and answered with an error of its own (its code is in details.remoteCode). */
export class MeshRemoteError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super('mesh_remote_error', message, options);
  }
}

/** The mesh is not running (not started yet, or stopping). */
export class MeshNotRunningError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super('mesh_not_running', message, options);
  }
}

/** Persisted mesh state (identity, tokens, members) could not be read or written. */
export class MeshStateError extends MeshError {
  constructor(message: string, options: MeshErrorOptions = {}) {
    super('mesh_state_invalid', message, options);
  }
}

/** Join token codes: each refusal reason is distinct so callers and scripts can tell them apart. */
export const JoinTokenCode = {
  malformed: 'join_token_malformed',
  expired: 'join_token_expired',
  revoked: 'join_token_revoked',
  used: 'join_token_used',
  wrongCluster: 'join_token_wrong_cluster',
  invalid: 'join_token_invalid',
  notFound: 'join_token_not_found',
} as const;
export type JoinTokenCodeValue = (typeof JoinTokenCode)[keyof typeof JoinTokenCode];

export class JoinTokenError extends MeshError {
  constructor(code: JoinTokenCodeValue, message: string, options: MeshErrorOptions = {}) {
    super(code, message, options);
  }
}

/** Joining failed for a reason other than the token: no bootstrap answered, or this node is in another cluster. */
export class MeshJoinError extends MeshError {
  constructor(code: 'mesh_join_unreachable' | 'mesh_already_in_cluster', message: string, options: MeshErrorOptions = {}) {
    super(code, message, options);
  }
}

export function meshErrorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
