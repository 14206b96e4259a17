// Will pre-copy converge? A pure estimate from QEMU's figures and the tunnel's, shown before and during a migration
// and used to decide when to ask for help (auto-converge throttling, post-copy) or to give up at the deadline.
//
// Pre-copy sends memory while the guest dirties it. Each second the backlog shrinks by (rate - dirtyRate); the
// switch-over can happen once what is left fits in the downtime budget at the current rate.

export interface ConvergenceInput {
  /** Guest bytes still to send (QEMU ram.remaining plus disk backlog). */
  remainingBytes: number;
  /** Raw guest bytes per second the tunnel currently moves (after compression gains). */
  rateBytesPerSec: number;
  /** Guest bytes dirtied per second (QEMU dirty-pages-rate × page size). */
  dirtyRateBytesPerSec: number;
  /** The downtime budget QEMU was given (ms). */
  downtimeLimitMs: number;
}

export interface ConvergencePrediction {
  converging: boolean;
  /** Time until the switch-over can start, if converging. */
  predictedRemainingMs: number | null;
  /** Pause of the guest if it switched over now (ms). */
  expectedDowntimeMs: number | null;
}

/** Below this share of the link the guest dirties memory slowly enough that pre-copy shrinks the backlog steadily. */
export const convergingDirtyShareMax = 0.9;

export function predictConvergence(input: ConvergenceInput): ConvergencePrediction {
  const { remainingBytes, rateBytesPerSec: rate, dirtyRateBytesPerSec: dirty, downtimeLimitMs } = input;
  if (!(rate > 0)) return { converging: false, predictedRemainingMs: null, expectedDowntimeMs: null };
  const expectedDowntimeMs = (remainingBytes / rate) * 1000;
  const budgetBytes = (rate * downtimeLimitMs) / 1000;
  if (remainingBytes <= budgetBytes) return { converging: true, predictedRemainingMs: 0, expectedDowntimeMs };
  if (dirty >= rate * convergingDirtyShareMax) return { converging: false, predictedRemainingMs: null, expectedDowntimeMs };
  const predictedRemainingMs = ((remainingBytes - budgetBytes) / (rate - dirty)) * 1000;
  return { converging: true, predictedRemainingMs, expectedDowntimeMs };
}

/** The QEMU downtime-limit for a requested end-to-end pause: the switch-over also costs a Raft commit and a go-live round trip. */
export function qemuDowntimeLimitMs(requestedMs: number, rttMs: number | null): number {
  const overheadMs = 2 * (rttMs ?? 0);
  // Never below a fifth of the request: on a very slow round trip, QEMU still needs a usable budget.
  return Math.max(Math.round(requestedMs / 5), Math.round(requestedMs - overheadMs), 1);
}

/**
 * QEMU's max-bandwidth (raw bytes/s it hands to the tunnel). The tunnel's back-pressure is what follows the link: a
 * QEMU cap from a link estimate (often a lower bound measured on small transfers) would only throttle below the link.
 * With a per-migration cap on wire bytes, QEMU may go faster than it by the best compression gain.
 */
export const compressionGainCeiling = 8;
export const qemuBandwidthBytesPerSecMax = 4 * 1024 ** 3;

export function qemuMaxBandwidthBytesPerSec(capBytesPerSec: number | null): number {
  if (capBytesPerSec === null) return qemuBandwidthBytesPerSecMax;
  return Math.max(1, Math.round(Math.min(capBytesPerSec * compressionGainCeiling, qemuBandwidthBytesPerSecMax)));
}

/** Change of the link estimate, as a share of the figure last given to QEMU, that is worth a QMP call. */
export const switchoverBandwidthChangeShare = 0.1;

/**
 * QEMU's switch-over bandwidth (avail-switchover-bandwidth, bytes/s) from the tunnel's link estimate (wire bytes/s),
 * or null to leave it as it is. QEMU's own figure is the rate at which our socket took its writes, and the tunnel's
 * read-ahead and compression queue take bursts far faster than the link (at 10 Mbit/s QEMU measured 5-800 Mbit/s), so
 * it stopped the guest with a second of stream left. The link's wire rate, not wire rate times the compression ratio:
 * the ratio of the last dirty pages is their content's, not the transfer's so far (the controller's swung 1-7 chunk
 * to chunk), and a wrong guess lengthens the pause; counting them uncompressed costs a pass or two of small pages.
 * Re-set only when the estimate moved by more than switchoverBandwidthChangeShare.
 */
export function switchoverBandwidthUpdate(lastSetBytesPerSec: number | null, linkBytesPerSec: number | null): number | null {
  if (linkBytesPerSec === null || !Number.isFinite(linkBytesPerSec) || linkBytesPerSec < 1) return null;
  const next = Math.round(Math.min(linkBytesPerSec, qemuBandwidthBytesPerSecMax));
  if (lastSetBytesPerSec !== null && Math.abs(next - lastSetBytesPerSec) <= lastSetBytesPerSec * switchoverBandwidthChangeShare) return null;
  return next;
}
