// `novacron node …`: run a node in the foreground and inspect the configuration keys it accepts.
import type { Command } from 'commander';
import type { ContextFactory } from '../program.js';
import { runDaemon } from '../../daemon.js';
import { configLeaves } from '../../config/load.js';
import { configDefaults } from '../../config/schema.js';
import { table } from '../output.js';
import { CliUsageError } from '../exit.js';

interface StartOptions {
  config?: string;
  dataDir?: string;
  name?: string;
  apiHost?: string;
  apiPort?: string;
  logLevel?: string;
  set: string[];
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function registerNodeCommands(program: Command, context: ContextFactory): void {
  const node = program.command('node').description('run and inspect NovaCron nodes');

  node
    .command('start')
    .description('run this machine\'s node in the foreground until SIGTERM or SIGINT')
    .option('-c, --config <file>', 'config file (YAML or JSON); default <data-dir>/config.yaml when present')
    .option('-d, --data-dir <dir>', 'data directory')
    .option('--name <name>', 'node name')
    .option('--api-host <host>', 'API listen address')
    .option('--api-port <port>', 'API listen port')
    .option('--log-level <level>', 'fatal, error, warn, info, debug or trace')
    .option('--set <key=value>', 'set any config key (repeatable), e.g. --set log.file=true', collect, [])
    .action(async (opts: StartOptions) => {
      const overrides: Array<{ key: string; value: string; source: string }> = [];
      const flag = (key: string, value: string | undefined, source: string): void => {
        if (value !== undefined) overrides.push({ key, value, source });
      };
      flag('dataDir', opts.dataDir, '--data-dir');
      flag('node.name', opts.name, '--name');
      flag('api.host', opts.apiHost, '--api-host');
      flag('api.port', opts.apiPort, '--api-port');
      flag('log.level', opts.logLevel, '--log-level');
      for (const pair of opts.set) {
        const eq = pair.indexOf('=');
        if (eq <= 0) throw new CliUsageError(`--set expects key=value, got "${pair}"`);
        overrides.push({ key: pair.slice(0, eq), value: pair.slice(eq + 1), source: `--set ${pair.slice(0, eq)}` });
      }
      process.exitCode = await runDaemon({ configFile: opts.config, overrides });
    });

  node
    .command('config-keys')
    .description('list every configuration key with its environment variable and default')
    .action((_opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const defaults = configDefaults() as unknown as Record<string, unknown>;
      const rows = configLeaves().map((l) => ({ ...l, default: JSON.stringify(l.key.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown>)[k], defaults)) }));
      ctx.output.result(rows, (r) =>
        table(r, [
          { header: 'key', value: (x) => x.key },
          { header: 'env', value: (x) => x.env },
          { header: 'default', value: (x) => x.default },
          { header: 'description', value: (x) => x.description },
        ]),
      );
    });
}
