// The one schema for the node's configuration: file, environment and flags are all validated against it.
import { hostname } from 'node:os';
import Type, { type Static } from 'typebox';
import {
  maxConnectionsDefault,
  meshListenDefault,
  relayDataLimitBytesDefault,
  relayDurationLimitMsDefault,
  relayMaxReservationsDefault,
  relayReservationTtlMsDefault,
  telemetryIntervalMsDefault,
} from '../../mesh/defaults.js';
import {
  compactionKeepEntriesDefault,
  proposalTimeoutMsDefault,
  readTimeoutMsDefault,
  snapshotEveryEntriesDefault,
  tickIntervalMsDefault,
} from '../../consensus/driver.js';
import { DEFAULT_HEARTBEAT_INTERVAL_TICKS } from '../../consensus/core/raft.js';

export const apiPortDefault = 8780;
export const bodyLimitBytesDefault = 1024 * 1024;
export const shutdownTimeoutMsDefault = 10_000;
/**
 * Followers campaign after [8, 16) ticks of 100 ms without a leader: a new leader serves writes within ~2 s of the
 * old one dying, while a 100–300 ms WAN RTT still fits several heartbeats into one timeout.
 */
export const electionTimeoutTicksDefault = 8;
export const logFileMaxBytesDefault = 50 * 1024 * 1024;
/** Upper bound of migration.maxConcurrent: each migration holds a QEMU stream, NBD exports and mesh streams. */
export const migrationsConcurrentMax = 16;
export const migrationMaxConcurrentDefault = 2;

const LogLevel = Type.Union(
  [Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'), Type.Literal('info'), Type.Literal('debug'), Type.Literal('trace')],
  { description: 'Minimum level of log records written.' },
);

export const NodeConfigSchema = Type.Object(
  {
    dataDir: Type.String({
      minLength: 1,
      description: 'Directory holding identity, Raft log, images, VM disks, sockets and logs.',
    }),
    node: Type.Object(
      {
        name: Type.String({
          minLength: 1,
          maxLength: 63,
          pattern: '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$',
          description: 'Human name of this node (a DNS label); defaults to the host name.',
        }),
      },
      { additionalProperties: false },
    ),
    api: Type.Object(
      {
        host: Type.String({ minLength: 1, description: 'Address the REST API and web UI listen on.' }),
        port: Type.Integer({ minimum: 0, maximum: 65535, description: 'TCP port of the REST API and web UI (0 picks a free one).' }),
        bodyLimitBytes: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, description: 'Largest accepted request body.' }),
      },
      { additionalProperties: false },
    ),
    log: Type.Object(
      {
        level: LogLevel,
        file: Type.Boolean({ description: 'Also write logs to <dataDir>/logs/node.log (rotated).' }),
        fileMaxBytes: Type.Integer({ minimum: 64 * 1024, description: 'Size at which node.log is rotated to node.log.1.' }),
      },
      { additionalProperties: false },
    ),
    shutdown: Type.Object(
      {
        timeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, description: 'Longest graceful shutdown before the process exits anyway.' }),
      },
      { additionalProperties: false },
    ),
    hypervisor: Type.Object(
      {
        qemuBinary: Type.String({ minLength: 1, description: 'QEMU system emulator to run VMs with.' }),
        // The agent's accelerator (node/hypervisor/accel.ts chooseAccel).
        accel: Type.Union([Type.Literal('auto'), Type.Literal('kvm'), Type.Literal('tcg')], {
          description: 'VM accelerator: auto probes whether a KVM guest really runs (else TCG); kvm or tcg force one.',
        }),
      },
      { additionalProperties: false },
    ),
    mesh: Type.Object(
      {
        listen: Type.Array(Type.String({ minLength: 1 }), { description: 'libp2p multiaddrs the mesh listens on.' }),
        announce: Type.Array(Type.String({ minLength: 1 }), { description: 'Multiaddrs announced to peers instead of the listen addresses (e.g. a public address).' }),
        bootstrap: Type.Array(Type.String({ minLength: 1 }), { description: 'Multiaddrs (with /p2p/<peer id>) dialled at start; a join token adds its own.' }),
        mdns: Type.Boolean({ description: 'Discover peers on the LAN with mDNS.' }),
        relay: Type.Object(
          {
            enabled: Type.Boolean({ description: 'Act as a bounded circuit relay v2 for nodes without a reachable address.' }),
            reserve: Type.Boolean({ description: 'Reserve a slot on a relay among connected peers and advertise the circuit address (for a node behind NAT).' }),
            maxReservations: Type.Integer({ minimum: 0, maximum: 4096, description: 'Relay reservations this node serves at once.' }),
            reservationTtlMs: Type.Integer({ minimum: 1000, description: 'Lifetime of a relay reservation before it must be renewed.' }),
            dataLimitBytes: Type.Integer({ minimum: 1024, description: 'Bytes one relayed connection may carry in each direction before it is closed.' }),
            durationLimitMs: Type.Integer({ minimum: 1000, description: 'Longest lifetime of one relayed connection.' }),
          },
          { additionalProperties: false },
        ),
        members: Type.Array(Type.String({ minLength: 1 }), { description: 'Peer IDs allowed to speak cluster protocols, besides peers admitted by join tokens.' }),
        telemetryIntervalMs: Type.Integer({ minimum: 50, maximum: 600_000, description: 'How often this node publishes its telemetry sample.' }),
        telemetryTtlMs: Type.Integer({ minimum: 0, description: 'A node silent this long is unreachable in the view; 0 = 3 x interval + 1 s.' }),
        maxConnections: Type.Integer({ minimum: 1, maximum: 100_000, description: 'Most libp2p connections this node keeps open.' }),
      },
      { additionalProperties: false },
    ),
    migration: Type.Object(
      {
        maxBandwidthBytesPerSec: Type.Integer({
          minimum: 0,
          description: 'Cap on the link bytes all live migrations of this node send per second together (shared by every migration out of it); 0 = no cap.',
        }),
        maxConcurrent: Type.Integer({
          minimum: 1,
          maximum: migrationsConcurrentMax,
          description: 'Live migrations this node drives as source at once; more wait their turn in the requested phase.',
        }),
      },
      { additionalProperties: false },
    ),
    raft: Type.Object(
      {
        tickIntervalMs: Type.Integer({ minimum: 5, maximum: 10_000, description: 'Length of one Raft tick (the unit of election and heartbeat timeouts).' }),
        electionTimeoutTicks: Type.Integer({
          minimum: 2,
          maximum: 1_000,
          description: 'Followers campaign after a random [1x, 2x) this many ticks without a leader; also the check-quorum period. Must exceed heartbeatIntervalTicks.',
        }),
        heartbeatIntervalTicks: Type.Integer({ minimum: 1, maximum: 500, description: 'Ticks between leader heartbeats.' }),
        proposalTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, description: 'A write not applied within this is refused as having no quorum (503).' }),
        readTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, description: 'A linearizable read without a read point within this is refused (503).' }),
        snapshotEveryEntries: Type.Integer({ minimum: 1, description: 'Snapshot the cluster state and compact the log after this many applied entries.' }),
        compactionKeepEntries: Type.Integer({ minimum: 0, description: 'Entries kept below a snapshot so lagging followers catch up from the log.' }),
        initLeaderTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, description: '`cluster init` waits this long for this node to become the leader of its new one-voter cluster.' }),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);

