// Snapshot format of the cluster state: `{ format, schemaVersion, state }` as JSON. A snapshot written by an
// older release is migrated step by step (`schemaMigrations[v]` turns version v into v + 1); one written by a
// newer release is refused, since this code cannot know what its fields mean.
import { ClusterError } from './errors.js';
import type { ApiTokenRecord, AuditRecord, Image, JoinTokenRecord, Member, Migration, Settings, Vm } from './records.js';

export const snapshotFormat = 'novacron.cluster-state';
/** Bump with a migration in `schemaMigrations` whenever the persisted shape changes. */
export const clusterSchemaVersion = 1;

/** The whole state as persisted, records sorted by id, audit oldest first. */
export interface StateData {
  clusterId: string | null;
  settings: Settings;
  members: readonly Member[];
  vms: readonly Vm[];
  images: readonly Image[];
  migrations: readonly Migration[];
  apiTokens: readonly ApiTokenRecord[];
  joinTokens: readonly JoinTokenRecord[];
  audit: readonly AuditRecord[];
  auditNextSeq: number;
}

type Json = Record<string, unknown>;

/**
 * Upgrades from version v to v + 1. Version 0 is the pre-release layout (no settings, no site labels, no join
 * tokens, the audit log under `auditLog`); it has no users but keeps the path exercised by tests.
 */
export const schemaMigrations: Readonly<Record<number, (state: Json) => Json>> = {
  0: (s) => {
    const { auditLog, ...rest } = s;
    const members = Array.isArray(s.members) ? (s.members as Json[]).map((m) => ({ ...m, site: typeof m.site === 'string' ? m.site : '' })) : [];
    const audit = Array.isArray(auditLog) ? (auditLog as unknown[]) : [];
    return {
      ...rest,
      settings: { desiredVoters: 3, voterReplaceAfterMs: 30_000 },
      members,
      joinTokens: [],
      audit,
      auditNextSeq: audit.length + 1,
    };
  },
};

/** Migrates persisted state from `fromVersion` to the current schema version. */
export function migrate(fromVersion: number, state: Json): Json {
  let s = state;
  for (let v = fromVersion; v < clusterSchemaVersion; v++) {
    const step = schemaMigrations[v];
    if (step === undefined) throw new ClusterError('snapshot_invalid', `no migration from cluster schema version ${v}`);
    s = step(s);
  }
  return s;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export function encodeSnapshot(state: StateData): Uint8Array {
  return encoder.encode(JSON.stringify({ format: snapshotFormat, schemaVersion: clusterSchemaVersion, state }));
}

const stateKeys: readonly (keyof StateData)[] = ['members', 'vms', 'images', 'migrations', 'apiTokens', 'joinTokens', 'audit'];

export function decodeSnapshot(data: Uint8Array): StateData {
  let doc: unknown;
  try {
    doc = JSON.parse(decoder.decode(data)) as unknown;
  } catch (err) {
    throw new ClusterError('snapshot_invalid', `cluster snapshot is not JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (typeof doc !== 'object' || doc === null) throw new ClusterError('snapshot_invalid', 'cluster snapshot is not an object');
  const { format, schemaVersion, state } = doc as Json;
  if (format !== snapshotFormat) throw new ClusterError('snapshot_invalid', `not a cluster snapshot (format ${JSON.stringify(format)})`);
  if (typeof schemaVersion !== 'number' || !Number.isInteger(schemaVersion) || schemaVersion < 0) {
    throw new ClusterError('snapshot_invalid', `bad cluster schema version ${JSON.stringify(schemaVersion)}`);
  }
  if (schemaVersion > clusterSchemaVersion) {
    throw new ClusterError(
      'snapshot_invalid',
      `cluster snapshot has schema version ${schemaVersion}, newer than this release understands (${clusterSchemaVersion}); upgrade this node`,
      { schemaVersion, supported: clusterSchemaVersion },
    );
  }
  if (typeof state !== 'object' || state === null) throw new ClusterError('snapshot_invalid', 'cluster snapshot has no state');
  const s = migrate(schemaVersion, state as Json);
  // A shallow shape check: snapshots come from our own replicas through checksummed storage, so this guards
  // against version skew and bugs, not against an adversary.
  for (const k of stateKeys) if (!Array.isArray(s[k])) throw new ClusterError('snapshot_invalid', `cluster snapshot: ${k} is not a list`);
  if (typeof s.auditNextSeq !== 'number' || typeof s.settings !== 'object' || s.settings === null) throw new ClusterError('snapshot_invalid', 'cluster snapshot: bad settings or audit sequence');
  if (s.clusterId !== null && typeof s.clusterId !== 'string') throw new ClusterError('snapshot_invalid', 'cluster snapshot: bad cluster id');
  return s as unknown as StateData;
}
