// Telemetry samples: what each node publishes on gossipsub, how samples are validated, how this node
// measures itself, and the cluster view (latest sample per node, with age and reachability).
import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { statfs } from 'node:fs/promises';
import Type, { type Static } from 'typebox';
import Value from 'typebox/value';

export const telemetryTopic = 'novacron/telemetry/1';
/** Largest encoded sample accepted; a bigger one is rejected before parsing. */
export const telemetrySampleBytesMax = 64 * 1024;
/** Links listed in one sample. */
export const telemetryLinksMax = 256;
/** Nodes kept in the view; beyond this the longest-silent one is dropped. */
export const viewNodesMax = 4096;
/** An unreachable node stays in the view this long after its last sample, then is dropped. */
export const viewRetentionMs = 60 * 60 * 1000;
/** Added to 3 × interval for the default TTL: covers gossip propagation and a late timer. */
export const telemetryTtlMarginMs = 1000;

export function telemetryTtlMsDefault(intervalMs: number): number {
  return 3 * intervalMs + telemetryTtlMarginMs;
}

const PeerIdString = Type.String({ minLength: 1, maxLength: 128, pattern: '^[1-9A-HJ-NP-Za-km-z]+$' });
const NonNegative = Type.Number({ minimum: 0 });
const NullableNonNegative = Type.Union([NonNegative, Type.Null()]);

export const LinkSampleSchema = Type.Object(
  {
    peer: PeerIdString,
    rttMs: NullableNonNegative,
    rttVarMs: NullableNonNegative,
    throughputBytesPerSec: NullableNonNegative,
  },
  { additionalProperties: false },
);

export const TelemetrySampleSchema = Type.Object(
  {
    v: Type.Literal(1),
    nodeId: PeerIdString,
    name: Type.String({ minLength: 1, maxLength: 63 }),
    clusterId: Type.Union([Type.String({ maxLength: 128 }), Type.Null()]),
    seq: Type.Integer({ minimum: 0 }),
    sentAtMs: Type.Integer({ minimum: 0 }),
    version: Type.String({ maxLength: 64 }),
    cpu: Type.Object(
      {
        cores: Type.Integer({ minimum: 0, maximum: 65536 }),
        usage: Type.Number({ minimum: 0, maximum: 1, description: 'Busy fraction of all cores since the last sample' }),
        load1: NonNegative,
        load5: NonNegative,
        load15: NonNegative,
      },
      { additionalProperties: false },
    ),
    memory: Type.Object({ totalBytes: NonNegative, availableBytes: NonNegative }, { additionalProperties: false }),
    disk: Type.Object({ totalBytes: NonNegative, availableBytes: NonNegative }, { additionalProperties: false, description: 'File system of the data dir' }),
    vms: Type.Object({ running: Type.Integer({ minimum: 0 }), total: Type.Integer({ minimum: 0 }) }, { additionalProperties: false }),
    links: Type.Array(LinkSampleSchema, { maxItems: telemetryLinksMax }),
  },
  { additionalProperties: false },
);
export type TelemetrySample = Static<typeof TelemetrySampleSchema>;
export type LinkSample = Static<typeof LinkSampleSchema>;

export type SampleVerdict = { ok: true; sample: TelemetrySample } | { ok: false; reason: 'oversized' | 'not_json' | 'schema' | 'signer_mismatch'; detail: string };

const decoder = new TextDecoder('utf-8', { fatal: true });

/** Validates raw bytes as a sample whose nodeId must equal the gossipsub signer. */
export function validateSample(data: Uint8Array, signer: string): SampleVerdict {
  if (data.byteLength > telemetrySampleBytesMax) return { ok: false, reason: 'oversized', detail: `${data.byteLength} bytes > ${telemetrySampleBytesMax}` };
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(data)) as unknown;
  } catch (err) {
    return { ok: false, reason: 'not_json', detail: err instanceof Error ? err.message : String(err) };
  }
  if (!Value.Check(TelemetrySampleSchema, value)) {
    const first = [...Value.Errors(TelemetrySampleSchema, value)][0];
    return { ok: false, reason: 'schema', detail: first === undefined ? 'does not match the schema' : `${first.instancePath || '/'}: ${first.message}` };
  }
  if (value.nodeId !== signer) return { ok: false, reason: 'signer_mismatch', detail: `sample claims ${value.nodeId}, signed by ${signer}` };
  return { ok: true, sample: value };
}