export type NodeConfig = Static<typeof NodeConfigSchema>;

/** Defaults, applied under whatever the file, environment and flags set. */
export function configDefaults(): NodeConfig {
  return {
    dataDir: process.env.SNAP_COMMON !== undefined ? `${process.env.SNAP_COMMON}/data` : '/var/lib/novacron',
    node: { name: sanitizeHostname(hostname()) },
    api: { host: '0.0.0.0', port: apiPortDefault, bodyLimitBytes: bodyLimitBytesDefault },
    log: { level: 'info', file: false, fileMaxBytes: logFileMaxBytesDefault },
    shutdown: { timeoutMs: shutdownTimeoutMsDefault },
    hypervisor: { qemuBinary: 'qemu-system-x86_64', accel: 'auto' },
    mesh: {
      listen: [...meshListenDefault],
      announce: [],
      bootstrap: [],
      mdns: true,
      relay: {
        enabled: true,
        reserve: false,
        maxReservations: relayMaxReservationsDefault,
        reservationTtlMs: relayReservationTtlMsDefault,
        dataLimitBytes: relayDataLimitBytesDefault,
        durationLimitMs: relayDurationLimitMsDefault,
      },
      members: [],
      telemetryIntervalMs: telemetryIntervalMsDefault,
      telemetryTtlMs: 0,
      maxConnections: maxConnectionsDefault,
    },
    migration: { maxBandwidthBytesPerSec: 0, maxConcurrent: migrationMaxConcurrentDefault },
    raft: {
      tickIntervalMs: tickIntervalMsDefault,
      electionTimeoutTicks: electionTimeoutTicksDefault,
      heartbeatIntervalTicks: DEFAULT_HEARTBEAT_INTERVAL_TICKS,
      proposalTimeoutMs: proposalTimeoutMsDefault,
      readTimeoutMs: readTimeoutMsDefault,
      snapshotEveryEntries: snapshotEveryEntriesDefault,
      compactionKeepEntries: compactionKeepEntriesDefault,
      initLeaderTimeoutMs: 10_000,
    },
  };
}

function sanitizeHostname(name: string): string {
  const label = name.split('.')[0]?.replace(/[^A-Za-z0-9-]/g, '-').replace(/^-+|-+$/g, '').slice(0, 63) ?? '';
  return label === '' ? 'node' : label;
}
