// Prometheus metrics of one node (prom-client), and the cluster-wide rendering of every node's telemetry
// so that one scrape of any node covers the cluster.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { MeshStatus } from '../mesh/mesh.js';
import type { ViewEntry } from '../mesh/telemetry.js';

/** Request duration buckets (seconds): API calls range from sub-millisecond reads to multi-second writes. */
const apiDurationBucketsS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** What metrics read from the mesh; a narrow view so tests can pass a fake. */
export interface MeshMetricsSource {
  status(): MeshStatus;
}

/** What metrics read from Raft once the node runs it ([cluster]). */
export interface RaftMetricsSource {
  status(): { term: number; commit: number; applied: number; role: string; leader: string | null };
  readonly counters: { proposals: number; proposalsFailed: number; leaderChanges: number };
}

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly apiDuration: Histogram<'method' | 'route' | 'status'>;

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    this.apiDuration = new Histogram({
      name: 'novacron_api_request_duration_seconds',
      help: 'REST API request durations by route template and status code',
      labelNames: ['method', 'route', 'status'],
      buckets: apiDurationBucketsS,
      registers: [this.registry],
    });
  }

  /** `route` is the route template (e.g. /v1/vms/:id), never the raw URL, so label cardinality stays bounded. */
  observeRequest(method: string, route: string, status: number, durationS: number): void {
    this.apiDuration.observe({ method, route, status: String(status) }, durationS);
  }

  addMesh(mesh: MeshMetricsSource): void {
    const registers = [this.registry];
    new Gauge({
      name: 'novacron_mesh_connections',
      help: 'Open libp2p connections',
      registers,
      collect() {
        this.set(mesh.status().connections);
      },
    });
    new Gauge({
      name: 'novacron_mesh_members',
      help: 'Peers this node counts as cluster members',
      registers,
      collect() {
        this.set(mesh.status().members.length);
      },
    });
    new Counter({
      name: 'novacron_mesh_refused_streams_total',
      help: 'Cluster protocol streams refused because the peer is not a member',
      registers,
      collect() {
        this.reset();
        this.inc(mesh.status().refusedStreams);
      },
    });
    new Counter({
      name: 'novacron_gossip_messages_total',
      help: 'Telemetry gossip messages by outcome (published, publish_failed, accepted, rejected_<reason>, ignored_non_member)',
      labelNames: ['outcome'],
      registers,
      collect() {
        const t = mesh.status().telemetry;
        this.reset();
        this.inc({ outcome: 'published' }, t.published);
        this.inc({ outcome: 'publish_failed' }, t.publishFailed);
        this.inc({ outcome: 'accepted' }, t.accepted);
        this.inc({ outcome: 'ignored_non_member' }, t.ignoredNonMember);
        for (const [reason, n] of Object.entries(t.rejected)) this.inc({ outcome: `rejected_${reason}` }, n);
      },
    });
  }

  addRaft(raft: RaftMetricsSource): void {
    const registers = [this.registry];
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read());
        },
      });
    };
    const counter = (name: string, help: string, read: () => number): void => {
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    };
    gauge('novacron_raft_term', 'Current Raft term', () => raft.status().term);
    gauge('novacron_raft_commit_index', 'Highest log index known committed', () => raft.status().commit);
    gauge('novacron_raft_apply_index', 'Highest log index applied to the state machine', () => raft.status().applied);
    gauge('novacron_raft_is_leader', '1 when this node is the Raft leader', () => (raft.status().role === 'leader' ? 1 : 0));
    counter('novacron_raft_leader_changes_total', 'Leadership changes seen by this node', () => raft.counters.leaderChanges);
    counter('novacron_raft_proposals_total', 'Proposals made on this node', () => raft.counters.proposals);
    counter('novacron_raft_proposals_failed_total', 'Proposals that failed (dropped, timed out)', () => raft.counters.proposalsFailed);
  }

  async render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/**
 * Every node's latest telemetry as Prometheus gauges labelled by node: served at /metrics?scope=cluster.
 * Built per scrape from the gossip view; its size is bounded by the view (one entry per node).
 */
export async function renderClusterMetrics(view: readonly ViewEntry[]): Promise<string> {
  const registry = new Registry();
  const registers = [registry];
  const g = (name: string, help: string, labelNames: string[] = ['node', 'name']): Gauge => new Gauge({ name, help, labelNames, registers });
  const up = g('novacron_node_up', '1 while the node publishes telemetry within its TTL, else 0');
  const age = g('novacron_node_telemetry_age_seconds', 'Age of the latest telemetry sample, by the receiver clock');
  const cpu = g('novacron_node_cpu_usage_ratio', 'Busy fraction of all cores');
  const cores = g('novacron_node_cpu_cores', 'CPU cores');
  const load1 = g('novacron_node_load1', 'One-minute load average');
  const memTotal = g('novacron_node_memory_total_bytes', 'Memory');
  const memAvail = g('novacron_node_memory_available_bytes', 'Memory available');
  const diskTotal = g('novacron_node_disk_total_bytes', 'File system of the data dir: size');
  const diskAvail = g('novacron_node_disk_available_bytes', 'File system of the data dir: available');
  const vmsRunning = g('novacron_node_vms_running', 'VMs running');
  const vmsTotal = g('novacron_node_vms_total', 'VMs owned');
  const rtt = g('novacron_link_rtt_seconds', 'Smoothed RTT from node to peer', ['node', 'peer']);
  const tput = g('novacron_link_throughput_bytes_per_second', 'Measured throughput from node to peer', ['node', 'peer']);
  for (const e of view) {
    const s = e.sample;
    const l = { node: e.nodeId, name: s.name };
    up.set(l, e.status === 'reachable' ? 1 : 0);
    age.set(l, e.ageMs / 1000);
    cpu.set(l, s.cpu.usage);
    cores.set(l, s.cpu.cores);
    load1.set(l, s.cpu.load1);
    memTotal.set(l, s.memory.totalBytes);
    memAvail.set(l, s.memory.availableBytes);
    diskTotal.set(l, s.disk.totalBytes);
    diskAvail.set(l, s.disk.availableBytes);
    vmsRunning.set(l, s.vms.running);
    vmsTotal.set(l, s.vms.total);
    for (const link of s.links) {
      if (link.rttMs !== null) rtt.set({ node: e.nodeId, peer: link.peer }, link.rttMs / 1000);
      if (link.throughputBytesPerSec !== null) tput.set({ node: e.nodeId, peer: link.peer }, link.throughputBytesPerSec);
    }
  }
  return registry.metrics();
}
