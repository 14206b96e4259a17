// Cluster commands: the TypeBox schema of every command, the validator (used at propose time and again at
// apply, so a malformed entry that reaches the log is refused harmlessly), and the byte encoding in the log.
// Commands carry everything apply needs, including the time (`at`, stamped by the proposer) and ids: apply
// never reads a clock or a random source, so every replica computes the same state.
import Type, { type Static, type TSchema } from 'typebox';
import Value from 'typebox/value';
import { ClusterError } from './errors.js';

/** Largest encoded command accepted; a VM spec with many disks fits easily. */
export const commandBytesMax = 64 * 1024;
export const addressesPerMemberMax = 32;
export const disksPerVmMax = 16;
export const nicsPerVmMax = 8;

/** libp2p peer ids (base58btc). */
export const NodeIdSchema = Type.String({ minLength: 1, maxLength: 128, pattern: '^[1-9A-HJ-NP-Za-km-z]+$' });
/** Ids chosen by the proposer (UUIDs in practice). */
export const RecordIdSchema = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]*$' });
/** Hex SHA-256: image ids and the hashes of token secrets. */
export const Sha256Schema = Type.String({ pattern: '^[0-9a-f]{64}$' });
/** A DNS-label-like name, so it is safe in URLs, file names and QEMU arguments. */
export const NameSchema = Type.String({ minLength: 1, maxLength: 63, pattern: '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$' });
const LabelSchema = Type.String({ maxLength: 63 });
const TimeMsSchema = Type.Integer({ minimum: 0 });
const VersionSchema = Type.Integer({ minimum: 1 });

export const MemberRoleSchema = Type.Union([Type.Literal('voter'), Type.Literal('learner')]);
export const MemberStatusSchema = Type.Union([Type.Literal('active'), Type.Literal('draining'), Type.Literal('unreachable')]);
export const ApiRoleSchema = Type.Union([Type.Literal('admin'), Type.Literal('operator'), Type.Literal('viewer')]);
export const PowerStateSchema = Type.Union([Type.Literal('running'), Type.Literal('stopped'), Type.Literal('paused')]);
export const ObservedStateSchema = Type.Union([
  Type.Literal('creating'),
  Type.Literal('running'),
  Type.Literal('stopped'),
  Type.Literal('paused'),
  Type.Literal('migrating'),
  Type.Literal('error'),
  Type.Literal('unknown'),
]);
export const MigrationPhaseSchema = Type.Union([
  Type.Literal('requested'),
  Type.Literal('preparing'),
  Type.Literal('transferring'),
  Type.Literal('switching'),
  Type.Literal('completed'),
  Type.Literal('failed'),
  Type.Literal('cancelled'),
]);

export const ActorSchema = Type.Object(
  {
    /** `token`: an API caller (id of its token); `node`: an agent or the leader's scheduler (peer id); `system`: bootstrap. */
    kind: Type.Union([Type.Literal('token'), Type.Literal('node'), Type.Literal('system')]),
    id: Type.String({ minLength: 1, maxLength: 128 }),
    name: Type.Optional(Type.String({ maxLength: 128 })),
  },
  { additionalProperties: false },
);

const MemberInputSchema = Type.Object(
  {
    id: NodeIdSchema,
    name: NameSchema,
    addresses: Type.Array(Type.String({ minLength: 1, maxLength: 512 }), { maxItems: addressesPerMemberMax }),
    site: LabelSchema,
  },
  { additionalProperties: false },
);

export const VmSpecSchema = Type.Object(
  {
    vcpus: Type.Integer({ minimum: 1, maximum: 1024 }),
    memoryMiB: Type.Integer({ minimum: 16, maximum: 16 * 1024 * 1024 }),
    disks: Type.Array(
      Type.Object({ imageId: Type.Optional(Sha256Schema), sizeGiB: Type.Integer({ minimum: 1, maximum: 65_536 }) }, { additionalProperties: false }),
      { maxItems: disksPerVmMax },
    ),
    nics: Type.Array(
      Type.Object(
        {
          model: Type.Union([Type.Literal('virtio-net-pci'), Type.Literal('e1000')]),
          mac: Type.Optional(Type.String({ pattern: '^[0-9a-f]{2}(:[0-9a-f]{2}){5}$' })),
        },
        { additionalProperties: false },
      ),
      { maxItems: nicsPerVmMax },
    ),
    kernel: Type.Optional(Type.String({ minLength: 1, maxLength: 1024 })),
    initrd: Type.Optional(Type.String({ minLength: 1, maxLength: 1024 })),
    cmdline: Type.Optional(Type.String({ maxLength: 4096 })),
  },
  { additionalProperties: false },
);

