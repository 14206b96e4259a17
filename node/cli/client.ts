// A small typed client for the node's REST API, shared by every CLI command.
import { CliApiError, CliConnectionError } from './exit.js';
import { problemContentType, makeProblem, type Problem } from '../api/problem.js';

export const apiUrlDefault = 'http://127.0.0.1:8780';
export const requestTimeoutMsDefault = 30_000;

export interface ClientOptions {
  baseUrl: string;
  token?: string | undefined;
  timeoutMs?: number;
}

export interface StateRead<T> {
  body: T;
  /** linearizable, stale or local (a node without a cluster); null from a node that does not say. */
  consistency: string | null;
  dataAgeMs: number | null;
}

export class ApiClient {
  readonly baseUrl: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? requestTimeoutMsDefault;
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  delete<T>(path: string): Promise<T> {
    return this.request<T>('DELETE', path);
  }

  patch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body);
  }

  /**
   * A read of the cluster state: linearizable, or this node's state as it is with `stale`. Says how the node
   * served it (NovaCron-Read-Consistency) and how old the data may be (NovaCron-Data-Age-Ms).
   */
  async read<T>(path: string, stale = false): Promise<StateRead<T>> {
    const sep = path.includes('?') ? '&' : '?';
    const { res, body } = await this.exchange<T>('GET', stale ? `${path}${sep}stale=true` : path);
    const age = res.headers.get('novacron-data-age-ms');
    return { body, consistency: res.headers.get('novacron-read-consistency'), dataAgeMs: age === null ? null : Number(age) };
  }

  /**
   * POSTs a byte stream as the body (not buffered: fetch streams it with duplex 'half'), e.g. an image upload.
   * `timeoutMs` bounds the whole exchange; uploads pass a longer one than the client default.
   */
  async postStream<T>(path: string, body: ReadableStream<Uint8Array>, options: { contentType: string; contentLength?: number; timeoutMs?: number }): Promise<T> {
    const url = `${this.baseUrl}${path}`;
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const headers: Record<string, string> = { accept: `application/json, ${problemContentType}`, 'content-type': options.contentType };
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    if (options.contentLength !== undefined) headers['content-length'] = String(options.contentLength);
    let res: Response;
    try {
      res = await fetch(url, { method: 'POST', headers, body, duplex: 'half', signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      throw new CliConnectionError(url, `cannot reach ${this.baseUrl}: ${describeFetchError(err, timeoutMs)}`, { cause: err });
    }
    const text = await res.text();
    if (!res.ok) throw new CliApiError(res.status, parseProblem(res.status, text));
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new CliApiError(res.status, makeProblem('internal', `the node answered ${url} with a body that is not JSON`));
    }
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    return (await this.exchange<T>(method, path, body)).body;
  }

  private async exchange<T>(method: string, path: string, body?: unknown): Promise<{ res: Response; body: T }> {
    const url = `${this.baseUrl}${path}`;
    const headers: Record<string, string> = { accept: `application/json, ${problemContentType}` };
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers,
        body: body === undefined ? null : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      throw new CliConnectionError(url, `cannot reach ${this.baseUrl}: ${describeFetchError(err, this.timeoutMs)}`, { cause: err });
    }
    const text = await res.text();
    if (!res.ok) throw new CliApiError(res.status, parseProblem(res.status, text));
    if (text === '') return { res, body: undefined as T };
    try {
      return { res, body: JSON.parse(text) as T };
    } catch {
      throw new CliApiError(res.status, makeProblem('internal', `the node answered ${url} with a body that is not JSON`));
    }
  }
}

function parseProblem(status: number, text: string): Problem {
  try {
    const parsed = JSON.parse(text) as Partial<Problem>;
    if (typeof parsed.code === 'string' && typeof parsed.detail === 'string') {
      return { ...makeProblem(parsed.code, parsed.detail), ...parsed, status };
    }
  } catch {
    // fall through: not a problem+json body (a proxy, or not a NovaCron node)
  }
  const code = status >= 500 ? 'internal' : 'bad_request';
  const problem = makeProblem(code, `HTTP ${status}: ${text.slice(0, 200) || 'no body'}`);
  problem.status = status;
  return problem;
}

function describeFetchError(err: unknown, timeoutMs: number): string {
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) return `no answer within ${timeoutMs} ms`;
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  if (cause?.code !== undefined) return `${cause.code}${cause.message !== undefined ? ` (${cause.message})` : ''}`;
  // undici says only "fetch failed"; the reason (e.g. "bad port") is in the cause.
  if (cause?.message !== undefined) return cause.message;
  return err instanceof Error ? err.message : String(err);
}
