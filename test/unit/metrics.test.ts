// Proves the Prometheus renderings: local metrics from mesh and Raft sources, and the cluster scope with one labelled series per node and link.
import { describe, expect, it } from 'vitest';
import type { MeshStatus } from '../../mesh/mesh.js';
import type { ViewEntry } from '../../mesh/telemetry.js';
import { NodeMetrics, renderClusterMetrics } from '../../node/metrics.js';

const peerA = '12D3KooWA';
const peerB = '12D3KooWB';

function meshStatus(refused: number): MeshStatus {
  return {
    peerId: peerA,
    clusterId: 'c1',
    addresses: [],
    connections: 3,
    members: [],
    relay: { enabled: false, reserve: false, reservations: 0 },
    telemetry: {
      published: 10,
      publishFailed: 1,
      accepted: 20,
      rejected: { oversized: 2, not_json: 0, schema: 1, signer_mismatch: 0, unsigned: 0 },
      ignoredNonMember: 4,
      intervalMs: 2000,
      ttlMs: 7000,
    },
    refusedStreams: refused,
  };
}

function entry(nodeId: string, name: string, status: 'reachable' | 'unreachable'): ViewEntry {
  return {
    nodeId,
    status,
    ageMs: 1500,
    receivedAtMs: 0,
    sample: {
      v: 1,
      nodeId,
      name,
      clusterId: 'c1',
      seq: 1,
      sentAtMs: 0,
      version: '0.1.0',
      cpu: { cores: 4, usage: 0.25, load1: 1, load5: 1, load15: 1 },
      memory: { totalBytes: 8e9, availableBytes: 4e9 },
      disk: { totalBytes: 1e11, availableBytes: 5e10 },
      vms: { running: 2, total: 3 },
      links: [{ peer: nodeId === peerA ? peerB : peerA, rttMs: 12, rttVarMs: 1, throughputBytesPerSec: 1e6 }],
    },
  };
}

describe('NodeMetrics', () => {
  it('reads mesh and Raft sources at scrape time and records API requests by route template', async () => {
    const m = new NodeMetrics();
    let refused = 1;
    m.addMesh({ status: () => meshStatus(refused) });
    m.addRaft({
      status: () => ({ term: 7, commit: 42, applied: 41, role: 'leader', leader: peerA }),
      counters: { proposals: 100, proposalsFailed: 2, leaderChanges: 3 },
    });
    m.observeRequest('GET', '/v1/vms/:id', 200, 0.004);
    refused = 5;
    const text = await m.render();
    expect(text).toMatch(/^novacron_mesh_connections 3$/m);
    expect(text).toMatch(/^novacron_mesh_refused_streams_total 5$/m);
    expect(text).toMatch(/^novacron_gossip_messages_total\{outcome="rejected_oversized"\} 2$/m);
    expect(text).toMatch(/^novacron_raft_term 7$/m);
    expect(text).toMatch(/^novacron_raft_apply_index 41$/m);
    expect(text).toMatch(/^novacron_raft_is_leader 1$/m);
    expect(text).toMatch(/^novacron_raft_leader_changes_total 3$/m);
    expect(text).toMatch(/novacron_api_request_duration_seconds_count\{method="GET",route="\/v1\/vms\/:id",status="200"\} 1/);
    // Counters mirrored from cumulative sources must not double on a second scrape.
    expect(await m.render()).toMatch(/^novacron_raft_proposals_total 100$/m);
  });
});

describe('renderClusterMetrics', () => {
  it('labels every node and link, and reports an unreachable node as down', async () => {
    const text = await renderClusterMetrics([entry(peerA, 'edge-a', 'reachable'), entry(peerB, 'edge-b', 'unreachable')]);
    expect(text).toMatch(/^novacron_node_up\{node="12D3KooWA",name="edge-a"\} 1$/m);
    expect(text).toMatch(/^novacron_node_up\{node="12D3KooWB",name="edge-b"\} 0$/m);
    expect(text).toMatch(/^novacron_node_vms_running\{node="12D3KooWA",name="edge-a"\} 2$/m);
    expect(text).toMatch(/^novacron_link_rtt_seconds\{node="12D3KooWA",peer="12D3KooWB"\} 0\.012$/m);
    expect(text).toMatch(/^novacron_node_telemetry_age_seconds\{node="12D3KooWB",name="edge-b"\} 1\.5$/m);
  });
});