/** Figures of a migration in flight, written by the source node as it goes (at most about once a second). */
export const MigrationProgressSchema = Type.Object(
  {
    /** What is happening inside the phase, for people (e.g. "mirroring disks", "RAM pass 3", "waiting for the target"). */
    step: Type.Optional(Type.String({ maxLength: 256 })),
    /** Guest bytes to move (RAM + disks) and moved so far, before compression. */
    bytesTotal: Type.Optional(Type.Integer({ minimum: 0 })),
    bytesTransferred: Type.Optional(Type.Integer({ minimum: 0 })),
    bytesRemaining: Type.Optional(Type.Integer({ minimum: 0 })),
    diskBytesTotal: Type.Optional(Type.Integer({ minimum: 0 })),
    diskBytesTransferred: Type.Optional(Type.Integer({ minimum: 0 })),
    /** Bytes sent on the link (after compression and framing), and raw / wire. */
    wireBytes: Type.Optional(Type.Integer({ minimum: 0 })),
    ratio: Type.Optional(Type.Number({ minimum: 0 })),
    /** Raw and on-the-wire rates over the last interval. */
    rateBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
    wireRateBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
    dirtyRateBytesPerSec: Type.Optional(Type.Number({ minimum: 0 })),
    /** The zstd level in use (0 = sent raw). */
    compressionLevel: Type.Optional(Type.Integer({ minimum: 0, maximum: 22 })),
    /** The convergence prediction: will pre-copy finish within the downtime limit, and roughly when. */
    converging: Type.Optional(Type.Boolean()),
    predictedRemainingMs: Type.Optional(Type.Number({ minimum: 0 })),
    expectedDowntimeMs: Type.Optional(Type.Number({ minimum: 0 })),
    /** Auto-converge's current guest CPU throttle. */
    cpuThrottlePercent: Type.Optional(Type.Integer({ minimum: 0, maximum: 100 })),
    postcopy: Type.Optional(Type.Boolean()),
    /** Set once finished: the measured pause of the guest (source stop to target run) and the whole duration. */
    downtimeMs: Type.Optional(Type.Number({ minimum: 0 })),
    durationMs: Type.Optional(Type.Number({ minimum: 0 })),
  },
  { additionalProperties: false },
);

/** How a migration runs; the API fills in every default, so the record says exactly what was asked. */
export const MigrationOptionsSchema = Type.Object(
  {
    /** Longest pause of the guest at switch-over that pre-copy aims for (QEMU downtime-limit). */
    downtimeLimitMs: Type.Integer({ minimum: 1, maximum: 60_000 }),
    /** A migration not finished this long after it started transferring is cancelled; the VM stays on the source. */
    deadlineMs: Type.Integer({ minimum: 1_000, maximum: 24 * 3600 * 1000 }),
    /** Let QEMU throttle the guest's vCPUs when pre-copy does not converge. */
    autoConverge: Type.Boolean(),
    /** Opt-in last resort: switch to post-copy when pre-copy cannot converge (a link failure then loses the VM). */
    postcopy: Type.Boolean(),
    /** Cap on the link bytes this migration sends per second; null = none (the node's own cap still applies). */
    maxBandwidthBytesPerSec: Type.Union([Type.Integer({ minimum: 1 }), Type.Null()]),
    /** `adaptive`: the controller picks the zstd level as the link changes; `off`: raw; a number: that level always. */
    compression: Type.Union([Type.Literal('adaptive'), Type.Literal('off'), Type.Integer({ minimum: 1, maximum: 19 })]),
  },
  { additionalProperties: false },
);

