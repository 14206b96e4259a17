// REST helpers for the cluster integration tests: one bearer-token call with its status, headers and JSON body, a
// token write that never throws (a load generator records every outcome), and a child process's log collector.
import type { ChildProcess } from 'node:child_process';
import { parseLogLines, type LogRecord } from './proc.js';

export interface ApiAnswer<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
  /** Set when no HTTP answer came at all (connection refused, reset, timed out). */
  networkError?: string;
}

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
}

/** One REST call; a network failure is an answer with status 0 and `networkError`, never a throw. */
export async function api<T = unknown>(
  base: string,
  method: string,
  path: string,
  options: { token?: string; body?: unknown; timeoutMs?: number } = {},
): Promise<ApiAnswer<T>> {
  const headers: Record<string, string> = {};
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  try {
    const res = await fetch(`${base}${path}`, {
      method,
      headers,
      ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
      signal: AbortSignal.timeout(options.timeoutMs ?? 15_000),
    });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, headers: res.headers, body: body as T };
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code;
    return { status: 0, headers: new Headers(), body: undefined as T, networkError: cause ?? (err as Error).message };
  }
}

export interface TokenList {
  tokens: Array<{ id: string; name: string; role: string }>;
}

/** Token names a node holds: linearizable by default, or its local state with `stale`. Null unless 200. */
export async function tokenNames(base: string, admin: string, stale = false): Promise<string[] | null> {
  const r = await api<TokenList>(base, 'GET', `/v1/tokens${stale ? '?stale=true' : ''}`, { token: admin, timeoutMs: 10_000 });
  return r.status === 200 ? r.body.tokens.map((t) => t.name) : null;
}

/** A short outcome label for reports: the status and problem code, or the network error. */
export function outcome(r: ApiAnswer): string {
  if (r.status === 0) return `net:${r.networkError ?? '?'}`;
  const code = (r.body as Partial<Problem> | undefined)?.code;
  return typeof code === 'string' ? `${r.status}:${code}` : String(r.status);
}

/** Collects a child's pino log records from now on (attach right after spawning to see start-up lines). */
export function logCollector(child: ChildProcess): { records: LogRecord[]; has: (msg: string) => LogRecord | undefined } {
  const records: LogRecord[] = [];
  let buffer = '';
  child.stdout?.on('data', (d: Buffer) => {
    buffer += d.toString();
    const lines = buffer.split('\n');
    buffer = lines.pop() ?? '';
    records.push(...parseLogLines(lines.join('\n')));
  });
  return { records, has: (msg) => records.find((r) => r.msg === msg) };
}

/** Polls an async check until it yields a value, or throws after the bound. */
export async function pollFor<T>(what: string, boundMs: number, check: () => Promise<T | null | undefined | false>, pollMs = 100): Promise<T> {
  const deadline = Date.now() + boundMs;
  for (;;) {
    const v = await check();
    if (v !== null && v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${boundMs} ms`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/** One row of GET /v1/nodes: what the answering node knows of a member (raftRole from its Raft configuration). */
export interface NodeRow {
  id: string;
  name: string;
  role: string;
  raftRole: 'leader' | 'voter' | 'learner' | 'none';
  site: string;
  reachable: boolean;
  rttMs: number | null;
  match: number | null;
}

/** GET /v1/nodes on one node (linearizable unless `stale`); null unless 200. */
export async function nodeRows(base: string, token: string, stale = false): Promise<NodeRow[] | null> {
  const r = await api<{ nodes: NodeRow[] }>(base, 'GET', `/v1/nodes${stale ? '?stale=true' : ''}`, { token, timeoutMs: 5_000 });
  return r.status === 200 ? r.body.nodes : null;
}

/** A node process a test started: its data dir, API URL and peer id. */
export interface NodeProc {
  name: string;
  dataDir: string;
  child: ChildProcess;
  url: string;
  peerId: string;
}

/** A node process whose log the test reads, and the mesh address it got (a restart reuses it, as a configured port would). */
export interface LoggedNodeProc extends NodeProc {
  log: ReturnType<typeof logCollector>;
  meshListen: string;
}
