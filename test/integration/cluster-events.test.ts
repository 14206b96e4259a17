// Proves the event stream (GET /v1/events, server-sent events) on a real node process after `cluster init`:
// token.create then token.revoke arrive with increasing ids (Raft indexes), a reconnect with Last-Event-ID
// replays only later events, an index the node does not hold gets `event: reset`, a viewer token may
// subscribe, no token is 401, and `novacron events --json` prints JSON lines.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, spawnCli, waitForLog } from '../support/proc.js';

interface Sse {
  event: string;
  id: string | null;
  data: { index: number; type: string; ids: string[]; at: number; reason?: string };
}

let child: ChildProcess;
let dataDir: string;
let url: string;
let admin: string;

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'nc-events-'));
  child = spawnCli(['node', 'start', '--data-dir', dataDir, '--api-host', '127.0.0.1', '--api-port', '0', '--name', 'events-1']);
  url = (await waitForLog(child, (r) => r.msg === 'node started')).api as string;
  const init = await runCli(['cluster', 'init', '--api', url, '--json']);
  expect(init.code, init.stderr).toBe(0);
  admin = (JSON.parse(init.stdout) as { adminToken: string }).adminToken;
}, 30_000);

afterAll(() => {
  if (child.exitCode === null) child.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
});

/** An open stream: events are collected as they arrive; next(n) waits for n more. */
class Stream {
  readonly events: Sse[] = [];
  readonly raw: string[] = [];
  private buf = '';
  private readonly abort = new AbortController();
  private waiters: Array<() => void> = [];

  static async open(token: string | undefined, headers: Record<string, string> = {}, query = ''): Promise<{ res: Response; stream: Stream }> {
    const s = new Stream();
    const h: Record<string, string> = { ...headers };
    if (token !== undefined) h.authorization = `Bearer ${token}`;
    const res = await fetch(`${url}/v1/events${query}`, { headers: h, signal: s.abort.signal });
    if (res.ok && res.body !== null) void s.pump(res.body.getReader());
    return { res, stream: s };
  }

  private async pump(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        this.buf += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = this.buf.indexOf('\n\n')) >= 0) {
          const block = this.buf.slice(0, end);
          this.buf = this.buf.slice(end + 2);
          this.raw.push(block);
          const fields: Record<string, string> = {};
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const i = line.indexOf(': ');
            if (i > 0) fields[line.slice(0, i)] = line.slice(i + 2);
          }
          if (fields.data !== undefined) this.events.push({ event: fields.event ?? 'message', id: fields.id ?? null, data: JSON.parse(fields.data) as Sse['data'] });
          for (const w of this.waiters.splice(0)) w();
        }
      }
    } catch {
      // aborted
    }
  }

  async waitFor(count: number, timeoutMs = 10_000): Promise<Sse[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.events.length < count) {
      if (Date.now() > deadline) throw new Error(`expected ${count} events, got ${JSON.stringify(this.events)}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
    return this.events.slice(0, count);
  }

  close(): void {
    this.abort.abort();
  }
}

function req(path: string, init: { method?: string; token?: string; body?: string } = {}): Promise<Response> {
  const headers: Record<string, string> = {};
  if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`;
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  return fetch(`${url}${path}`, { method: init.method ?? 'GET', headers, body: init.body ?? null });
}

describe('cluster event stream on a node process', () => {
  let lastId = '';
  let viewerSecret = '';

  it('streams token.create then token.revoke with increasing ids', async () => {
    const { res, stream } = await Stream.open(admin);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    try {
      const created = await req('/v1/tokens', { method: 'POST', token: admin, body: JSON.stringify({ name: 'watcher', role: 'viewer' }) });
      expect(created.status).toBe(201);
      const { token, secret } = (await created.json()) as { token: { id: string }; secret: string };
      viewerSecret = secret;
      const temp = await req('/v1/tokens', { method: 'POST', token: admin, body: JSON.stringify({ name: 'temp', role: 'viewer' }) });
      const tempId = ((await temp.json()) as { token: { id: string } }).token.id;
      expect((await req(`/v1/tokens/${tempId}`, { method: 'DELETE', token: admin })).status).toBe(200);

      const [a, b, c] = await stream.waitFor(3);
      expect([a!.event, b!.event, c!.event]).toEqual(['token.create', 'token.create', 'token.revoke']);
      expect(a!.data).toMatchObject({ type: 'token.create', ids: [token.id] });
      expect(c!.data).toMatchObject({ type: 'token.revoke', ids: [tempId] });
      const ids = [a!, b!, c!].map((e) => Number(e.id));
      expect(ids[0]).toBeGreaterThan(1); // cluster.init came first
      expect(ids[1]).toBeGreaterThan(ids[0]!);
      expect(ids[2]).toBeGreaterThan(ids[1]!);
      for (const e of [a!, b!, c!]) {
        expect(e.data.index).toBe(Number(e.id));
        expect(Math.abs(e.data.at - Date.now())).toBeLessThan(60_000);
      }
      lastId = b!.id!;
    } finally {
      stream.close();
    }
  }, 30_000);

  it('replays only later events after Last-Event-ID (and ?after=), resets when too far ahead', async () => {
    const { res, stream } = await Stream.open(admin, { 'last-event-id': lastId });
    expect(res.status).toBe(200);
    const [only] = await stream.waitFor(1);
    expect(only).toMatchObject({ event: 'token.revoke' });
    expect(Number(only!.id)).toBeGreaterThan(Number(lastId));
    await new Promise((r) => setTimeout(r, 300));
    expect(stream.events).toHaveLength(1);
    stream.close();

    const all = await Stream.open(admin, {}, '?after=0');
    const replayed = await all.stream.waitFor(4);
    expect(replayed.map((e) => e.event)).toEqual(['cluster.init', 'token.create', 'token.create', 'token.revoke']);
    all.stream.close();

    const ahead = await Stream.open(admin, { 'last-event-id': '999999' });
    const [reset] = await ahead.stream.waitFor(1);
    expect(reset).toMatchObject({ event: 'reset' });
    expect(reset!.data.reason).toMatch(/ahead/);
    ahead.stream.close();

    expect((await req('/v1/events?after=-1', { token: admin })).status).toBe(400);
  }, 30_000);

  it('lets a viewer subscribe, refuses no token with 401, and documents the stream in OpenAPI', async () => {
    const { res, stream } = await Stream.open(viewerSecret);
    expect(res.status).toBe(200);
    stream.close();
    const { res: none } = await Stream.open(undefined);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
    const { res: wrong } = await Stream.open('ncapi_wrong');
    expect(wrong.status).toBe(401);

    const doc = (await (await req('/v1/openapi.json')).json()) as { paths: Record<string, { get?: { description?: string; security?: unknown } }> };
    const op = doc.paths['/v1/events']?.get;
    expect(op?.description).toMatch(/event: <type>/);
    expect(op?.security).toEqual([{ bearerAuth: [] }]);
  }, 30_000);

  it('`novacron events --after 0 --json` prints JSON lines', async () => {
    const cli = spawnCli(['events', '--after', '0', '--json', '--api', url, '--token', viewerSecret]);
    let out = '';
    cli.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 10_000;
    while (out.split('\n').filter((l) => l !== '').length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    cli.kill('SIGINT');
    const lines = out.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { event: string; id: string; data: { type: string } });
    expect(lines.map((l) => l.event)).toEqual(['cluster.init', 'token.create', 'token.create', 'token.revoke']);
    expect(lines[3]!.data.type).toBe('token.revoke');
  }, 30_000);
});
