// Proves the convergence predictor and the QEMU parameters derived from a migration's options and the link model, the switch-over bandwidth included.
import { describe, expect, it } from 'vitest';
import { predictConvergence, qemuDowntimeLimitMs, qemuMaxBandwidthBytesPerSec, qemuBandwidthBytesPerSecMax, compressionGainCeiling, switchoverBandwidthUpdate } from '../../migration/convergence.js';

const MB = 1e6;

describe('predictConvergence', () => {
  it('switches over at once when the rest fits in the downtime budget', () => {
    const p = predictConvergence({ remainingBytes: 2 * MB, rateBytesPerSec: 100 * MB, dirtyRateBytesPerSec: 50 * MB, downtimeLimitMs: 300 });
    expect(p).toEqual({ converging: true, predictedRemainingMs: 0, expectedDowntimeMs: 20 });
  });

  it('predicts the time until the backlog fits when the link outruns the dirty rate', () => {
    // 100 MB left, 30 MB fit in 300 ms at 100 MB/s; the backlog shrinks at 50 MB/s: 1.4 s.
    const p = predictConvergence({ remainingBytes: 100 * MB, rateBytesPerSec: 100 * MB, dirtyRateBytesPerSec: 50 * MB, downtimeLimitMs: 300 });
    expect(p.converging).toBe(true);
    expect(p.predictedRemainingMs).toBeCloseTo(1400, 6);
    expect(p.expectedDowntimeMs).toBeCloseTo(1000, 6);
  });

  it('says no when the guest dirties memory about as fast as the link carries it', () => {
    expect(predictConvergence({ remainingBytes: 100 * MB, rateBytesPerSec: 10 * MB, dirtyRateBytesPerSec: 9.5 * MB, downtimeLimitMs: 300 }).converging).toBe(false);
    expect(predictConvergence({ remainingBytes: 100 * MB, rateBytesPerSec: 10 * MB, dirtyRateBytesPerSec: 40 * MB, downtimeLimitMs: 300 })).toMatchObject({ converging: false, predictedRemainingMs: null });
  });

  it('knows nothing before anything moved', () => {
    expect(predictConvergence({ remainingBytes: 100 * MB, rateBytesPerSec: 0, dirtyRateBytesPerSec: 0, downtimeLimitMs: 300 })).toEqual({ converging: false, predictedRemainingMs: null, expectedDowntimeMs: null });
  });
});

describe('QEMU parameters', () => {
  it('leaves room in the downtime limit for the commit and go-live round trips, never below a fifth', () => {
    expect(qemuDowntimeLimitMs(300, null)).toBe(300);
    expect(qemuDowntimeLimitMs(300, 20)).toBe(260);
    expect(qemuDowntimeLimitMs(300, 500)).toBe(60);
    expect(qemuDowntimeLimitMs(1, 500)).toBe(1);
  });

  it('lets QEMU outrun a wire cap by the best compression gain, and is otherwise not the limit', () => {
    expect(qemuMaxBandwidthBytesPerSec(null)).toBe(qemuBandwidthBytesPerSecMax);
    expect(qemuMaxBandwidthBytesPerSec(1_000_000)).toBe(1_000_000 * compressionGainCeiling);
    expect(qemuMaxBandwidthBytesPerSec(10e9)).toBe(qemuBandwidthBytesPerSecMax);
  });

  it('gives QEMU the link estimate as its switch-over bandwidth, and again only when the estimate moved by more than a tenth', () => {
    // Unknown link: QEMU keeps its own figure.
    expect(switchoverBandwidthUpdate(null, null)).toBeNull();
    expect(switchoverBandwidthUpdate(null, 0)).toBeNull();
    expect(switchoverBandwidthUpdate(null, Number.NaN)).toBeNull();
    expect(switchoverBandwidthUpdate(null, 1_183_320.4)).toBe(1_183_320);
    expect(switchoverBandwidthUpdate(1_183_320, 1_250_000)).toBeNull();
    expect(switchoverBandwidthUpdate(1_183_320, 1_070_000)).toBeNull();
    expect(switchoverBandwidthUpdate(1_183_320, 1_400_000)).toBe(1_400_000);
    expect(switchoverBandwidthUpdate(1_183_320, 1_000_000)).toBe(1_000_000);
    expect(switchoverBandwidthUpdate(null, 1e12)).toBe(qemuBandwidthBytesPerSecMax);
  });
});
