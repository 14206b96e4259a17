// `novacron version`: the CLI's version and that of the node it talks to.
import type { Command } from 'commander';
import type { ContextFactory } from '../program.js';
import type { VersionInfo } from '../../api/routes/system.js';
import { keyValues } from '../output.js';
import { novacronVersion } from '../../version.js';
import { CliConnectionError } from '../exit.js';

interface VersionReport {
  client: { version: string };
  server?: VersionInfo;
}

export function registerVersionCommand(program: Command, context: ContextFactory): void {
  program
    .command('version')
    .description('print the CLI version and the version of the node at --api')
    .option('--client', 'only the CLI version; do not contact a node')
    .action(async (opts: { client?: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const report: VersionReport = { client: { version: novacronVersion } };
      if (opts.client !== true) {
        try {
          report.server = await ctx.client().get<VersionInfo>('/v1/version');
        } catch (err) {
          // The client half is still useful when the node is down: print it, then fail with the connection code.
          if (err instanceof CliConnectionError) ctx.output.result(report, renderVersion);
          throw err;
        }
      }
      ctx.output.result(report, renderVersion);
    });
}

function renderVersion(r: VersionReport): string {
  const pairs: Array<[string, string | number | boolean | null]> = [['client', r.client.version]];
  if (r.server !== undefined) {
    pairs.push(
      ['server', r.server.version],
      ['node', r.server.node.name],
      ['api', r.server.apiVersion],
      ['runtime', `node ${r.server.runtime.node} ${r.server.runtime.platform}/${r.server.runtime.arch}`],
      ['qemu', r.server.qemu.version === null ? `unavailable (${r.server.qemu.detail})` : `${r.server.qemu.version}${r.server.qemu.supported ? '' : ' (unsupported)'}`],
    );
  }
  return keyValues(pairs);
}
