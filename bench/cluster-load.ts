// Closed-loop load generator of the cluster benchmark, shared by the NovaCron and the etcd side: N client loops,
// each with one operation outstanding (the next starts when the previous answered), a warm-up, then a measured
// window; latencies and errors of the operations that finished inside the window.
import { performance } from 'node:perf_hooks';
import { round, summarize } from './raft-ipc.js';

/** How often progress is printed during the measured window. */
const progressIntervalMs = 2000;

/** One operation of client `client`; `seq` counts that client's operations from 0. Rejects on any failure. */
export type Operation = (client: number, seq: number) => Promise<void>;

export interface LoadOptions {
  /** Printed in progress lines. */
  name: string;
  clients: number;
  warmupMs: number;
  measureMs: number;
  /** Maps a failure to a short stable kind (e.g. `http_503`, `DEADLINE_EXCEEDED`). */
  classify(err: unknown): string;
  log(line: string): void;
  /** Cumulative CPU seconds of the server processes (all members), for the CPU cost per operation. */
  serverCpuSeconds(): number;
}

export interface LoadResult {
  /** Operations answered successfully inside the window. */
  ops: number;
  seconds: number;
  opsPerSec: number;
  latencyMs: { p50: number; p99: number; mean: number; max: number };
  /** Failures inside the window, by kind. */
  errors: Record<string, number>;
  errorCount: number;
  /** CPU time of the bench process (the load generator and the client library) per successful operation. */
  clientCpuUsPerOp: number;
  /** CPU time of all server processes together per successful operation. */
  serverCpuUsPerOp: number;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

export async function runLoad(op: Operation, o: LoadOptions): Promise<LoadResult> {
  let measuring = false;
  let stopped = false;
  let windowStart = 0;
  let ops = 0;
  const latencies: number[] = [];
  const errors: Record<string, number> = {};

  const client = async (c: number): Promise<void> => {
    for (let seq = 0; !stopped; seq++) {
      const t0 = performance.now();
      try {
        await op(c, seq);
        if (measuring && t0 >= windowStart) {
          ops++;
          latencies.push(performance.now() - t0);
        }
      } catch (err) {
        if (measuring && t0 >= windowStart) {
          const kind = o.classify(err);
          errors[kind] = (errors[kind] ?? 0) + 1;
        }
      }
    }
  };

  const loops = Array.from({ length: o.clients }, (_, c) => client(c));
  try {
    await sleep(o.warmupMs);
    // Only operations started inside the window count (and must finish inside it): no warm-up latency leaks in.
    windowStart = performance.now();
    measuring = true;
    const cpu0 = process.cpuUsage();
    const serverCpu0 = o.serverCpuSeconds();
    for (let left = o.measureMs; left > 0; left -= Math.min(left, progressIntervalMs)) {
      await sleep(Math.min(left, progressIntervalMs));
      const errs = Object.values(errors).reduce((a, b) => a + b, 0);
      o.log(`  ${o.name}: ${round((performance.now() - windowStart) / 1000, 1)} s, ${ops} ok, ${errs} failed`);
    }
    measuring = false;
    const seconds = (performance.now() - windowStart) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const serverCpu = o.serverCpuSeconds() - serverCpu0;
    const l = summarize(latencies);
    const errorCount = Object.values(errors).reduce((a, b) => a + b, 0);
    return {
      ops,
      seconds: round(seconds, 3),
      opsPerSec: round(ops / seconds, 1),
      latencyMs: { p50: l.p50, p99: l.p99, mean: l.mean, max: l.max },
      errors: { ...errors },
      errorCount,
      clientCpuUsPerOp: ops === 0 ? NaN : round((cpu.user + cpu.system) / ops, 1),
      serverCpuUsPerOp: ops === 0 ? NaN : round((serverCpu * 1e6) / ops, 1),
    };
  } finally {
    measuring = false;
    stopped = true;
    // Every loop ends after its outstanding operation, which the operation's own timeout bounds.
    await Promise.all(loops);
  }
}
