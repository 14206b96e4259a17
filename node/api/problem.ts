// The one place that turns errors into HTTP status codes and RFC 9457 problem+json bodies.
// Errors from every module are matched by their stable `code`; anything unknown is a 500 whose
// message is not leaked to the client (it is logged instead).
import Type from 'typebox';
import { isCodedError } from '../errors.js';

export const problemContentType = 'application/problem+json';

interface ProblemKind {
  status: number;
  title: string;
}

/** Stable error code → HTTP status and title. Codes from consensus/mesh/migration are added here as they appear. */
export const problemKinds: Readonly<Record<string, ProblemKind>> = {
  bad_request: { status: 400, title: 'Bad request' },
  validation_failed: { status: 400, title: 'Request failed validation' },
  unauthorized: { status: 401, title: 'Authentication required' },
  forbidden: { status: 403, title: 'Not allowed' },
  not_found: { status: 404, title: 'Not found' },
  conflict: { status: 409, title: 'Conflict with the current state' },
  payload_too_large: { status: 413, title: 'Request body too large' },
  unsupported_media_type: { status: 415, title: 'Unsupported media type' },
  internal: { status: 500, title: 'Internal error' },
  config_invalid: { status: 500, title: 'Node configuration is invalid' },
  data_dir_invalid: { status: 500, title: 'Node data directory is unusable' },
  not_ready: { status: 503, title: 'Node is not ready' },
  qemu_unsupported: { status: 503, title: 'QEMU on this node is missing or too old' },
  demo_guest_build_failed: { status: 500, title: 'Building the demo guest failed' },
  demo_guest_invalid: { status: 500, title: 'The demo guest build output is unusable' },
  // mesh/ (mesh/errors.ts)
  join_token_malformed: { status: 400, title: 'Join token is malformed' },
  join_token_invalid: { status: 403, title: 'Join token was not issued by this cluster' },
  join_token_expired: { status: 410, title: 'Join token has expired' },
  join_token_revoked: { status: 403, title: 'Join token was revoked' },
  join_token_used: { status: 409, title: 'Join token was already used' },
  join_token_wrong_cluster: { status: 409, title: 'Join token belongs to another cluster' },
  join_token_not_found: { status: 404, title: 'No such join token' },
  mesh_join_unreachable: { status: 502, title: 'No bootstrap address of the join token answered' },
  mesh_already_in_cluster: { status: 409, title: 'This node already belongs to another cluster' },
  mesh_timeout: { status: 504, title: 'A peer did not answer in time' },
  mesh_peer_unreachable: { status: 502, title: 'Peer unreachable' },
  mesh_stream_refused: { status: 502, title: 'Peer refused the stream' },
  mesh_answer_lost: { status: 502, title: 'The answer of the peer was lost; the request may have been handled' },
  mesh_remote_error: { status: 502, title: 'Peer answered with an error' },
  mesh_invalid_message: { status: 502, title: 'Peer sent an invalid message' },
  mesh_message_too_large: { status: 502, title: 'Message larger than the protocol allows' },
  mesh_not_member: { status: 403, title: 'Peer is not a member of this cluster' },
  mesh_not_running: { status: 503, title: 'The mesh is not running' },
  mesh_state_invalid: { status: 500, title: 'Mesh state in the data dir is unusable' },
  // consensus/cluster (ClusterError) and node/cluster
  command_invalid: { status: 400, title: 'Cluster command is invalid' },
  cluster_not_initialized: { status: 409, title: 'The cluster is not initialised yet' },
  cluster_already_initialized: { status: 409, title: 'This node already belongs to an initialised cluster' },
  already_exists: { status: 409, title: 'Already exists' },
  version_conflict: { status: 409, title: 'The record changed since it was read (version mismatch)' },
  migration_transition_invalid: { status: 409, title: 'The migration cannot move to that phase' },
  migration_refused: { status: 409, title: 'The migration was refused' },
  migration_protocol: { status: 502, title: 'A peer sent an invalid migration message' },
  migration_aborted: { status: 409, title: 'The migration was stopped' },
  migration_deadline: { status: 504, title: 'The migration did not converge by its deadline' },
  migration_qemu_failed: { status: 502, title: 'QEMU failed the migration' },
  migration_tunnel_closed: { status: 502, title: 'The migration tunnel closed' },
  migration_target_failed: { status: 502, title: 'The target did not load the migrated guest' },
  migration_switchover_refused: { status: 409, title: 'The switch-over was not accepted' },
  limit_exceeded: { status: 409, title: 'A cluster limit was reached' },
  snapshot_invalid: { status: 500, title: 'Cluster snapshot cannot be restored' },
  cluster_bootstrap_invalid: { status: 500, title: 'The Raft bootstrap configuration in the data dir is unusable' },
  no_leader: { status: 503, title: 'No Raft leader' },
  no_quorum: { status: 503, title: 'No quorum: this node cannot reach a majority of the voters' },
  write_outcome_unknown: { status: 504, title: 'The leader did not answer: the write may or may not have been applied' },
  // consensus/ (Raft core and driver): a node without quorum refuses writes with 503 and says why.
  not_leader: { status: 503, title: 'This node is not the Raft leader' },
  proposal_timeout: { status: 503, title: 'No quorum: the write was not committed in time' },
  proposal_dropped: { status: 503, title: 'The write was dropped by a leader change; retry' },
  read_timeout: { status: 503, title: 'No quorum: no linearizable read point in time' },
  raft_overloaded: { status: 503, title: 'Too many pending Raft requests; retry later' },
  raft_stopped: { status: 503, title: 'Raft is stopped on this node' },
  conf_change_pending: { status: 409, title: 'Another membership change is in progress' },
  conf_change_invalid: { status: 409, title: 'Invalid membership change' },
  transfer_invalid: { status: 409, title: 'Invalid leader transfer' },
  storage_corrupt: { status: 500, title: 'The Raft store is corrupt; the node must be restarted' },
  storage_io: { status: 500, title: 'The Raft store failed to write; the node must be restarted' },
  storage_closed: { status: 503, title: 'The Raft store is closed' },
  storage_locked: { status: 500, title: 'The Raft store is in use by another process' },
  // node/hypervisor/ (QMP client, QEMU driver, accelerator probe)
  qmp_timeout: { status: 504, title: 'QEMU did not answer in time' },
  qmp_disconnected: { status: 502, title: 'The connection to QEMU was lost' },
  qmp_command_failed: { status: 500, title: 'QEMU refused the command' },
  qmp_protocol_error: { status: 502, title: 'QEMU spoke something other than QMP' },
  qmp_overloaded: { status: 503, title: 'Too many QEMU commands in flight; retry later' },
  qemu_start_failed: { status: 500, title: 'QEMU did not start' },
  qemu_kill_failed: { status: 500, title: 'QEMU could not be killed' },
  vm_not_running: { status: 409, title: 'The VM is not running on this node' },
  accel_unavailable: { status: 503, title: 'The configured accelerator is not available on this node' },
  // VMs (node/api/routes/vms.ts, node/agent)
  no_capacity: { status: 409, title: 'No node has room for the VM' },
  // node/hypervisor/images.ts (image store)
  image_not_found: { status: 404, title: 'No such image' },
  image_hash_mismatch: { status: 400, title: 'Image content does not match its SHA-256' },
  image_too_large: { status: 413, title: 'Image larger than the store accepts' },
  image_invalid: { status: 400, title: 'Not an image the store accepts' },
  image_store_full: { status: 507, title: 'Not enough space for the image on this node' },
  image_fetch_failed: { status: 502, title: 'No peer delivered the image' },
  qemu_img_failed: { status: 500, title: 'qemu-img failed' },
};

