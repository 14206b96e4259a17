// The records of the cluster state, as the read API hands them out: plain, deeply frozen data.
import type { Actor, ApiRole, MemberRole, MemberStatus, MigrationOptions, MigrationPhase, MigrationProgress, ObservedState, PowerState, Settings, VmSpec } from './commands.js';

export interface Member {
  /** libp2p peer id. */
  readonly id: string;
  readonly name: string;
  readonly role: MemberRole;
  readonly addresses: readonly string[];
  /** Free-form site label; voters are spread over distinct sites. */
  readonly site: string;
  readonly joinedAt: number;
  readonly status: MemberStatus;
}

export interface VmObserved {
  readonly state: ObservedState;
  readonly reason: string;
  /** Time of the agent's report (the command's `at`). */
  readonly at: number;
}

export interface Vm {
  readonly id: string;
  readonly name: string;
  readonly spec: Readonly<VmSpec>;
  readonly desired: PowerState;
  /** The node that runs it; null until the scheduler places it. */
  readonly owner: string | null;
  readonly observed: VmObserved | null;
  readonly createdAt: number;
  readonly updatedAt: number;
  /** Bumped by every change of name, spec, desired state or owner (not by observed-state reports). */
  readonly version: number;
}

export interface Image {
  /** Hex SHA-256 of the image content. */
  readonly id: string;
  readonly name: string;
  readonly sizeBytes: number;
  /** Members holding a copy, sorted. */
  readonly nodes: readonly string[];
  readonly addedAt: number;
}

export interface Migration {
  readonly id: string;
  readonly vm: string;
  readonly source: string;
  readonly target: string;
  readonly options: Readonly<MigrationOptions>;
  readonly phase: MigrationPhase;
  readonly reason: string | null;
  readonly progress: Readonly<MigrationProgress>;
  readonly createdAt: number;
  readonly updatedAt: number;
  readonly finishedAt: number | null;
}

export interface ApiTokenRecord {
  readonly id: string;
  readonly name: string;
  readonly role: ApiRole;
  /** Hex SHA-256 of the secret; the secret itself is never in the log or the state. */
  readonly secretHash: string;
  readonly createdAt: number;
  readonly revokedAt: number | null;
}

/** An API token as the read API shows it: without the hash. */
export type ApiToken = Omit<ApiTokenRecord, 'secretHash'>;

export interface JoinTokenRecord {
  readonly id: string;
  readonly secretHash: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly usedBy: string | null;
  readonly usedAt: number | null;
  readonly revokedAt: number | null;
}

export type JoinToken = Omit<JoinTokenRecord, 'secretHash'>;

export interface AuditRecord {
  /** Contiguous from 1; survives the ring dropping old records, so readers can page and detect gaps. */
  readonly seq: number;
  readonly at: number;
  readonly actor: Readonly<Actor>;
  /** The command type, e.g. `vm.create`. */
  readonly action: string;
  /** The id of the record changed (VM id, node id, token id…), or the cluster id. */
  readonly target: string;
  readonly from: string | null;
  /** `refused`: the command reached the log but apply refused it (nothing changed); `error` says why. */
  readonly outcome: 'ok' | 'refused';
  /** The refusal's error code (e.g. `conflict`, `join_token_used`); only with outcome `refused`. */
  readonly error?: string;
}

export type { Settings };

/** Defaults a new cluster starts with (cluster.init may override them). */
export const settingsDefault: Settings = { desiredVoters: 5, voterReplaceAfterMs: 30_000 };
