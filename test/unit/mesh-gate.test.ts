// Proves the membership gate with two real in-process libp2p nodes: a non-member's cluster-protocol stream is reset before any data is read and logged with its peer id; after a join token admits it, the same request succeeds.
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { memory } from '@libp2p/memory';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Mesh, MeshStreamRefusedError, infoProtocol, silentLogger, type MeshConfig, type MeshLogger } from '../../mesh/index.js';
import { removeTempDirs, tempDir } from '../support/tmp.js';

afterAll(removeTempDirs);

const meshes: Mesh[] = [];
afterEach(async () => {
  await Promise.all(meshes.splice(0).map((m) => m.stop()));
});

function config(): MeshConfig {
  return {
    listen: [`/memory/${randomUUID()}`],
    announce: [],
    bootstrap: [],
    mdns: false,
    relay: { enabled: false, reserve: false, maxReservations: 4, reservationTtlMs: 60_000, dataLimitBytes: 1 << 20, durationLimitMs: 60_000 },
    members: [],
    telemetryIntervalMs: 200,
    telemetryTtlMs: 0,
    maxConnections: 32,
  };
}

function recordingLogger(lines: Array<Record<string, unknown>>): MeshLogger {
  const log: MeshLogger = {
    ...silentLogger,
    warn: (obj: Record<string, unknown> | string, msg?: string) => {
      lines.push(typeof obj === 'string' ? { msg: obj } : { ...obj, msg });
    },
    child: () => log,
  };
  return log;
}

async function makeMesh(name: string, logger: MeshLogger = silentLogger): Promise<Mesh> {
  const dir = tempDir('nc-mesh-');
  const m = await Mesh.create({ config: config(), identityDir: join(dir, 'identity'), dataDir: dir, nodeName: name, version: 'test', logger, transports: [memory()] });
  meshes.push(m);
  await m.start();
  return m;
}

const validateInfo = (v: unknown): { nodeId: string } => {
  if (typeof v !== 'object' || v === null || typeof (v as { nodeId?: unknown }).nodeId !== 'string') throw new Error('bad info');
  return v as { nodeId: string };
};

describe('membership gate', () => {
  it('refuses a non-member, then admits it through a join token', async () => {
    const warnings: Array<Record<string, unknown>> = [];
    const a = await makeMesh('a', recordingLogger(warnings));
    const b = await makeMesh('b');
    await b.libp2p.dial(a.libp2p.getMultiaddrs()[0]!);

    const refused = b.protocols.request(a.peerId, infoProtocol, {}, { validate: validateInfo, timeoutMs: 5000 });
    await expect(refused).rejects.toBeInstanceOf(MeshStreamRefusedError);
    expect(a.protocols.refusals.get(infoProtocol)).toBe(1);
    expect(warnings.some((w) => w.peer === b.peerId && w.protocol === infoProtocol)).toBe(true);

    const { token } = a.createJoinToken(60_000);
    const joined = await b.join(token);
    expect(joined.clusterId).toBe(a.membership.clusterId);
    expect(a.gate.isMember(b.peerId)).toBe(true);
    expect(b.gate.isMember(a.peerId)).toBe(true);
    const info = await b.protocols.request(a.peerId, infoProtocol, {}, { validate: validateInfo, timeoutMs: 5000 });
    expect(info.nodeId).toBe(a.peerId);
  });
});
