// Proves the link model's arithmetic: RFC 6298 smoothing of RTT and its variance, windowed throughput, and its bounds.
import { describe, expect, it } from 'vitest';
import { LinkModel, rttGain, rttVarianceGain, throughputWindowMs, transfersPerPeerMax } from '../../mesh/link-model.js';

describe('LinkModel', () => {
  it('seeds RTT with the first sample and smooths later ones with variance', () => {
    const m = new LinkModel();
    m.recordRtt('p', 100, 0);
    expect(m.linkTo('p', 0)).toMatchObject({ rttMs: 100, rttVarMs: 50, rttSamples: 1 });
    m.recordRtt('p', 200, 10);
    const varExpected = (1 - rttVarianceGain) * 50 + rttVarianceGain * 100;
    const srttExpected = (1 - rttGain) * 100 + rttGain * 200;
    const l = m.linkTo('p', 10)!;
    expect(l.rttVarMs).toBeCloseTo(varExpected, 9);
    expect(l.rttMs).toBeCloseTo(srttExpected, 9);
    expect(l.rttLastMs).toBe(200);
  });

  it('converges to a steady RTT and ignores nonsense samples', () => {
    const m = new LinkModel();
    for (let i = 0; i < 200; i++) m.recordRtt('p', 20, i);
    m.recordRtt('p', Number.NaN, 300);
    m.recordRtt('p', -5, 301);
    const l = m.linkTo('p', 302)!;
    expect(l.rttMs).toBeCloseTo(20, 6);
    expect(l.rttVarMs).toBeLessThan(1e-6);
    expect(l.rttSamples).toBe(200);
  });

  it('computes throughput as bytes over busy time within the window', () => {
    const m = new LinkModel();
    m.recordTransfer('p', 1_000_000, 1000, 1000); // 1 MB/s
    m.recordTransfer('p', 3_000_000, 1000, 2000); // 3 MB/s
    expect(m.linkTo('p', 2000)!.throughputBytesPerSec).toBeCloseTo(2_000_000, 6);
    expect(m.linkTo('p', 2000)!.windowBytes).toBe(4_000_000);
    // The first transfer ages out of the window; the total keeps counting.
    const later = m.linkTo('p', 1000 + throughputWindowMs + 1)!;
    expect(later.throughputBytesPerSec).toBeCloseTo(3_000_000, 6);
    expect(later.totalBytes).toBe(4_000_000);
    expect(m.linkTo('p', 2000 + throughputWindowMs + 1)!.throughputBytesPerSec).toBeNull();
  });

  it('bounds transfers per peer and lists every peer', () => {
    const m = new LinkModel();
    for (let i = 0; i < transfersPerPeerMax + 50; i++) m.recordTransfer('a', 10, 1, i);
    m.recordRtt('b', 5, 0);
    expect(m.linkTo('a', 400)!.windowBytes).toBe(10 * transfersPerPeerMax);
    expect(m.all(400).map((l) => l.peer).sort()).toEqual(['a', 'b']);
    expect(m.linkTo('c', 0)).toBeUndefined();
    m.recordTransfer('a', 0, 5, 1); // zero bytes: no information
    m.forget('b');
    expect(m.linkTo('b', 0)).toBeUndefined();
  });
});