export interface HostStats {
  cpu: TelemetrySample['cpu'];
  memory: TelemetrySample['memory'];
  disk: TelemetrySample['disk'];
}

/** Measures CPU (busy fraction between calls), memory, load and the data dir's file system. */
export class HostStatsCollector {
  private last: { idle: number; total: number } | null = null;

  constructor(private readonly dataDir: string) {}

  async collect(): Promise<HostStats> {
    const all = cpus();
    let idle = 0;
    let total = 0;
    for (const c of all) {
      idle += c.times.idle;
      total += c.times.idle + c.times.user + c.times.nice + c.times.sys + c.times.irq;
    }
    let usage = 0;
    if (this.last !== null && total > this.last.total) usage = 1 - (idle - this.last.idle) / (total - this.last.total);
    this.last = { idle, total };
    const [l1, l5, l15] = loadavg();
    let disk = { totalBytes: 0, availableBytes: 0 };
    try {
      const s = await statfs(this.dataDir);
      disk = { totalBytes: s.blocks * s.bsize, availableBytes: s.bavail * s.bsize };
    } catch {
      // An unreadable data dir shows as zero; the node's dataDir readiness check reports the cause.
    }
    return {
      cpu: { cores: all.length, usage: Math.min(1, Math.max(0, usage)), load1: l1 ?? 0, load5: l5 ?? 0, load15: l15 ?? 0 },
      memory: { totalBytes: totalmem(), availableBytes: freemem() },
      disk,
    };
  }
}

export type NodeStatus = 'reachable' | 'unreachable';

export interface ViewEntry {
  nodeId: string;
  status: NodeStatus;
  /** ms since the sample arrived (receiver's clock: senders' clocks are not trusted). */
  ageMs: number;
  receivedAtMs: number;
  sample: TelemetrySample;
}

/** Latest sample per node. Pure: callers pass the time. */
export class ClusterView {
  private readonly entries = new Map<string, { sample: TelemetrySample; receivedAtMs: number }>();

  constructor(public ttlMs: number) {}

  /** Keeps the sample if it is newer than the one held. */
  update(sample: TelemetrySample, nowMs: number): boolean {
    const prev = this.entries.get(sample.nodeId);
    // Same node, same clock: order by send time, then by seq (a restarted node's seq starts again at 1).
    if (prev !== undefined && (sample.sentAtMs < prev.sample.sentAtMs || (sample.sentAtMs === prev.sample.sentAtMs && sample.seq <= prev.sample.seq))) return false;
    if (prev === undefined && this.entries.size >= viewNodesMax) this.evictOldest();
    this.entries.set(sample.nodeId, { sample, receivedAtMs: nowMs });
    return true;
  }

  get(nodeId: string, nowMs: number): ViewEntry | undefined {
    const e = this.entries.get(nodeId);
    return e === undefined ? undefined : this.entry(nodeId, e, nowMs);
  }

  list(nowMs: number): ViewEntry[] {
    for (const [id, e] of this.entries) if (nowMs - e.receivedAtMs > viewRetentionMs) this.entries.delete(id);
    return [...this.entries].map(([id, e]) => this.entry(id, e, nowMs)).sort((a, b) => a.sample.name.localeCompare(b.sample.name) || a.nodeId.localeCompare(b.nodeId));
  }

  private entry(nodeId: string, e: { sample: TelemetrySample; receivedAtMs: number }, nowMs: number): ViewEntry {
    const ageMs = Math.max(0, nowMs - e.receivedAtMs);
    return { nodeId, status: ageMs > this.ttlMs ? 'unreachable' : 'reachable', ageMs, receivedAtMs: e.receivedAtMs, sample: e.sample };
  }

  private evictOldest(): void {
    let oldest: string | undefined;
    let oldestMs = Infinity;
    for (const [id, e] of this.entries) {
      if (e.receivedAtMs < oldestMs) {
        oldestMs = e.receivedAtMs;
        oldest = id;
      }
    }
    if (oldest !== undefined) this.entries.delete(oldest);
  }
}
