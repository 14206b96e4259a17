// The logger mesh/ needs: pino-compatible, so the node passes its own child logger in.

type LogFn = {
  (obj: Record<string, unknown>, msg?: string): void;
  (msg: string): void;
};

export interface MeshLogger {
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  child(bindings: Record<string, unknown>): MeshLogger;
}

/** A logger that drops everything: for tests and benchmarks that do not care. */
export const silentLogger: MeshLogger = {
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
  child: () => silentLogger,
};