export interface ProblemFieldError {
  /** Where in the request: e.g. `body/memoryMiB`, `querystring/limit`. */
  path: string;
  message: string;
}

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  instance?: string;
  errors?: ProblemFieldError[];
  [extra: string]: unknown;
}

export const ProblemSchema = Type.Object(
  {
    type: Type.String({ description: 'URI naming the kind of problem: urn:novacron:problem:<code>' }),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String({ description: 'Stable machine-readable error code' }),
    instance: Type.Optional(Type.String()),
    errors: Type.Optional(Type.Array(Type.Object({ path: Type.String(), message: Type.String() }))),
  },
  { $id: 'Problem', additionalProperties: true, description: 'RFC 9457 problem details' },
);

export function problemType(code: string): string {
  return `urn:novacron:problem:${code}`;
}

export function makeProblem(code: string, detail: string, extra: Partial<Problem> = {}): Problem {
  const kind = problemKinds[code] ?? problemKinds.internal!;
  return { type: problemType(code), title: kind.title, status: kind.status, detail, code, ...extra };
}

interface FastifyValidationItem {
  instancePath?: string;
  message?: string;
  keyword?: string;
  params?: Record<string, unknown>;
}

interface FastifyLikeError extends Error {
  code?: string;
  statusCode?: number;
  validation?: FastifyValidationItem[];
  validationContext?: string;
}

