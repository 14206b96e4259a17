// Pure helpers of the cluster service, kept apart so unit tests need no mesh, Raft or disk: what counts as an
// initialised Raft store, the bootstrap configuration file, the first admin token and the init command.
import { randomBytes, randomUUID } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { addressesPerMemberMax, hashSecret, type CommandOf } from '../../consensus/cluster/index.js';
import type { ConfState, HardState, SnapshotMeta } from '../../consensus/types.js';
import { NovaError } from '../errors.js';

/** Prefix of API token secrets, so a leaked one is recognisable (secret scanners, logs). */
export const apiTokenPrefix = 'ncadm_';
/** Prefix of tokens created later with `token create` (any role). */
export const createdTokenPrefix = 'ncapi_';
/** Random bytes in an API token secret. */
export const apiTokenSecretBytes = 32;
/** Name of the first admin token in the cluster state. */
export const adminTokenName = 'initial-admin';
/** Longest address list a member record holds (the command schema's bound). */
export const memberAddressesMax = addressesPerMemberMax;
/** Longest member-record address. */
const memberAddressCharsMax = 512;
export const bootstrapFileName = 'bootstrap.json';
export const raftDbDirName = 'db';
/** Marker of a node that joined a cluster through a join token: Raft opens without bootstrap voters at start. */
export const joinedFileName = 'joined.json';
const bootstrapFormatVersion = 1;

/** A store was initialised once it holds a term (this node bootstrapped or heard a leader) or a snapshot. */
export function isStoreInitialised(state: { hardState: HardState; snapshot: SnapshotMeta | null; lastIndex: number }): boolean {
  return state.hardState.term > 0 || state.snapshot !== null || state.lastIndex > 0;
}

export class ClusterBootstrapError extends NovaError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('cluster_bootstrap_invalid', message, options);
  }
}

/**
 * The one-voter configuration this node founded the cluster with. Raft's core does not persist the bootstrap
 * configuration (only later conf entries and snapshots carry one), so the node keeps it next to the store and
 * passes it again on every open. A node that joined has no such file (see writeJoinedMarker).
 */
export function readBootstrapConf(raftDir: string): ConfState | null {
  const file = join(raftDir, bootstrapFileName);
  if (!existsSync(file)) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ClusterBootstrapError(`${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  const p = parsed as { version?: unknown; voters?: unknown };
  if (p.version !== bootstrapFormatVersion || !Array.isArray(p.voters) || p.voters.length === 0 || !p.voters.every((v) => typeof v === 'string' && v !== '')) {
    throw new ClusterBootstrapError(`${file} is not a bootstrap configuration (version ${bootstrapFormatVersion}, voters)`);
  }
  return { voters: p.voters as string[], learners: [], votersOutgoing: [] };
}

/** Writes the bootstrap configuration durably (temp file, fsync, rename) before Raft first persists anything. */
export function writeBootstrapConf(raftDir: string, voters: readonly string[]): void {
  writeDurable(raftDir, bootstrapFileName, `${JSON.stringify({ version: bootstrapFormatVersion, voters })}\n`);
}

/**
 * Records that this node joined cluster `clusterId` (before Raft first opens), so that a restart reopens Raft as a
 * joiner even if nothing reached its store yet. A joiner has no bootstrap.json: its configuration comes from the
 * leader (conf entries and snapshots carry the full configuration).
 */
export function writeJoinedMarker(raftDir: string, clusterId: string): void {
  writeDurable(raftDir, joinedFileName, `${JSON.stringify({ version: bootstrapFormatVersion, clusterId })}\n`);
}

export function hasJoinedMarker(raftDir: string): boolean {
  return existsSync(join(raftDir, joinedFileName));
}

/** Writes `name` in `dir` durably: temp file, fsync, rename, fsync of the folder. */
function writeDurable(dir: string, name: string, content: string): void {
  const file = join(dir, name);
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  const dirFd = openSync(dir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

export interface ApiTokenSecret {
  /** Shown once to the caller; never stored. */
  secret: string;
  /** What the cluster state keeps: hashSecret(secret). */
  secretHash: string;
}

export function generateApiTokenSecret(random: (n: number) => Uint8Array = randomBytes, prefix: string = apiTokenPrefix): ApiTokenSecret {
  const secret = prefix + Buffer.from(random(apiTokenSecretBytes)).toString('base64url');
  return { secret, secretHash: hashSecret(secret) };
}

/** A DNS-label member name from a node name (the config allows upper case; member names do not). */
export function memberNameFrom(nodeName: string): string {
  const label = nodeName
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  return label === '' ? 'node' : label;
}

/** Mesh addresses as a member record holds them: bounded in count and length, no duplicates. */
export function memberAddresses(addrs: readonly string[]): string[] {
  return [...new Set(addrs.filter((a) => a.length > 0 && a.length <= memberAddressCharsMax))].slice(0, memberAddressesMax);
}

export interface InitCommandInput {
  clusterId: string;
  nodeId: string;
  nodeName: string;
  addresses: readonly string[];
  site?: string;
  adminTokenId?: string;
  adminTokenHash: string;
  at: number;
  from: string | null;
}

/** cluster.init founds the cluster with this node as its one voter and the first admin token (hash only). */
export function buildInitCommand(input: InitCommandInput): CommandOf<'cluster.init'> {
  return {
    type: 'cluster.init',
    at: input.at,
    actor: { kind: 'system', id: input.nodeId, name: 'cluster init' },
    from: input.from,
    clusterId: input.clusterId,
    node: { id: input.nodeId, name: input.nodeName, addresses: memberAddresses(input.addresses), site: input.site ?? '' },
    adminToken: { id: input.adminTokenId ?? randomUUID(), name: adminTokenName, secretHash: input.adminTokenHash },
  };
}
