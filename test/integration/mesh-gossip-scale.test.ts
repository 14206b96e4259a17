// Regression tests for the 20-node telemetry failure. 16 in-process nodes on loopback TCP (so every peer shares
// 127.0.0.1, as nodes behind one NAT or one relay do) join through one node and every view converges to all 16,
// with no peer graylisted by gossipsub's score (the default IP colocation penalty gave each peer -125 at this
// size and no telemetry flowed). And the link model's RTT pings no longer share /ipfs/ping/1.0.0 with libp2p's
// connection monitor, whose heartbeat failed on the ping protocol's one-outbound-stream limit and aborted the
// connection.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { memory } from '@libp2p/memory';
import { afterEach, describe, expect, it } from 'vitest';
import { Mesh, linkPingProtocolPrefix, silentLogger, type MeshConfig } from '../../mesh/index.js';

const meshes: Mesh[] = [];
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(meshes.splice(0).map((m) => m.stop()));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function config(listen: string, telemetryIntervalMs: number): MeshConfig {
  return {
    listen: [listen],
    announce: [],
    bootstrap: [],
    mdns: false,
    relay: { enabled: false, reserve: false, maxReservations: 4, reservationTtlMs: 60_000, dataLimitBytes: 1 << 20, durationLimitMs: 60_000 },
    members: [],
    telemetryIntervalMs,
    telemetryTtlMs: 0,
    maxConnections: 256,
  };
}

async function makeMesh(name: string, cfg: MeshConfig, inMemory: boolean): Promise<Mesh> {
  const dir = mkdtempSync(join(tmpdir(), 'nc-mesh-scale-'));
  dirs.push(dir);
  const m = await Mesh.create({
    config: cfg,
    identityDir: join(dir, 'identity'),
    dataDir: dir,
    nodeName: name,
    version: 'test',
    logger: silentLogger,
    ...(inMemory ? { transports: [memory()] } : {}),
  });
  meshes.push(m);
  await m.start();
  return m;
}

describe('mesh gossip at scale', () => {
  it('16 nodes sharing one IP converge and no peer is graylisted', async () => {
    const n = 16;
    const nodes: Mesh[] = [];
    for (let i = 0; i < n; i++) nodes.push(await makeMesh(`n${i}`, config('/ip4/127.0.0.1/tcp/0', 1000), false));
    const first = nodes[0]!;
    for (const m of nodes.slice(1)) await m.join(first.createJoinToken(60_000).token);
    const ids = nodes.map((m) => m.peerId);

    const start = Date.now();
    const reachable = (): number[] => nodes.map((m) => m.viewList().filter((e) => ids.includes(e.nodeId) && e.status === 'reachable').length);
    while (!reachable().every((c) => c === n) && Date.now() - start < 60_000) await new Promise((r) => setTimeout(r, 200));
    expect(reachable()).toEqual(nodes.map(() => n));

    for (const m of nodes) {
      // Every connected peer's score stays above gossipsub's publish threshold (-50; the graylist is at -80).
      // With the default IP colocation penalty each of 15 peers on 127.0.0.1 scored -5 × (15 − 10)² = -125.
      // getScore is on gossipsub's implementation, not on its exported interface.
      const impl = m.pubsub as unknown as { getScore(peer: string): number };
      const scores = m.libp2p.getPeers().map((p) => impl.getScore(p.toString()));
      expect(scores.length).toBeGreaterThan(0);
      expect(Math.min(...scores)).toBeGreaterThan(-50);
      expect(m.counters.accepted).toBeGreaterThan(0);
    }
  }, 120_000);

  it('link-model pings and the connection-monitor ping run at once on one connection', async () => {
    const a = await makeMesh('a', config(`/memory/${randomUUID()}`, 60_000), true);
    const b = await makeMesh('b', config(`/memory/${randomUUID()}`, 60_000), true);
    await a.libp2p.dial(b.libp2p.getMultiaddrs()[0]!);
    expect(a.libp2p.getProtocols()).toEqual(expect.arrayContaining(['/ipfs/ping/1.0.0', `/${linkPingProtocolPrefix}/ping/1.0.0`]));
    // services.ping stands in for the monitor's heartbeat: both protocols allow one outbound stream each.
    const [monitor, link] = await Promise.allSettled([a.libp2p.services.ping.ping(b.libp2p.peerId), a.libp2p.services.linkPing.ping(b.libp2p.peerId)]);
    expect(monitor.status).toBe('fulfilled');
    expect(link.status).toBe('fulfilled');
    expect(a.libp2p.getConnections(b.libp2p.peerId).length).toBeGreaterThan(0);
  });
});
