// Configuration defaults of the mesh, in a module without libp2p imports so that loading the config
// (every CLI command does) stays cheap.
import type { MeshConfig } from './mesh.js';
export const meshListenDefault: readonly string[] = ['/ip4/0.0.0.0/tcp/8781'];
export const maxConnectionsDefault = 256;
export const telemetryIntervalMsDefault = 2000;
export const relayMaxReservationsDefault = 16;
export const relayReservationTtlMsDefault = 60 * 60 * 1000;
export const relayDataLimitBytesDefault = 64 * 1024 * 1024;
export const relayDurationLimitMsDefault = 10 * 60 * 1000;

/**
 * A mesh config for several nodes on one host (benchmarks, tests): loopback with an ephemeral port, no
 * mDNS, no relay. The type import is erased, so this module still loads without libp2p.
 */
export function singleHostMeshConfig(overrides: Partial<MeshConfig> = {}): MeshConfig {
  return {
    listen: ['/ip4/127.0.0.1/tcp/0'],
    announce: [],
    bootstrap: [],
    mdns: false,
    members: [],
    telemetryIntervalMs: telemetryIntervalMsDefault,
    telemetryTtlMs: 0,
    maxConnections: maxConnectionsDefault,
    relay: { enabled: false, reserve: false, maxReservations: 1, reservationTtlMs: 60_000, dataLimitBytes: 1 << 20, durationLimitMs: 60_000 },
    ...overrides,
  };
}
