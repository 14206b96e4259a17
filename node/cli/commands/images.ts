// `novacron image import|list|show|fetch|delete`: base images through the REST API of any node. Import hashes the
// file here first and sends the SHA-256 with the upload, so the node keeps nothing unless it got exactly these bytes.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { Readable, Transform } from 'node:stream';
import type { ReadableStream } from 'node:stream/web';
import type { Command } from 'commander';
import type { CliContext, ContextFactory } from '../program.js';
import { CliUsageError } from '../exit.js';
import { fmtBytes, keyValues, progressBar, table } from '../output.js';
import { readState } from './nodes.js';

/** Uploads may take long: they are bounded by this, not the client's default request timeout. */
export const uploadTimeoutMs = 6 * 60 * 60_000;
/** Chunk size when hashing and streaming the file. */
const fileChunkBytes = 256 * 1024;
const formats = ['raw', 'qcow2', 'kernel', 'initrd'];

export interface ImageOut {
  id: string;
  name: string;
  sizeBytes: number;
  nodes: string[];
  addedAt: number | null;
  format: string | null;
  local: boolean;
}


export function formatImages(rows: ImageOut[]): string {
  return table(rows, [
    { header: 'name', value: (i) => i.name },
    { header: 'id', value: (i) => i.id.slice(0, 16) },
    { header: 'size', value: (i) => fmtBytes(i.sizeBytes) },
    { header: 'format', value: (i) => i.format ?? '' },
    { header: 'nodes', value: (i) => i.nodes.length },
    { header: 'here', value: (i) => (i.local ? 'yes' : 'no') },
  ]);
}

export function formatImage(i: ImageOut): string {
  return keyValues([
    ['name', i.name],
    ['id (sha256)', i.id],
    ['size', `${fmtBytes(i.sizeBytes)} (${i.sizeBytes} bytes)`],
    ['format', i.format],
    ['added', i.addedAt === null ? null : new Date(i.addedAt).toISOString()],
    ['held by', i.nodes.join(' ')],
    ['on this node', i.local ? 'yes' : 'no'],
  ]);
}

/** Hex SHA-256 of a file, read in chunks. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: fileChunkBytes })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}


export function registerImageCommands(program: Command, context: ContextFactory): void {
  const image = program.command('image').description('base images: content-addressed by SHA-256, fetched by nodes that need them');

  image
    .command('import')
    .description('upload a raw or qcow2 image (or a kernel/initrd) to the node; it is hashed here and verified there')
    .argument('<file>', 'image file')
    .option('--name <name>', 'image name (default: the file name)')
    .option('--format <format>', `declare the format: ${formats.join(', ')} (default: detected by the node)`)
    .action(async (file: string, opts: { name?: string; format?: string }, cmd: Command) => {
      const ctx = context(cmd);
      if (opts.format !== undefined && !formats.includes(opts.format)) throw new CliUsageError(`--format must be one of ${formats.join(', ')}`);
      const path = resolve(file);
      let size: number;
      try {
        const st = await stat(path);
        if (!st.isFile()) throw new CliUsageError(`${file} is not a regular file`);
        size = st.size;
      } catch (err) {
        if (err instanceof CliUsageError) throw err;
        throw new CliUsageError(`cannot read ${file}: ${(err as Error).message}`);
      }
      const tty = !ctx.options.json && process.stderr.isTTY ? process.stderr : null;
      if (tty !== null) tty.write(`hashing ${basename(path)}…\n`);
      const sha256 = await sha256File(path);
      const image = await uploadFile(ctx, path, { name: opts.name ?? basename(path), sha256, size, format: opts.format, tty });
      ctx.output.result(image, formatImage);
    });

  image
    .command('list')
    .description('every image of the cluster with the nodes that hold it')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const { images } = await readState<{ images: ImageOut[] }>(ctx, '/v1/images', opts.stale);
      ctx.output.result(images, formatImages);
    });

  image
    .command('show')
    .description('one image by id')
    .argument('<id>', 'image id (hex SHA-256)')
    .option('--stale', 'read the node\'s own state without a read point (works without quorum)', false)
    .action(async (id: string, opts: { stale: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const { image: i } = await readState<{ image: ImageOut }>(ctx, `/v1/images/${encodeURIComponent(id)}`, opts.stale);
      ctx.output.result(i, formatImage);
    });

  image
    .command('fetch')
    .description('make the node (--api) hold a copy, fetched from a node that has it (pre-seeding before VMs land)')
    .argument('<id>', 'image id (hex SHA-256)')
    .action(async (id: string, _opts: unknown, cmd: Command) => {
      const ctx = context(cmd);
      const { image: i } = await ctx.client().post<{ image: ImageOut }>(`/v1/images/${encodeURIComponent(id)}/fetch`);
      ctx.output.result(i, formatImage);
    });

  image
    .command('delete')
    .description('delete the node\'s copy; --everywhere forgets the image cluster-wide (admin; refused while a VM uses it)')
    .argument('<id>', 'image id (hex SHA-256)')
    .option('--everywhere', 'forget the image in the whole cluster', false)
    .action(async (id: string, opts: { everywhere: boolean }, cmd: Command) => {
      const ctx = context(cmd);
      const q = opts.everywhere ? '?everywhere=true' : '';
      const { image: i } = await ctx.client().delete<{ image: ImageOut }>(`/v1/images/${encodeURIComponent(id)}${q}`);
      ctx.output.result(i, (x) => `deleted image ${x.name} (${x.id})${opts.everywhere ? ' everywhere' : ''}`);
    });
}

async function uploadFile(
  ctx: CliContext,
  path: string,
  o: { name: string; sha256: string; size: number; format: string | undefined; tty: NodeJS.WriteStream | null },
): Promise<ImageOut> {
  const bar = progressBar(o.tty, 'uploading', o.size);
  let sent = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      sent += chunk.byteLength;
      bar.update(sent);
      done(null, chunk);
    },
  });
  const file = createReadStream(path, { highWaterMark: fileChunkBytes }).pipe(counter);
  const query = new URLSearchParams({ name: o.name, sha256: o.sha256, ...(o.format === undefined ? {} : { format: o.format }) });
  const started = Date.now();
  const { image } = await ctx.client().postStream<{ image: ImageOut }>(`/v1/images?${query.toString()}`, Readable.toWeb(file) as ReadableStream<Uint8Array>, {
    contentType: 'application/octet-stream',
    contentLength: o.size,
    timeoutMs: uploadTimeoutMs,
  });
  bar.end();
  const seconds = Math.max((Date.now() - started) / 1000, 0.001);
  ctx.output.info(`uploaded ${fmtBytes(o.size)} in ${seconds.toFixed(1)} s (${(o.size / 1e6 / seconds).toFixed(1)} MB/s)`);
  return image;
}
