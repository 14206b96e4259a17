// Human output (aligned tables, key/value lists) by default, machine output with --json.

export interface Column<T> {
  header: string;
  value: (row: T) => string | number | boolean | null | undefined;
}

export class Output {
  constructor(
    readonly json: boolean,
    private readonly out: NodeJS.WritableStream = process.stdout,
    private readonly err: NodeJS.WritableStream = process.stderr,
  ) {}

  /** Prints data as JSON, or through the human renderer. */
  result<T>(data: T, human: (data: T) => string): void {
    this.out.write(this.json ? `${JSON.stringify(data, null, 2)}\n` : ensureNewline(human(data)));
  }

  error(message: string, extra: Record<string, unknown> = {}): void {
    if (this.json) this.err.write(`${JSON.stringify({ error: { message, ...extra } })}\n`);
    else this.err.write(`error: ${message}\n`);
  }

  info(message: string): void {
    if (!this.json) this.err.write(ensureNewline(message));
  }
}

function ensureNewline(s: string): string {
  return s.endsWith('\n') ? s : `${s}\n`;
}

export function table<T>(rows: T[], columns: Column<T>[]): string {
  const cells = rows.map((r) => columns.map((c) => formatCell(c.value(r))));
  const widths = columns.map((c, i) => Math.max(c.header.length, ...cells.map((row) => row[i]?.length ?? 0)));
  const line = (values: string[]): string => values.map((v, i) => v.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(columns.map((c) => c.header.toUpperCase())), ...cells.map(line)].join('\n');
}

export function keyValues(pairs: Array<[string, string | number | boolean | null | undefined]>): string {
  const width = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width + 2)}${formatCell(v)}`).join('\n');
}

function formatCell(v: string | number | boolean | null | undefined): string {
  if (v === null || v === undefined || v === '') return '-';
  return String(v);
}

export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** A progress bar redraws at most this often. */
export const progressRedrawMs = 200;
const progressBarChars = 30;

/** A one-line progress bar on a TTY; nothing otherwise. `detail` replaces the default done/total figures. */
export function progressBar(out: NodeJS.WriteStream | null, label: string, total: number): { update(done: number, detail?: string, newTotal?: number): void; end(detail?: string): void } {
  let last = 0;
  let whole = total;
  let lastDone = 0;
  const draw = (done: number, detail?: string): void => {
    if (out === null) return;
    const frac = whole === 0 ? 1 : Math.min(done / whole, 1);
    const filled = Math.round(frac * progressBarChars);
    // \x1b[K clears what a longer previous line left behind.
    out.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(progressBarChars - filled)}] ${Math.floor(frac * 100)}% ${detail ?? `${fmtBytes(done)}/${fmtBytes(whole)}`}\x1b[K`);
  };
  return {
    update(done, detail, newTotal) {
      if (newTotal !== undefined) whole = newTotal;
      lastDone = done;
      const now = Date.now();
      if (now - last < progressRedrawMs) return;
      last = now;
      draw(done, detail);
    },
    end(detail) {
      draw(detail === undefined ? whole : lastDone, detail);
      out?.write('\n');
    },
  };
}
