// Structured JSON logs with pino on stdout, and optionally a size-bounded node.log in the data dir.
// No pino transports: they run in worker threads, which break inside the single-file bundle.
import { renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import pino, { type Logger, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

export const logRotateCheckIntervalMs = 10_000;

export interface LogOptions {
  level: string;
  /** When set, also log to <dir>/node.log and rotate it at maxBytes. */
  file?: { dir: string; maxBytes: number } | undefined;
  base?: Record<string, unknown>;
  /** Where stdout records go; tests pass a collector. */
  stdout?: DestinationStream;
}

export interface NodeLogger {
  logger: Logger;
  close(): void;
}

export function createLogger(options: LogOptions): NodeLogger {
  const streams: pino.StreamEntry[] = [{ stream: options.stdout ?? pino.destination({ fd: 1, sync: false }) }];
  let timer: NodeJS.Timeout | undefined;
  let fileDest: ReturnType<typeof pino.destination> | undefined;
  if (options.file !== undefined) {
    const path = join(options.file.dir, 'node.log');
    const maxBytes = options.file.maxBytes;
    const dest = pino.destination({ dest: path, sync: false, mkdir: true });
    fileDest = dest;
    streams.push({ stream: dest });
    timer = setInterval(() => {
      try {
        if (statSync(path).size >= maxBytes) {
          renameSync(path, `${path}.1`); // one generation: the bound is 2 × maxBytes on disk
          dest.reopen();
        }
      } catch {
        // the file may be briefly missing between rename and reopen
      }
    }, logRotateCheckIntervalMs);
    timer.unref();
  }
  const logger = pino(
    {
      level: options.level,
      base: { pid: process.pid, ...options.base },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.multistream(streams.map((s) => ({ ...s, level: 'trace' as const }))),
  );
  return {
    logger,
    close: () => {
      if (timer !== undefined) clearInterval(timer);
      fileDest?.flushSync();
    },
  };
}
