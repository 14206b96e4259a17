// `novacron events [--after N]`: follows the cluster's state changes (GET /v1/events, server-sent events) and
// prints one line per event, human or JSON lines (--json), until Ctrl-C or the node closes the stream.
import type { Command } from 'commander';
import type { ContextFactory } from '../program.js';
import { CliApiError, CliConnectionError, CliUsageError } from '../exit.js';
import { makeProblem, problemContentType, type Problem } from '../../api/problem.js';

export interface StreamEvent {
  /** SSE `event:` field (`message` when absent). */
  event: string;
  id: string | null;
  data: string;
}

/** Incremental text/event-stream parser: feed chunks, get complete events (comments are skipped). */
export class SseParser {
  private buffer = '';
  private event = '';
  private id: string | null = null;
  private data: string[] = [];

  push(chunk: string): StreamEvent[] {
    this.buffer += chunk;
    const out: StreamEvent[] = [];
    let nl: number;
    while ((nl = this.buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + (this.buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (this.data.length > 0) out.push({ event: this.event === '' ? 'message' : this.event, id: this.id, data: this.data.join('\n') });
        this.event = '';
        this.data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') this.event = value;
      else if (field === 'data') this.data.push(value);
      else if (field === 'id') this.id = value;
    }
    return out;
  }
}

interface EventData {
  index?: number;
  type?: string;
  ids?: string[];
  at?: number;
  reason?: string;
  /** migration.* events: the record after the change. */
  migration?: { phase: string; reason?: string | null; progress?: { step?: unknown; bytesTransferred?: unknown } };
}

export function formatEventLine(e: StreamEvent): string {
  let d: EventData = {};
  try {
    d = JSON.parse(e.data) as EventData;
  } catch {
    return `${e.event} ${e.data}`;
  }
  if (e.event === 'reset') return `reset (index ${d.index ?? '?'}): ${d.reason ?? ''} — re-read the cluster state`;
  const when = typeof d.at === 'number' ? new Date(d.at).toISOString() : '-';
  const line = `${when}  ${String(d.index ?? e.id ?? '-').padStart(6)}  ${(d.type ?? e.event).padEnd(20)}  ${(d.ids ?? []).join(',')}`;
  const m = d.migration;
  if (m === undefined) return line;
  const moved = typeof m.progress?.bytesTransferred === 'number' ? ` ${(m.progress.bytesTransferred / 1048576).toFixed(1)} MiB moved` : '';
  return `${line}  ${m.phase}${typeof m.progress?.step === 'string' ? ` (${m.progress.step})` : ''}${moved}${m.reason === null || m.reason === undefined ? '' : `: ${m.reason}`}`;
}

function parseNonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new CliUsageError(`expected a whole number ≥ 0, got "${value}"`);
  return n;
}

function problemFrom(status: number, text: string): Problem {
  try {
    const p = JSON.parse(text) as Partial<Problem>;
    if (typeof p.code === 'string' && typeof p.detail === 'string') return { ...makeProblem(p.code, p.detail), ...p, status };
  } catch {
    // not problem+json
  }
  const problem = makeProblem(status >= 500 ? 'internal' : 'bad_request', `HTTP ${status}: ${text.slice(0, 200) || 'no body'}`);
  problem.status = status;
  return problem;
}

export function registerEventsCommand(program: Command, context: ContextFactory, out: NodeJS.WritableStream): void {
  program
    .command('events')
    .description('follow cluster state changes (server-sent events) until Ctrl-C; needs a viewer token')
    .option('--after <index>', 'first replay the events after this Raft index (as far as the node still holds them)', parseNonNegativeInt)
    .action(async (opts: { after?: number }, cmd: Command) => {
      const ctx = context(cmd);
      const base = ctx.options.api.replace(/\/+$/, '');
      const url = `${base}/v1/events${opts.after === undefined ? '' : `?after=${opts.after}`}`;
      const headers: Record<string, string> = { accept: `text/event-stream, ${problemContentType}` };
      if (ctx.options.token !== undefined) headers.authorization = `Bearer ${ctx.options.token}`;
      // The timeout guards connecting only: an open stream may stay quiet (between heartbeats) for long.
      const abort = new AbortController();
      const connectTimer = setTimeout(() => abort.abort(new Error(`no answer within ${ctx.options.timeoutMs} ms`)), ctx.options.timeoutMs);
      let res: Response;
      try {
        res = await fetch(url, { headers, signal: abort.signal });
      } catch (err) {
        throw new CliConnectionError(url, `cannot reach ${base}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      } finally {
        clearTimeout(connectTimer);
      }
      if (!res.ok || res.body === null) throw new CliApiError(res.status, problemFrom(res.status, await res.text()));
      ctx.output.info(`following ${url} (Ctrl-C to stop)`);
      const parser = new SseParser();
      const decoder = new TextDecoder();
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          for (const e of parser.push(decoder.decode(chunk, { stream: true }))) {
            if (ctx.options.json) {
              let data: unknown = e.data;
              try {
                data = JSON.parse(e.data);
              } catch {
                // keep the text
              }
              out.write(`${JSON.stringify({ event: e.event, id: e.id, data })}\n`);
            } else {
              out.write(`${formatEventLine(e)}\n`);
            }
          }
        }
      } catch (err) {
        throw new CliConnectionError(url, `event stream from ${base} broke: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      throw new CliConnectionError(url, `the node at ${base} closed the event stream`);
    });
}
