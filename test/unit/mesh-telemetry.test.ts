// Proves telemetry sample validation (malformed, oversized, forged signer rejected) and the cluster view's TTL.
import { describe, expect, it } from 'vitest';
import { ClusterView, telemetrySampleBytesMax, telemetryTtlMsDefault, validateSample, type TelemetrySample } from '../../mesh/telemetry.js';

const nodeId = '12D3KooWMZ1MWi9SFwVbsWneo9FTEtw5NxYVuh2TGkMtjwJDFBok';

function sample(over: Partial<TelemetrySample> = {}): TelemetrySample {
  return {
    v: 1,
    nodeId,
    name: 'n1',
    clusterId: 'c1',
    seq: 1,
    sentAtMs: 1000,
    version: '0.1.0',
    cpu: { cores: 2, usage: 0.5, load1: 1, load5: 1, load15: 1 },
    memory: { totalBytes: 100, availableBytes: 50 },
    disk: { totalBytes: 100, availableBytes: 50 },
    vms: { running: 0, total: 0 },
    links: [{ peer: nodeId, rttMs: 1.5, rttVarMs: 0.2, throughputBytesPerSec: null }],
    ...over,
  };
}

const bytes = (v: unknown): Uint8Array => new TextEncoder().encode(typeof v === 'string' ? v : JSON.stringify(v));

describe('validateSample', () => {
  it('accepts a well-formed sample signed by its node', () => {
    expect(validateSample(bytes(sample()), nodeId)).toMatchObject({ ok: true });
  });

  it('rejects malformed, oversized and forged samples with a reason', () => {
    expect(validateSample(bytes('{not json'), nodeId)).toMatchObject({ ok: false, reason: 'not_json' });
    expect(validateSample(new Uint8Array([0xff, 0xfe]), nodeId)).toMatchObject({ ok: false, reason: 'not_json' });
    expect(validateSample(bytes({ ...sample(), extra: 1 }), nodeId)).toMatchObject({ ok: false, reason: 'schema' });
    expect(validateSample(bytes(sample({ cpu: { cores: 2, usage: 7, load1: 0, load5: 0, load15: 0 } })), nodeId)).toMatchObject({ ok: false, reason: 'schema' });
    expect(validateSample(bytes({ ...sample(), v: 2 }), nodeId)).toMatchObject({ ok: false, reason: 'schema' });
    expect(validateSample(new Uint8Array(telemetrySampleBytesMax + 1), nodeId)).toMatchObject({ ok: false, reason: 'oversized' });
    expect(validateSample(bytes(sample()), '12D3KooWKcXbWXb4quPcQJyMNqXMT6nmH4arAZYk4dthApvUS8TC')).toMatchObject({ ok: false, reason: 'signer_mismatch' });
  });
});

describe('ClusterView', () => {
  it('keeps the newest sample per node and marks silent nodes unreachable after the TTL', () => {
    const ttl = telemetryTtlMsDefault(500);
    expect(ttl).toBe(2500);
    const view = new ClusterView(ttl);
    expect(view.update(sample({ seq: 2, sentAtMs: 2000 }), 0)).toBe(true);
    expect(view.update(sample({ seq: 1, sentAtMs: 1000 }), 10)).toBe(false); // older, out of order
    expect(view.get(nodeId, ttl)).toMatchObject({ status: 'reachable', ageMs: ttl });
    expect(view.get(nodeId, ttl + 1)).toMatchObject({ status: 'unreachable' });
    expect(view.update(sample({ seq: 3, sentAtMs: 3000 }), ttl + 2)).toBe(true);
    expect(view.list(ttl + 2)).toHaveLength(1);
    expect(view.list(ttl + 2)[0]).toMatchObject({ status: 'reachable', sample: { seq: 3 } });
  });
});