export interface MappedProblem {
  problem: Problem;
  /** True when the error was not one we expected: the caller logs it with its stack. */
  unexpected: boolean;
}

export function toProblem(err: unknown, instance?: string): MappedProblem {
  const base = instance === undefined ? {} : { instance };
  const fe = err as FastifyLikeError;
  if (err instanceof Error && Array.isArray(fe.validation)) {
    const context = fe.validationContext ?? 'body';
    const errors = fe.validation.map((v) => validationItem(context, v));
    const detail = errors.map((e) => `${e.path}: ${e.message}`).join('; ');
    return { problem: makeProblem('validation_failed', detail, { ...base, errors }), unexpected: false };
  }
  if (isCodedError(err) && problemKinds[err.code] !== undefined) {
    const extra = err.code === 'internal' ? {} : sanitizeDetails((err as { details?: Record<string, unknown> }).details);
    // NotLeaderError (consensus/core) carries the leader it knows of: a client can retry there.
    const leaderHint = (err as { leaderHint?: unknown }).leaderHint;
    if (err.code === 'not_leader' && (typeof leaderHint === 'string' || leaderHint === null)) extra.leader = leaderHint;
    const unexpected = (problemKinds[err.code]?.status ?? 500) >= 500;
    return { problem: makeProblem(err.code, err.message, { ...extra, ...base }), unexpected };
  }
  // Fastify's own client errors (bad JSON, wrong content type, body too large) carry a 4xx statusCode.
  if (err instanceof Error && typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    const code = fe.statusCode === 413 ? 'payload_too_large' : fe.statusCode === 415 ? 'unsupported_media_type' : fe.statusCode === 404 ? 'not_found' : 'bad_request';
    const problem = makeProblem(code, err.message, base);
    problem.status = fe.statusCode;
    return { problem, unexpected: false };
  }
  return { problem: makeProblem('internal', 'the node hit an unexpected error; see its log', base), unexpected: true };
}

function validationItem(context: string, v: FastifyValidationItem): ProblemFieldError {
  let path = context + (v.instancePath ?? '');
  if (v.keyword === 'additionalProperties' && typeof v.params?.additionalProperty === 'string') {
    path = `${path}/${v.params.additionalProperty}`;
    return { path, message: 'unknown field' };
  }
  if (v.keyword === 'required' && typeof v.params?.missingProperty === 'string') {
    return { path: `${path}/${v.params.missingProperty}`, message: 'is required' };
  }
  return { path, message: v.message ?? 'is invalid' };
}

const reservedProblemKeys = new Set(['type', 'title', 'status', 'detail', 'code', 'instance']);

function sanitizeDetails(details: Record<string, unknown> | undefined): Record<string, unknown> {
  if (details === undefined) return {};
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(details)) if (!reservedProblemKeys.has(k)) out[k] = v;
  return out;
}
