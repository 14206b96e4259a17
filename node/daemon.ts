// Runs a node in the foreground until SIGTERM/SIGINT, then shuts down within the configured deadline.
import { loadConfig, type LoadOptions } from './config/load.js';
import { ConfigError, DataDirError, errorMessage } from './errors.js';
import { createLogger } from './log.js';
import { NovaNode } from './node.js';
import { dataDirLayout } from './datadir.js';

/** Exit codes of `novacron node start`. */
export const DaemonExit = {
  ok: 0,
  failure: 1,
  /** The configuration or the data directory is unusable: fix it, do not restart in a loop. */
  config: 2,
} as const;

export async function runDaemon(options: LoadOptions): Promise<number> {
  let loaded;
  try {
    loaded = loadConfig(options);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`novacron: ${err.message}\n`);
      return DaemonExit.config;
    }
    throw err;
  }
  const { config } = loaded;
  const log = createLogger({
    level: config.log.level,
    file: config.log.file ? { dir: dataDirLayout(config.dataDir).logs, maxBytes: config.log.fileMaxBytes } : undefined,
    base: { node: config.node.name },
  });
  const logger = log.logger;
  logger.info({ configFile: loaded.configFile }, 'configuration loaded');

  let node: NovaNode;
  try {
    node = await NovaNode.start({ config, logger });
  } catch (err) {
    const isConfig = err instanceof DataDirError;
    logger.fatal({ err }, 'node failed to start');
    process.stderr.write(`novacron: ${errorMessage(err)}\n`);
    log.close();
    return isConfig ? DaemonExit.config : DaemonExit.failure;
  }

  const exitCode = await new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals): void => {
      signals += 1;
      if (signals > 1) {
        logger.warn({ signal }, 'second signal: exiting without waiting for shutdown');
        resolve(DaemonExit.failure);
        return;
      }
      const deadline = setTimeout(() => {
        logger.error({ timeoutMs: config.shutdown.timeoutMs }, 'graceful shutdown timed out');
        resolve(DaemonExit.failure);
      }, config.shutdown.timeoutMs);
      deadline.unref();
      node.stop(`signal ${signal}`).then(
        () => resolve(DaemonExit.ok),
        (err: unknown) => {
          logger.error({ err }, 'shutdown failed');
          resolve(DaemonExit.failure);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    process.on('uncaughtException', (err) => {
      logger.fatal({ err }, 'uncaught exception');
      resolve(DaemonExit.failure);
    });
    process.on('unhandledRejection', (err) => {
      logger.fatal({ err }, 'unhandled promise rejection');
      resolve(DaemonExit.failure);
    });
  });
  log.close();
  return exitCode;
}
