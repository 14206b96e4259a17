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
