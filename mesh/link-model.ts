// Per-peer link estimates: RTT (smoothed with variance, as RFC 6298 does for TCP) and throughput over a
// sliding time window of bulk transfers. Pure: every input carries its own time, so tests and the
// bandwidth controller can replay histories. The scheduler and bandwidth/ read it through linkTo()/all().

/** Gain of the smoothed RTT (RFC 6298 alpha). */
export const rttGain = 1 / 8;
/** Gain of the RTT variance (RFC 6298 beta). */
export const rttVarianceGain = 1 / 4;
/** Transfers older than this no longer count towards throughput. */
export const throughputWindowMs = 30_000;
/** Transfers kept per peer inside the window; the oldest are dropped first. */
export const transfersPerPeerMax = 256;
/** Peers tracked; beyond this the least recently updated one is forgotten. */
export const linkPeersMax = 4096;
/** Transfers shorter than this are too noisy to time; their duration is taken as this floor. */
export const transferDurationFloorMs = 1;

export interface LinkEstimate {
  peer: string;
  /** Smoothed round-trip time, ms; null before the first sample. */
  rttMs: number | null;
  /** RTT variance (mean deviation), ms. */
  rttVarMs: number | null;
  /** Last raw RTT sample, ms. */
  rttLastMs: number | null;
  rttSamples: number;
  /** Bytes per second over the window's transfers (total bytes / total busy time); null without transfers. */
  throughputBytesPerSec: number | null;
  /** Bytes moved in the window. */
  windowBytes: number;
  /** Bytes moved since the peer was first seen. */
  totalBytes: number;
  /** When any input last arrived for this peer (caller's clock, ms). */
  updatedAtMs: number;
}

interface Transfer {
  bytes: number;
  durationMs: number;
  endMs: number;
}

interface LinkState {
  srtt: number | null;
  rttvar: number | null;
  rttLast: number | null;
  rttSamples: number;
  transfers: Transfer[];
  totalBytes: number;
  updatedAtMs: number;
}

export class LinkModel {
  private readonly links = new Map<string, LinkState>();

  /** One RTT sample (e.g. from ping). Non-finite or negative samples are ignored. */
  recordRtt(peer: string, rttMs: number, nowMs: number): void {
    if (!Number.isFinite(rttMs) || rttMs < 0) return;
    const s = this.state(peer, nowMs);
    if (s.srtt === null || s.rttvar === null) {
      s.srtt = rttMs;
      s.rttvar = rttMs / 2;
    } else {
      // Variance first, with the old mean, as RFC 6298 §2.3 prescribes.
      s.rttvar = (1 - rttVarianceGain) * s.rttvar + rttVarianceGain * Math.abs(s.srtt - rttMs);
      s.srtt = (1 - rttGain) * s.srtt + rttGain * rttMs;
    }
    s.rttLast = rttMs;
    s.rttSamples += 1;
  }

  /** Bytes moved to or from a peer over a bulk stream, taking durationMs and ending at nowMs. */
  recordTransfer(peer: string, bytes: number, durationMs: number, nowMs: number): void {
    if (!Number.isFinite(bytes) || bytes <= 0 || !Number.isFinite(durationMs) || durationMs < 0) return;
    const s = this.state(peer, nowMs);
    s.transfers.push({ bytes, durationMs: Math.max(durationMs, transferDurationFloorMs), endMs: nowMs });
    if (s.transfers.length > transfersPerPeerMax) s.transfers.splice(0, s.transfers.length - transfersPerPeerMax);
    s.totalBytes += bytes;
  }

  linkTo(peer: string, nowMs: number): LinkEstimate | undefined {
    const s = this.links.get(peer);
    return s === undefined ? undefined : this.estimate(peer, s, nowMs);
  }

  all(nowMs: number): LinkEstimate[] {
    return [...this.links.entries()].map(([peer, s]) => this.estimate(peer, s, nowMs));
  }

  forget(peer: string): void {
    this.links.delete(peer);
  }

  private estimate(peer: string, s: LinkState, nowMs: number): LinkEstimate {
    const from = nowMs - throughputWindowMs;
    s.transfers = s.transfers.filter((t) => t.endMs >= from);
    let bytes = 0;
    let busyMs = 0;
    for (const t of s.transfers) {
      bytes += t.bytes;
      busyMs += t.durationMs;
    }
    return {
      peer,
      rttMs: s.srtt,
      rttVarMs: s.rttvar,
      rttLastMs: s.rttLast,
      rttSamples: s.rttSamples,
      throughputBytesPerSec: busyMs > 0 ? (bytes * 1000) / busyMs : null,
      windowBytes: bytes,
      totalBytes: s.totalBytes,
      updatedAtMs: s.updatedAtMs,
    };
  }

  private state(peer: string, nowMs: number): LinkState {
    let s = this.links.get(peer);
    if (s === undefined) {
      if (this.links.size >= linkPeersMax) this.evictOldest();
      s = { srtt: null, rttvar: null, rttLast: null, rttSamples: 0, transfers: [], totalBytes: 0, updatedAtMs: nowMs };
      this.links.set(peer, s);
    }
    s.updatedAtMs = nowMs;
    return s;
  }

  private evictOldest(): void {
    let oldest: string | undefined;
    let oldestMs = Infinity;
    for (const [peer, s] of this.links) {
      if (s.updatedAtMs < oldestMs) {
        oldestMs = s.updatedAtMs;
        oldest = peer;
      }
    }
    if (oldest !== undefined) this.links.delete(oldest);
  }
}
