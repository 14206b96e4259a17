// Configuration defaults of the mesh, in a module without libp2p imports so that loading the config
// (every CLI command does) stays cheap.
export const meshListenDefault: readonly string[] = ['/ip4/0.0.0.0/tcp/8781'];
export const maxConnectionsDefault = 256;
export const telemetryIntervalMsDefault = 2000;
export const relayMaxReservationsDefault = 16;
export const relayReservationTtlMsDefault = 60 * 60 * 1000;
export const relayDataLimitBytesDefault = 64 * 1024 * 1024;
export const relayDurationLimitMsDefault = 10 * 60 * 1000;