export const SettingsSchema = Type.Object(
  {
    /** Most voters the leader keeps: it keeps 3, or 5 once there are at least 5 members, up to this; every other member is a learner. */
    desiredVoters: Type.Union([Type.Literal(1), Type.Literal(3), Type.Literal(5)]),
    /** A voter unreachable this long is replaced by a healthy learner. */
    voterReplaceAfterMs: Type.Integer({ minimum: 1_000, maximum: 24 * 3600 * 1000 }),
  },
  { additionalProperties: false },
);

/** Builds one command schema: the common envelope (`type`, `at`, `actor`, `from`) plus its own fields. */
function command<T extends string, P extends Record<string, TSchema>>(type: T, props: P) {
  return Type.Object(
    {
      type: Type.Literal(type),
      /** Proposer's wall clock, ms since the epoch: the only time apply uses. */
      at: TimeMsSchema,
      actor: ActorSchema,
      /** The client address the change came from (audit), or null for node-internal changes. */
      from: Type.Union([Type.String({ maxLength: 256 }), Type.Null()]),
      ...props,
    },
    { additionalProperties: false },
  );
}

export const commandSchemas = {
  'cluster.init': command('cluster.init', {
    clusterId: RecordIdSchema,
    /** The first node, a voter. */
    node: MemberInputSchema,
    /** The first admin token: only the hash of its secret ever enters the log. */
    adminToken: Type.Object({ id: RecordIdSchema, name: Type.String({ minLength: 1, maxLength: 128 }), secretHash: Sha256Schema }, { additionalProperties: false }),
    settings: Type.Optional(Type.Partial(SettingsSchema)),
  }),
  'member.add': command('member.add', { node: MemberInputSchema, role: MemberRoleSchema }),
  'member.setRole': command('member.setRole', { id: NodeIdSchema, role: MemberRoleSchema }),
  'member.remove': command('member.remove', { id: NodeIdSchema }),
  'member.update': command('member.update', {
    id: NodeIdSchema,
    name: Type.Optional(NameSchema),
    addresses: Type.Optional(MemberInputSchema.properties.addresses),
    site: Type.Optional(LabelSchema),
    status: Type.Optional(MemberStatusSchema),
  }),
  'vm.create': command('vm.create', {
    id: RecordIdSchema,
    name: NameSchema,
    spec: VmSpecSchema,
    desired: PowerStateSchema,
    owner: Type.Union([NodeIdSchema, Type.Null()]),
  }),
  'vm.update': command('vm.update', { id: RecordIdSchema, expectedVersion: VersionSchema, name: Type.Optional(NameSchema), spec: Type.Optional(VmSpecSchema) }),
  'vm.setDesired': command('vm.setDesired', { id: RecordIdSchema, desired: PowerStateSchema, expectedVersion: Type.Optional(VersionSchema) }),
  'vm.setObserved': command('vm.setObserved', { id: RecordIdSchema, state: ObservedStateSchema, reason: Type.String({ maxLength: 1024 }) }),
  'vm.setOwner': command('vm.setOwner', { id: RecordIdSchema, owner: Type.Union([NodeIdSchema, Type.Null()]), expectedVersion: Type.Optional(VersionSchema) }),
  'vm.delete': command('vm.delete', { id: RecordIdSchema, expectedVersion: Type.Optional(VersionSchema) }),
  'image.add': command('image.add', { id: Sha256Schema, name: Type.String({ minLength: 1, maxLength: 255 }), sizeBytes: Type.Integer({ minimum: 0 }), node: NodeIdSchema }),
  /** With `node`: that node no longer holds the image; without: the image is forgotten (refused while a VM uses it). */
  'image.remove': command('image.remove', { id: Sha256Schema, node: Type.Optional(NodeIdSchema) }),
  'migration.create': command('migration.create', { id: RecordIdSchema, vm: RecordIdSchema, target: NodeIdSchema, options: MigrationOptionsSchema }),
  'migration.advance': command('migration.advance', {
    id: RecordIdSchema,
    phase: MigrationPhaseSchema,
    reason: Type.Optional(Type.String({ maxLength: 1024 })),
    progress: Type.Optional(MigrationProgressSchema),
  }),
  'token.create': command('token.create', { id: RecordIdSchema, name: Type.String({ minLength: 1, maxLength: 128 }), role: ApiRoleSchema, secretHash: Sha256Schema }),
  'token.revoke': command('token.revoke', { id: RecordIdSchema }),
  'joinToken.create': command('joinToken.create', { id: RecordIdSchema, secretHash: Sha256Schema, expiresAt: TimeMsSchema }),
  /** Redeems a join token for `node` and adds it as a learner, atomically (a retry by the same node succeeds). */
  'joinToken.use': command('joinToken.use', { id: RecordIdSchema, secretHash: Sha256Schema, node: MemberInputSchema }),
  'joinToken.revoke': command('joinToken.revoke', { id: RecordIdSchema }),
  'settings.update': command('settings.update', { settings: Type.Partial(SettingsSchema) }),
} as const;

