// The `novacron` command line: global options, command groups, and the mapping of failures to exit codes.
// Each group lives in commands/<group>.ts and registers itself on the program.
import { Command, CommanderError, Option } from 'commander';
import { ApiClient, apiUrlDefault, requestTimeoutMsDefault } from './client.js';
import { CliApiError, CliUsageError, ExitCode, exitCodeFor } from './exit.js';
import { Output } from './output.js';
import { registerNodeCommands } from './commands/node.js';
import { registerVersionCommand } from './commands/version.js';
import { registerClusterCommands } from './commands/mesh.js';
import { registerNodeCommands as registerNodeMemberCommands } from './commands/nodes.js';
import { registerClusterInitStatusCommands } from './commands/cluster.js';
import { registerTokenCommands } from './commands/token.js';
import { registerEventsCommand } from './commands/events.js';
import { registerMigrationCommands } from './commands/migrations.js';
import { registerVmCommands } from './commands/vms.js';
import { registerImageCommands } from './commands/images.js';
import { novacronVersion } from '../version.js';

export interface GlobalOptions {
  api: string;
  token?: string;
  json: boolean;
  timeoutMs: number;
}

export interface CliContext {
  output: Output;
  options: GlobalOptions;
  client(): ApiClient;
}

export type ContextFactory = (cmd: Command) => CliContext;

export interface CliIo {
  out: NodeJS.WritableStream;
  err: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

export function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new CliUsageError(`expected a positive whole number, got "${value}"`);
  return n;
}

export function buildProgram(io: CliIo): { program: Command; context: ContextFactory } {
  const program = new Command('novacron')
    .description('NovaCron: an edge-first peer-to-peer cluster for virtual machines')
    .version(novacronVersion, '-V, --cli-version', 'print the CLI version')
    .addOption(new Option('--api <url>', 'API of any node of the cluster').env('NOVACRON_API').default(apiUrlDefault))
    .addOption(new Option('--token <token>', 'API token').env('NOVACRON_TOKEN'))
    .addOption(new Option('--json', 'machine-readable JSON output').default(false))
    .addOption(new Option('--timeout-ms <ms>', 'request timeout').default(requestTimeoutMsDefault).argParser(parsePositiveInt))
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.out.write(s),
      writeErr: (s) => io.err.write(s),
    });

  const context: ContextFactory = (cmd) => {
    const options = cmd.optsWithGlobals<GlobalOptions>();
    const output = new Output(options.json, io.out, io.err);
    return {
      output,
      options,
      client: () => new ApiClient({ baseUrl: options.api, token: options.token, timeoutMs: options.timeoutMs }),
    };
  };

  registerVersionCommand(program, context);
  registerNodeCommands(program, context);
  registerNodeMemberCommands(program, context);
  registerClusterCommands(program, context);
  registerClusterInitStatusCommands(program, context);
  registerTokenCommands(program, context);
  registerImageCommands(program, context);
  registerEventsCommand(program, context, io.out);
  registerVmCommands(program, context);
  registerMigrationCommands(program, context);
  program.commands.forEach(applyExitOverride);
  return { program, context };
}

function applyExitOverride(cmd: Command): void {
  cmd.exitOverride();
  cmd.commands.forEach(applyExitOverride);
}

export async function runCli(argv: string[], io: CliIo = { out: process.stdout, err: process.stderr, env: process.env }): Promise<number> {
  const { program } = buildProgram(io);
  const json = argv.includes('--json');
  const output = new Output(json, io.out, io.err);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and --cli-version exit through here with code 0; everything else commander raises is a usage error.
      return err.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    }
    const code = exitCodeFor(err);
    if (err instanceof CliApiError) output.error(err.message, { code: err.code, status: err.status });
    else if (err instanceof Error) output.error(err.message, { code: (err as { code?: string }).code ?? 'failure' });
    else output.error(String(err));
    return code;
  }
}
