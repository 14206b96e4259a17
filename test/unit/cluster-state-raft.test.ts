// Proves the cluster state machine under the Raft driver: a refused command rejects only its proposer with the ClusterError, replication goes on, and every replica (one catching up through a snapshot) ends byte-identical.
import { afterEach, describe, expect, it } from 'vitest';
import { waitUntil } from '../support/wait.js';
import { RaftNode, type RaftLogger } from '../../consensus/driver.js';
import { Xoshiro128 } from '../../consensus/core/random.js';
import { MemoryRaftStorage } from '../../consensus/storage/memory.js';
import { MemoryNetwork } from '../../consensus/transport-memory.js';
import { ClusterError, ClusterStateMachine, encodeCommand, hashSecret, type Actor, type ClusterCommand } from '../../consensus/cluster/index.js';

const ids = ['n1', 'n2', 'n3'];
const quiet: RaftLogger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };
const admin: Actor = { kind: 'token', id: 'tok-admin' };
const t0 = 1_700_000_000_000;
let open: RaftNode[] = [];

afterEach(async () => {
  await Promise.allSettled(open.map((n) => n.close()));
  open = [];
});

async function start(net: MemoryNetwork, id: string, seed: number): Promise<{ node: RaftNode; sm: ClusterStateMachine }> {
  const sm = new ClusterStateMachine();
  const node = await RaftNode.open({
    id,
    storage: await MemoryRaftStorage.open(),
    transport: net.transport(id),
    stateMachine: sm,
    bootstrap: { voters: ids, learners: [], votersOutgoing: [] },
    random: new Xoshiro128(seed),
    logger: quiet,
    tickIntervalMs: 10,
    snapshotEveryEntries: 20,
    compactionKeepEntries: 2,
  });
  open.push(node);
  return { node, sm };
}

function until(cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  return waitUntil(cond, timeoutMs);
}

describe('ClusterStateMachine under RaftNode', () => {
  it('refuses to the proposer only and keeps replicas identical', async () => {
    const net = new MemoryNetwork();
    const members = await Promise.all(ids.map((id, i) => start(net, id, i + 1)));
    await until(() => members.some((m) => m.node.status().role === 'leader'));
    const leader = members.find((m) => m.node.status().role === 'leader');
    if (leader === undefined) throw new Error('no leader');
    const lagging = members.find((m) => m !== leader);
    if (lagging === undefined) throw new Error('no follower');
    const propose = (cmd: Record<string, unknown>, at: number) => leader.node.propose(encodeCommand({ at, actor: admin, from: null, ...cmd } as unknown as ClusterCommand));

    await propose({ type: 'cluster.init', clusterId: 'c1', node: { id: 'NodeA', name: 'nodea', addresses: [], site: 's1' }, adminToken: { id: 'tok-admin', name: 'admin', secretHash: hashSecret('s') } }, t0);
    await expect(propose({ type: 'vm.delete', id: 'nope' }, t0 + 1)).rejects.toMatchObject({ name: 'ClusterError', code: 'not_found' });
    await expect(propose({ type: 'vm.delete', id: 'nope' }, t0 + 1)).rejects.toBeInstanceOf(ClusterError);

    // Cut one follower off, write past the snapshot interval, heal: it catches up through InstallSnapshot.
    net.isolate(lagging.node.status().id, ids);
    for (let i = 0; i < 40; i++) {
      await propose({ type: 'vm.create', id: `vm${i}`, name: `vm-${i}`, spec: { vcpus: 1, memoryMiB: 64, disks: [], nics: [] }, desired: 'running', owner: 'NodeA' }, t0 + 10 + i);
    }
    net.heal();
    await until(() => members.every((m) => m.node.status().applied === leader.node.status().applied), 10_000);
    const bytes = members.map((m) => Buffer.from(m.sm.snapshot()));
    for (const b of bytes) expect(b.equals(bytes[0] ?? Buffer.alloc(0))).toBe(true);
    expect(lagging.sm.listVms()).toHaveLength(40);
    expect(lagging.node.counters.snapshotsInstalled).toBeGreaterThan(0);
  });
});