export type CommandType = keyof typeof commandSchemas;
export type CommandOf<T extends CommandType> = Static<(typeof commandSchemas)[T]>;
export type ClusterCommand = { [T in CommandType]: CommandOf<T> }[CommandType];
export type Actor = Static<typeof ActorSchema>;
export type MemberInput = Static<typeof MemberInputSchema>;
export type VmSpec = Static<typeof VmSpecSchema>;
export type MigrationProgress = Static<typeof MigrationProgressSchema>;
export type MigrationOptions = Static<typeof MigrationOptionsSchema>;

/** What the API fills in for options a caller leaves out (QEMU's own downtime-limit default is 300 ms too). */
export const migrationOptionsDefault: Readonly<MigrationOptions> = {
  downtimeLimitMs: 300,
  deadlineMs: 10 * 60_000,
  autoConverge: true,
  postcopy: false,
  maxBandwidthBytesPerSec: null,
  compression: 'adaptive',
};
export type Settings = Static<typeof SettingsSchema>;
export type MemberRole = Static<typeof MemberRoleSchema>;
export type MemberStatus = Static<typeof MemberStatusSchema>;
export type ApiRole = Static<typeof ApiRoleSchema>;
export type PowerState = Static<typeof PowerStateSchema>;
export type ObservedState = Static<typeof ObservedStateSchema>;
export type MigrationPhase = Static<typeof MigrationPhaseSchema>;

export const commandTypes = Object.keys(commandSchemas) as CommandType[];

function isCommandType(t: unknown): t is CommandType {
  return typeof t === 'string' && Object.hasOwn(commandSchemas, t);
}

/** Checks a decoded value against its command's schema; throws ClusterError('command_invalid') naming the first problem. */
export function validateCommand(value: unknown): ClusterCommand {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ClusterError('command_invalid', 'a command must be a JSON object');
  const type = (value as { type?: unknown }).type;
  if (!isCommandType(type)) throw new ClusterError('command_invalid', `unknown command type ${JSON.stringify(type)?.slice(0, 80) ?? 'undefined'}`);
  const schema = commandSchemas[type];
  if (!Value.Check(schema, value)) {
    const first = [...Value.Errors(schema, value)][0];
    const where = first === undefined ? '' : `${first.instancePath || '/'}: ${first.message}`;
    throw new ClusterError('command_invalid', `invalid ${type} command${where === '' ? '' : ` (${where})`}`, { type });
  }
  return value;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Validates and encodes a command for Raft; refusing here (propose time) keeps malformed commands out of the log. */
export function encodeCommand(cmd: ClusterCommand): Uint8Array {
  validateCommand(cmd);
  const bytes = encoder.encode(JSON.stringify(cmd));
  if (bytes.byteLength > commandBytesMax) throw new ClusterError('command_invalid', `command is ${bytes.byteLength} bytes > ${commandBytesMax}`);
  return bytes;
}

/** Decodes and validates log bytes; anything malformed is a ClusterError, never a crash. */
export function decodeCommand(bytes: Uint8Array): ClusterCommand {
  if (bytes.byteLength > commandBytesMax) throw new ClusterError('command_invalid', `command is ${bytes.byteLength} bytes > ${commandBytesMax}`);
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(bytes)) as unknown;
  } catch (err) {
    throw new ClusterError('command_invalid', `command is not JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  return validateCommand(value);
}
