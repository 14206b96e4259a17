// Proves Raft replicates over the real libp2p mesh transport (TCP + Noise + Yamux): writes commit on three nodes, a non-member's streams are refused, and a member cannot forge another node's messages.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { peerIdFromString } from '@libp2p/peer-id';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../support/wait.js';
import { encodeMessage } from '../../consensus/core/codec.js';
import { Xoshiro128 } from '../../consensus/core/random.js';
import { RaftNode, type RaftLogger } from '../../consensus/driver.js';
import { MemoryRaftStorage } from '../../consensus/storage/memory.js';
import { Mesh, silentLogger, singleHostMeshConfig, type MeshConfig } from '../../mesh/index.js';
import { MessageChannel } from '../../mesh/protocol.js';
import { MeshRaftTransport, raftProtocol } from '../../node/raft-transport.js';
import { KvMachine, encodeKv } from '../support/kv-machine.js';

const quiet: RaftLogger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

function meshConfig(): MeshConfig {
  return singleHostMeshConfig({ telemetryIntervalMs: 60_000, maxConnections: 64 });
}

interface Site {
  mesh: Mesh;
  id: string;
  dir: string;
  transport?: MeshRaftTransport;
  node?: RaftNode;
  kv?: KvMachine;
}

const sites: Site[] = [];
let outsider: Site;

async function makeSite(name: string): Promise<Site> {
  const dir = mkdtempSync(join(tmpdir(), `nc-raftmesh-${name}-`));
  const mesh = await Mesh.create({ config: meshConfig(), identityDir: join(dir, 'identity'), dataDir: dir, nodeName: name, version: 'test', logger: silentLogger });
  await mesh.start();
  return { mesh, id: mesh.libp2p.peerId.toString(), dir };
}

function until(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  return waitUntil(cond, timeoutMs);
}

beforeAll(async () => {
  for (const name of ['a', 'b', 'c']) sites.push(await makeSite(name));
  outsider = await makeSite('outsider');
  const members = new Set(sites.map((s) => s.id));
  for (const s of [...sites, outsider]) {
    s.mesh.setMemberProvider({ isMember: (p) => members.has(p) });
    for (const other of [...sites, outsider]) {
      if (other === s) continue;
      const addrs = other.mesh.libp2p.getMultiaddrs().map((a) => a.decapsulateCode(421)); // without /p2p/<id>
      await s.mesh.libp2p.peerStore.merge(peerIdFromString(other.id), { multiaddrs: addrs });
    }
  }
  for (const s of sites) {
    s.transport = new MeshRaftTransport(s.mesh.protocols, s.id, silentLogger);
    await s.transport.start();
    s.kv = new KvMachine();
    s.node = await RaftNode.open({
      id: s.id,
      storage: await MemoryRaftStorage.open(),
      transport: s.transport,
      stateMachine: s.kv,
      bootstrap: { voters: sites.map((x) => x.id), learners: [], votersOutgoing: [] },
      random: new Xoshiro128(sites.indexOf(s) + 1),
      logger: quiet,
      tickIntervalMs: 20,
    });
  }
}, 60_000);

afterAll(async () => {
  for (const s of sites) await s.node?.close();
  for (const s of [...sites, outsider]) {
    await s.mesh.stop();
    rmSync(s.dir, { recursive: true, force: true });
  }
});

describe('Raft over the libp2p mesh', () => {
  it('elects one leader and commits writes on all three nodes', async () => {
    await until(() => sites.filter((s) => s.node?.status().role === 'leader').length === 1);
    const leader = sites.find((s) => s.node?.status().role === 'leader');
    for (let i = 0; i < 20; i++) await leader?.node?.propose(encodeKv({ op: 'append', key: 'k', value: `${i},` }));
    const expected = Array.from({ length: 20 }, (_, i) => `${i},`).join('');
    await until(() => sites.every((s) => s.kv?.data.get('k') === expected));
    expect(sites.every((s) => (s.transport?.counters.received ?? 0) > 0)).toBe(true);
  });

  it('refuses the raft protocol to a peer that is not a member', async () => {
    const target = sites[0];
    if (target === undefined) throw new Error('no site');
    const before = target.mesh.protocols.refusals.get(raftProtocol) ?? 0;
    const termBefore = target.node?.status().term ?? 0;
    // The outsider claims to be a candidate with a huge term: if it got through, terms would jump.
    const forgedVote = encodeMessage({ type: 'vote', from: outsider.id, to: target.id, term: termBefore + 100, lastIndex: 1_000, lastTerm: termBefore + 99, transfer: false });
    try {
      const stream = await outsider.mesh.libp2p.dialProtocol(peerIdFromString(target.id), raftProtocol, { signal: AbortSignal.timeout(5_000) });
      const ch = new MessageChannel(stream);
      await ch.send(forgedVote, AbortSignal.timeout(2_000));
    } catch {
      // refused: the stream is reset before any data is read
    }
    await until(() => (target.mesh.protocols.refusals.get(raftProtocol) ?? 0) > before);
    expect(target.node?.status().term).toBeLessThan(termBefore + 100);
  });

  it('drops a message in which a member claims to be another member', async () => {
    const [a, b, c] = sites;
    if (a === undefined || b === undefined || c === undefined) throw new Error('no sites');
    const rejectedBefore = b.transport?.counters.rejected ?? 0;
    const term = b.node?.status().term ?? 0;
    // a sends over its own authenticated stream a vote that claims to come from c.
    const stream = await a.mesh.libp2p.dialProtocol(peerIdFromString(b.id), raftProtocol, { signal: AbortSignal.timeout(5_000) });
    const ch = new MessageChannel(stream);
    await ch.send(encodeMessage({ type: 'vote', from: c.id, to: b.id, term: term + 50, lastIndex: 1_000, lastTerm: term + 49, transfer: false }), AbortSignal.timeout(2_000));
    await until(() => (b.transport?.counters.rejected ?? 0) > rejectedBefore);
    expect(b.node?.status().term).toBeLessThan(term + 50);
    await stream.close().catch(() => undefined);
  });
});
