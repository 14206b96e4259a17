// The image store: content-addressed base images in <dataDir>/images (`<sha256>` read-only, plus a small
// `<sha256>.json` sidecar with name/format/size), imported from a local file or a stream (REST upload), fetched from
// a peer that holds them over the members-only bulk protocol /novacron/image/1.0.0 when this node lacks one, and
// qcow2 overlays per VM disk. Every file lands through a temp file in the same directory (hashed while written,
// fsynced, renamed), so a crash or a bad hash never leaves a partial image under its id. What the cluster knows
// (which nodes hold which image) is the replicated state: imports propose `image.add`, deletes `image.remove`.
import { execFile } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, mkdir, open, readFile, readdir, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { basename, isAbsolute, join } from 'node:path';
import type { ClusterCommand, Actor, Image } from '../../consensus/cluster/index.js';
import { ConflictError, NovaError, ValidationError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { ImageProgress, ImageSource, LocalImage } from './image-types.js';

/** Members-only bulk protocol: the requester sends an image id, the holder answers a header line and the bytes. */
export const imageProtocol = '/novacron/image/1.0.0';
/** Largest image accepted by import, upload or fetch. */
export const imageBytesMax = 64 * 1024 ** 3;
/** Longest image name (the `image.add` command's limit). */
export const imageNameCharsMax = 255;
/** Holders tried (cycling through them) before a fetch gives up. */
export const fetchAttemptsMax = 4;
/** Deadline of one fetch attempt, dial to last byte. */
export const fetchTimeoutMs = 30 * 60_000;
/** Deadline for opening the bulk stream to a holder. */
export const fetchOpenTimeoutMs = 10_000;
/** Pause between fetch attempts. */
export const fetchRetryDelayMs = 250;
/** Largest request (an id) and answer header line on the image protocol. */
export const fetchRequestBytesMax = 256;
export const fetchHeaderBytesMax = 4096;
/** Concurrent image streams served per connection: a few, since each reads a whole image from disk. */
export const imageServeStreamsMax = 4;
/** Chunk size when reading images from disk (serving and hashing). */
export const imageReadChunkBytes = 256 * 1024;
/** Progress callbacks at most this often (and once at the end). */
export const progressIntervalMs = 250;
/** Deadline of one qemu-img run. */
export const qemuImgTimeoutMs = 120_000;
/** Output kept from qemu-img (stdout JSON, stderr text). */
export const qemuImgOutputBytesMax = 1024 * 1024;
/** Free space left on the data dir's file system after an image lands. */
export const imageFreeSpaceReserveBytes = 256 * 1024 ** 2;
/** Largest sidecar read back. */
const sidecarBytesMax = 4096;
/** Largest VM disk createDisk makes (the VM spec's limit). */
export const diskGiBMax = 65_536;

const gibBytes = 1024 ** 3;
const tempPrefix = '.tmp-';
const sha256Pattern = /^[0-9a-f]{64}$/;

export type ImageFormatHint = 'raw' | 'qcow2' | 'kernel' | 'initrd';
export const imageFormatHints: readonly ImageFormatHint[] = ['raw', 'qcow2', 'kernel', 'initrd'];

// ---- errors ----

export class ImageNotFoundError extends NovaError {
  constructor(id: string, where = 'on this node') {
    super('image_not_found', `no image ${id} ${where}`, { details: { image: id } });
  }
}

/** The bytes did not hash to the declared (or requested) SHA-256: nothing was kept. */
export class ImageHashMismatchError extends NovaError {
  constructor(expected: string, actual: string, sizeBytes: number) {
    super('image_hash_mismatch', `image content hashes to ${actual}, not the expected ${expected}; nothing was kept`, { details: { expected, actual, sizeBytes } });
  }
}

export class ImageTooLargeError extends NovaError {
  constructor(limitBytes: number) {
    super('image_too_large', `image exceeds the limit of ${limitBytes} bytes; nothing was kept`, { details: { limitBytes } });
  }
}

/** Not something the store takes: empty, an unsupported format, a qcow2 that points at other files, a bad name. */
export class ImageInvalidError extends NovaError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('image_invalid', message, details === undefined ? {} : { details });
  }
}

export class ImageStoreFullError extends NovaError {
  constructor(neededBytes: number, availableBytes: number) {
    super('image_store_full', `not enough space for the image: ${neededBytes} bytes needed (plus a reserve of ${imageFreeSpaceReserveBytes}), ${availableBytes} available`, {
      details: { neededBytes, availableBytes },
    });
  }
}

/** No holder delivered the image (each attempt's reason is in `details.attempts`). */
export class ImageFetchError extends NovaError {
  constructor(message: string, details: Record<string, unknown>, cause?: unknown) {
    super('image_fetch_failed', message, { details, cause });
  }
}

/** qemu-img failed; its stderr is in the message. */
export class QemuImgError extends NovaError {
  constructor(args: readonly string[], detail: string, cause?: unknown) {
    super('qemu_img_failed', `qemu-img ${args[0] ?? ''} failed: ${detail}`, { details: { args: [...args] }, cause });
  }
}

// ---- what the store needs of the cluster and the mesh (small, so unit tests fake them) ----

export interface ImageCluster {
  /** This node's id (its mesh peer id). */
  nodeId: string;
  state: { getImage(id: string): Image | null };
  propose(cmd: ClusterCommand): Promise<unknown>;
}

/** The part of mesh/protocol.ts BulkStream the store uses. */
export interface ImageBulk {
  write(chunk: Uint8Array, signal?: AbortSignal): Promise<void>;
  read(): AsyncGenerator<Uint8Array>;
  closeWrite(signal?: AbortSignal): Promise<void>;
  abort(err: Error): void;
}

/** The part of mesh/protocol.ts ProtocolLayer the store uses. */
export interface ImagePeers {
  openBulk(peer: string, protocol: string, options: { timeoutMs?: number; signal?: AbortSignal }): Promise<ImageBulk>;
  handleBulk(protocol: string, handler: (bulk: ImageBulk, ctx: { peer: string }) => Promise<void>, options: { maxInboundStreams?: number }): Promise<void>;
  unhandle(protocol: string): Promise<void>;
}

/** Who asked (for the command's `actor`/`from`); default: this node. */
export interface ImageOrigin {
  actor: Actor;
  from: string | null;
}

export interface ImageStoreOptions {
  /** <dataDir>/images */
  dir: string;
  cluster: ImageCluster;
  /** mesh.protocols; without it the store neither serves nor fetches images. */
  peers?: ImagePeers;
  logger: Logger;
  qemuImgBinary?: string;
}

export interface ImportOptions {
  name?: string;
  format?: ImageFormatHint;
  /** Declared hex SHA-256: on a mismatch nothing is kept and ImageHashMismatchError is thrown. */
  sha256?: string;
  origin?: ImageOrigin;
  onProgress?: (p: ImageProgress) => void;
  /** Expected total (e.g. content-length), for progress only. */
  sizeBytesHint?: number;
}

export interface DeleteOptions {
  /** Forget the image cluster-wide (`image.remove {id}`), refused while a VM uses it. */
  everywhere?: boolean;
  origin?: ImageOrigin;
}

interface Sidecar {
  name: string;
  format: string;
  sizeBytes: number;
  /** Virtual disk size (qemu-img), for overlays; absent for kernel/initrd. */
  virtualSizeBytes?: number;
}

interface QemuImgInfo {
  format: string;
  virtualSizeBytes: number;
  backing: string | null;
  dataFile: string | null;
}

/** The answer header a holder sends before the bytes. */
type FetchHeader = { ok: true; sizeBytes: number; format: string; name: string } | { ok: false; code: string; message: string };

interface Written {
  tmp: string;
  id: string;
  sizeBytes: number;
}

export function isImageId(id: string): boolean {
  return sha256Pattern.test(id);
}

export class ImageStore implements ImageSource {
  readonly dir: string;
  private readonly cluster: ImageCluster;
  private readonly peers: ImagePeers | undefined;
  private readonly log: Logger;
  private readonly qemuImg: string;
  /** One fetch per id: concurrent ensure() calls share it (and all get its progress). */
  private readonly fetching = new Map<string, { done: Promise<LocalImage>; listeners: Set<(p: ImageProgress) => void> }>();

  private constructor(options: ImageStoreOptions) {
    this.dir = options.dir;
    this.cluster = options.cluster;
    this.peers = options.peers;
    this.log = options.logger.child({ component: 'images' });
    this.qemuImg = options.qemuImgBinary ?? 'qemu-img';
  }

  /** Creates the directory, drops temp files a crash left behind, and serves images to members. */
  static async open(options: ImageStoreOptions): Promise<ImageStore> {
    const store = new ImageStore(options);
    await mkdir(store.dir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(store.dir)) {
      if (name.startsWith(tempPrefix)) await rm(join(store.dir, name), { force: true });
    }
    if (store.peers !== undefined) {
      await store.peers.handleBulk(imageProtocol, (bulk, ctx) => store.serve(bulk, ctx.peer), { maxInboundStreams: imageServeStreamsMax });
    }
    return store;
  }

  async close(): Promise<void> {
    await this.peers?.unhandle(imageProtocol);
  }

  pathOf(id: string): string {
    return join(this.dir, id);
  }

  // ---- reads ----

  /** The image if this node holds it, else null. */
  async get(id: string): Promise<LocalImage | null> {
    if (!isImageId(id)) return null;
    const path = this.pathOf(id);
    let size: number;
    try {
      const st = await stat(path);
      if (!st.isFile()) return null;
      size = st.size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    const side = await this.readSidecar(id);
    // No sidecar (lost): the content is still valid under its hash; describe it as raw until re-imported.
    return { id, name: side?.name ?? id.slice(0, 12), sizeBytes: size, format: side?.format ?? 'raw', path };
  }

  async list(): Promise<LocalImage[]> {
    const out: LocalImage[] = [];
    for (const name of (await readdir(this.dir)).sort()) {
      if (!isImageId(name)) continue;
      const img = await this.get(name);
      if (img !== null) out.push(img);
    }
    return out;
  }

  // ---- imports ----

  /** Imports a file from this node's file system (copied, never moved: the source stays the caller's). */
  async importFile(path: string, options: ImportOptions = {}): Promise<LocalImage> {
    if (!isAbsolute(path)) throw new ValidationError(`import path must be absolute, got ${path}`);
    let st;
    try {
      st = await stat(path);
    } catch (err) {
      throw new ValidationError(`cannot read ${path}: ${errorMessage(err)}`, { cause: err });
    }
    if (!st.isFile()) throw new ValidationError(`${path} is not a regular file`);
    if (st.size > imageBytesMax) throw new ImageTooLargeError(imageBytesMax);
    await this.requireSpace(st.size);
    const name = options.name ?? basename(path);
    const source = createReadStream(path, { highWaterMark: imageReadChunkBytes });
    return this.importFrom(source, { ...options, name, sizeBytesHint: st.size });
  }

  /** Imports from a byte stream (a REST upload). The stream is consumed to its end or until a limit is hit. */
  async importStream(source: AsyncIterable<Uint8Array>, options: ImportOptions & { name: string }): Promise<LocalImage> {
    if (options.sizeBytesHint !== undefined) {
      if (options.sizeBytesHint > imageBytesMax) throw new ImageTooLargeError(imageBytesMax);
      await this.requireSpace(options.sizeBytesHint);
    }
    return this.importFrom(source, options);
  }

  private async importFrom(source: AsyncIterable<Uint8Array>, options: ImportOptions): Promise<LocalImage> {
    const name = checkName(options.name ?? '');
    if (options.sha256 !== undefined && !isImageId(options.sha256)) throw new ValidationError('sha256 must be 64 lowercase hex digits');
    if (options.format !== undefined && !imageFormatHints.includes(options.format)) throw new ValidationError(`format must be one of ${imageFormatHints.join(', ')}`);
    const started = Date.now();
    const progress = throttle(options.onProgress);
    const written = await this.writeTemp(source, { limitBytes: imageBytesMax, totalHint: options.sizeBytesHint ?? 0, onProgress: progress });
    let image: LocalImage;
    try {
      if (options.sha256 !== undefined && options.sha256 !== written.id) throw new ImageHashMismatchError(options.sha256, written.id, written.sizeBytes);
      image = await this.commit(written, name, options.format);
    } finally {
      await rm(written.tmp, { force: true });
    }
    const seconds = Math.max((Date.now() - started) / 1000, 0.001);
    this.log.info({ image: image.id, name: image.name, format: image.format, sizeBytes: image.sizeBytes, mbPerSec: round1(image.sizeBytes / 1e6 / seconds) }, 'image imported');
    await this.cluster.propose({ type: 'image.add', id: image.id, name: image.name, sizeBytes: image.sizeBytes, node: this.cluster.nodeId, ...this.stamp(options.origin) });
    return image;
  }

  /**
   * Streams `source` into a new temp file, hashing as it goes, and fsyncs it. Over `limitBytes` (or `exactBytes`
   * when given) it stops and removes the temp file. The caller removes the temp file after commit.
   */
  private async writeTemp(
    source: AsyncIterable<Uint8Array>,
    opts: { limitBytes: number; exactBytes?: number; totalHint: number; onProgress: (p: ImageProgress, final?: boolean) => void; signal?: AbortSignal },
  ): Promise<Written> {
    const tmp = join(this.dir, `${tempPrefix}${randomUUID()}`);
    const fh = await open(tmp, 'wx', 0o600);
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      try {
        for await (const chunk of source) {
          opts.signal?.throwIfAborted();
          bytes += chunk.byteLength;
          if (bytes > (opts.exactBytes ?? opts.limitBytes)) {
            if (opts.exactBytes !== undefined) throw new ImageInvalidError(`received more than the expected ${opts.exactBytes} bytes`);
            throw new ImageTooLargeError(opts.limitBytes);
          }
          hash.update(chunk);
          await fh.write(chunk);
          opts.onProgress({ bytesDone: bytes, bytesTotal: opts.exactBytes ?? Math.max(opts.totalHint, bytes) });
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    opts.onProgress({ bytesDone: bytes, bytesTotal: bytes }, true);
    return { tmp, id: hash.digest('hex'), sizeBytes: bytes };
  }

  /**
   * Puts a hashed temp file under its id: dedupes against an existing copy, checks the format (qemu-img) unless the
   * caller says kernel/initrd, makes it read-only (overlays read it as their backing file), writes the sidecar first
   * and renames last, so an id on disk always has complete content.
   */
  private async commit(written: Written, name: string, hint: ImageFormatHint | undefined): Promise<LocalImage> {
    const existing = await this.get(written.id);
    if (existing !== null && existing.sizeBytes === written.sizeBytes) return existing;
    if (written.sizeBytes === 0) throw new ImageInvalidError('image is empty');
    const side = await this.describe(written.tmp, name, written.sizeBytes, hint);
    await chmod(written.tmp, 0o444);
    await writeFileAtomic(join(this.dir, `${written.id}.json`), `${JSON.stringify(side)}\n`, this.dir);
    await rename(written.tmp, this.pathOf(written.id));
    await syncDir(this.dir);
    return { id: written.id, name: side.name, sizeBytes: side.sizeBytes, format: side.format, path: this.pathOf(written.id) };
  }

  private async describe(path: string, name: string, sizeBytes: number, hint: ImageFormatHint | undefined): Promise<Sidecar> {
    if (hint === 'kernel' || hint === 'initrd') return { name, format: hint, sizeBytes };
    const info = await this.info(path, hint);
    if (info.format !== 'raw' && info.format !== 'qcow2') throw new ImageInvalidError(`unsupported image format ${info.format}: import raw or qcow2`, { format: info.format });
    if (hint !== undefined && hint !== info.format) throw new ImageInvalidError(`image was declared ${hint} but qemu-img reads it as ${info.format}`, { format: info.format });
    // A base image that names a backing or data file would make every VM on it read some other host file.
    if (info.backing !== null) throw new ImageInvalidError(`qcow2 image has a backing file (${info.backing}): flatten it first (qemu-img convert -O qcow2)`);
    if (info.dataFile !== null) throw new ImageInvalidError(`qcow2 image has an external data file (${info.dataFile}): import a self-contained image`);
    return { name, format: info.format, sizeBytes, virtualSizeBytes: info.virtualSizeBytes };
  }

  // ---- delete ----

  /**
   * Deletes this node's copy and tells the cluster: `image.remove {id, node}` (this node no longer holds it), or
   * with `everywhere` `image.remove {id}` (the cluster forgets it; refused while a VM spec uses it, and then nothing is
   * deleted). Copies on other nodes stay on their disks until those nodes delete them.
   */
  async delete(id: string, options: DeleteOptions = {}): Promise<void> {
    if (!isImageId(id)) throw new ValidationError('image id must be 64 lowercase hex digits');
    const record = this.cluster.state.getImage(id);
    const local = await this.get(id);
    if (record === null && local === null) throw new ImageNotFoundError(id, 'in the cluster or on this node');
    const stamp = this.stamp(options.origin);
    if (options.everywhere === true) {
      if (record !== null) await this.cluster.propose({ type: 'image.remove', id, ...stamp });
    } else if (record?.nodes.includes(this.cluster.nodeId) === true) {
      await this.cluster.propose({ type: 'image.remove', id, node: this.cluster.nodeId, ...stamp });
    } else if (local === null) {
      throw new ImageNotFoundError(id);
    }
    await rm(this.pathOf(id), { force: true });
    await rm(join(this.dir, `${id}.json`), { force: true });
    await syncDir(this.dir);
    this.log.info({ image: id, everywhere: options.everywhere === true }, 'image deleted');
  }

  // ---- fetch from peers ----

  async ensure(id: string, onProgress?: (p: ImageProgress) => void): Promise<LocalImage> {
    if (!isImageId(id)) throw new ValidationError('image id must be 64 lowercase hex digits');
    const local = await this.get(id);
    if (local !== null) return local;
    let entry = this.fetching.get(id);
    if (entry === undefined) {
      const listeners = new Set<(p: ImageProgress) => void>();
      const done = this.fetch(id, (p) => listeners.forEach((l) => l(p))).finally(() => this.fetching.delete(id));
      entry = { done, listeners };
      this.fetching.set(id, entry);
    }
    if (onProgress !== undefined) entry.listeners.add(onProgress);
    try {
      return await entry.done;
    } finally {
      if (onProgress !== undefined) entry.listeners.delete(onProgress);
    }
  }

  private async fetch(id: string, onProgress: (p: ImageProgress) => void): Promise<LocalImage> {
    const record = this.cluster.state.getImage(id);
    if (record === null) throw new ImageNotFoundError(id, 'in the cluster');
    const holders = record.nodes.filter((n) => n !== this.cluster.nodeId);
    if (holders.length === 0 || this.peers === undefined) {
      throw new ImageFetchError(`no other node holds image ${id} (${record.name})`, { image: id, holders: [...record.nodes], attempts: [] });
    }
    if (record.sizeBytes > imageBytesMax) throw new ImageTooLargeError(imageBytesMax);
    await this.requireSpace(record.sizeBytes);
    const attempts: Array<{ peer: string; error: string }> = [];
    const progress = throttle(onProgress);
    for (let i = 0; i < fetchAttemptsMax; i++) {
      const peer = holders[i % holders.length]!;
      if (i > 0) await sleep(fetchRetryDelayMs);
      try {
        const image = await this.fetchFrom(peer, record, this.peers, progress);
        await this.cluster.propose({ type: 'image.add', id, name: record.name, sizeBytes: image.sizeBytes, node: this.cluster.nodeId, ...this.stamp() });
        return image;
      } catch (err) {
        // A refused proposal is not the holder's fault: do not fetch again.
        if (err instanceof NovaError && !isFetchFailure(err)) throw err;
        attempts.push({ peer, error: errorMessage(err) });
        this.log.warn({ image: id, peer, attempt: i + 1, err }, 'image fetch attempt failed');
      }
    }
    throw new ImageFetchError(`could not fetch image ${id} after ${attempts.length} attempts: ${attempts.map((a) => a.error).join('; ')}`, { image: id, attempts });
  }

  private async fetchFrom(peer: string, record: Image, peers: ImagePeers, onProgress: (p: ImageProgress, final?: boolean) => void): Promise<LocalImage> {
    const started = Date.now();
    const signal = AbortSignal.timeout(fetchTimeoutMs);
    const bulk = await peers.openBulk(peer, imageProtocol, { timeoutMs: fetchOpenTimeoutMs, signal });
    const onAbort = (): void => bulk.abort(new ImageFetchError(`fetch of ${record.id} from ${peer} did not finish within ${fetchTimeoutMs} ms`, { image: record.id, peer }));
    signal.addEventListener('abort', onAbort, { once: true });
    let written: Written | undefined;
    try {
      await bulk.write(new TextEncoder().encode(record.id), signal);
      await bulk.closeWrite(signal);
      const reader = bulk.read();
      const { header, rest } = await readHeader(reader);
      if (!header.ok) throw new ImageFetchError(`${peer} answered ${header.code}: ${header.message}`, { image: record.id, peer, remoteCode: header.code });
      if (header.sizeBytes !== record.sizeBytes) {
        throw new ImageFetchError(`${peer} offers ${header.sizeBytes} bytes, the cluster records ${record.sizeBytes}`, { image: record.id, peer });
      }
      const body = (async function* () {
        if (rest.byteLength > 0) yield rest;
        yield* reader;
      })();
      written = await this.writeTemp(body, { limitBytes: imageBytesMax, exactBytes: record.sizeBytes, totalHint: record.sizeBytes, onProgress, signal });
      if (written.sizeBytes !== record.sizeBytes) throw new ImageFetchError(`${peer} sent ${written.sizeBytes} of ${record.sizeBytes} bytes`, { image: record.id, peer });
      if (written.id !== record.id) throw new ImageHashMismatchError(record.id, written.id, written.sizeBytes);
      const hint = header.format === 'kernel' || header.format === 'initrd' ? header.format : undefined;
      const image = await this.commit(written, checkName(header.name === '' ? record.name : header.name), hint);
      const seconds = Math.max((Date.now() - started) / 1000, 0.001);
      this.log.info({ image: record.id, peer, sizeBytes: image.sizeBytes, mbPerSec: round1(image.sizeBytes / 1e6 / seconds) }, 'image fetched from a peer');
      return image;
    } catch (err) {
      if (err instanceof Error) bulk.abort(err);
      throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
      if (written !== undefined) await rm(written.tmp, { force: true });
    }
  }

  /** Holder side: reads the requested id, answers a header line, streams the file. */
  private async serve(bulk: ImageBulk, peer: string): Promise<void> {
    const chunks: Uint8Array[] = [];
    let n = 0;
    for await (const c of bulk.read()) {
      n += c.byteLength;
      if (n > fetchRequestBytesMax) throw new ImageInvalidError('image request too long');
      chunks.push(c);
    }
    const id = new TextDecoder().decode(concat(chunks, n)).trim();
    const image = isImageId(id) ? await this.get(id) : null;
    const header: FetchHeader =
      image === null
        ? { ok: false, code: 'image_not_found', message: isImageId(id) ? `this node does not hold image ${id}` : 'request is not an image id' }
        : { ok: true, sizeBytes: image.sizeBytes, format: image.format, name: image.name };
    await bulk.write(new TextEncoder().encode(`${JSON.stringify(header)}\n`));
    if (image !== null) {
      this.log.info({ image: id, peer, sizeBytes: image.sizeBytes }, 'serving an image to a peer');
      for await (const chunk of createReadStream(image.path, { highWaterMark: imageReadChunkBytes })) await bulk.write(chunk as Buffer);
    }
    await bulk.closeWrite();
  }

  // ---- disks ----

  async createDisk(destPath: string, baseId: string | null, sizeGiB: number): Promise<void> {
    if (!isAbsolute(destPath)) throw new ValidationError(`disk path must be absolute, got ${destPath}`);
    if (!Number.isInteger(sizeGiB) || sizeGiB < (baseId === null ? 1 : 0) || sizeGiB > diskGiBMax) {
      throw new ValidationError(`disk size must be a whole number of GiB up to ${diskGiBMax}, got ${sizeGiB}`);
    }
    // qemu-img create silently truncates an existing file: never over a VM's disk.
    if (await exists(destPath)) throw new ConflictError(`disk ${destPath} already exists`, { details: { path: destPath } });
    const sizeBytes = sizeGiB * gibBytes;
    let args: string[];
    if (baseId === null) {
      args = ['create', '-q', '-f', 'qcow2', destPath, String(sizeBytes)];
    } else {
      const base = await this.ensure(baseId);
      if (base.format !== 'raw' && base.format !== 'qcow2') throw new ImageInvalidError(`image ${baseId} is a ${base.format}, not a disk image`);
      const virtual = (await this.readSidecar(baseId))?.virtualSizeBytes ?? (await this.info(base.path, base.format)).virtualSizeBytes;
      args = ['create', '-q', '-f', 'qcow2', '-F', base.format, '-b', base.path, destPath];
      if (sizeBytes > virtual) args.push(String(sizeBytes));
    }
    try {
      await this.run(args);
    } catch (err) {
      await rm(destPath, { force: true });
      throw err;
    }
  }

  // ---- helpers ----

  private async info(path: string, format?: string): Promise<QemuImgInfo> {
    const args = ['info', '--output=json', ...(format === 'raw' || format === 'qcow2' ? ['-f', format] : []), path];
    const out = await this.run(args);
    let parsed: Record<string, unknown>;
    try {
      parsed = JSON.parse(out) as Record<string, unknown>;
    } catch (err) {
      throw new QemuImgError(args, `output is not JSON: ${out.slice(0, 200)}`, err);
    }
    const specific = (parsed['format-specific'] as { data?: Record<string, unknown> } | undefined)?.data;
    return {
      format: typeof parsed.format === 'string' ? parsed.format : 'unknown',
      virtualSizeBytes: typeof parsed['virtual-size'] === 'number' ? parsed['virtual-size'] : 0,
      backing: typeof parsed['backing-filename'] === 'string' ? parsed['backing-filename'] : null,
      dataFile: typeof specific?.['data-file'] === 'string' ? specific['data-file'] : null,
    };
  }

  private run(args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(this.qemuImg, args, { timeout: qemuImgTimeoutMs, maxBuffer: qemuImgOutputBytesMax, encoding: 'utf8' }, (err, stdout, stderr) => {
        if (err === null) return resolve(stdout);
        const detail = stderr.trim() !== '' ? stderr.trim() : err.killed ? `no answer within ${qemuImgTimeoutMs} ms` : err.message;
        reject(new QemuImgError(args, detail, err));
      });
    });
  }

  private async readSidecar(id: string): Promise<Sidecar | null> {
    try {
      const text = await readFile(join(this.dir, `${id}.json`), 'utf8');
      if (text.length > sidecarBytesMax) return null;
      const v = JSON.parse(text) as Partial<Sidecar>;
      if (typeof v.name !== 'string' || typeof v.format !== 'string' || typeof v.sizeBytes !== 'number') return null;
      return { name: v.name, format: v.format, sizeBytes: v.sizeBytes, ...(typeof v.virtualSizeBytes === 'number' ? { virtualSizeBytes: v.virtualSizeBytes } : {}) };
    } catch {
      return null; // missing or damaged: get() falls back to what the file itself says
    }
  }

  private async requireSpace(bytes: number): Promise<void> {
    const fs = await statfs(this.dir);
    const available = fs.bavail * fs.bsize;
    if (available < bytes + imageFreeSpaceReserveBytes) throw new ImageStoreFullError(bytes, available);
  }

  private stamp(origin?: ImageOrigin): { at: number; actor: Actor; from: string | null } {
    return { at: Date.now(), actor: origin?.actor ?? { kind: 'node', id: this.cluster.nodeId }, from: origin?.from ?? null };
  }
}

// ---- module helpers ----

function checkName(name: string): string {
  const n = name.trim();
  if (n.length === 0 || n.length > imageNameCharsMax) throw new ValidationError(`image name must be 1 to ${imageNameCharsMax} characters`);
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
  if (/[\u0000-\u001f\u007f]/.test(n)) throw new ValidationError('image name must not contain control characters');
  return n;
}

/** Errors after which the next holder is worth a try (vs. refusals of this node's own doing). */
function isFetchFailure(err: NovaError): boolean {
  return ['image_fetch_failed', 'image_hash_mismatch', 'image_invalid', 'qemu_img_failed'].includes(err.code) || err.code.startsWith('mesh_');
}

async function readHeader(reader: AsyncGenerator<Uint8Array>): Promise<{ header: FetchHeader; rest: Uint8Array }> {
  const chunks: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const next = await reader.next();
    if (next.done === true) throw new ImageFetchError('the holder closed the stream before its answer', {});
    chunks.push(next.value);
    n += next.value.byteLength;
    const all = concat(chunks, n);
    const nl = all.indexOf(0x0a);
    if (nl >= 0) {
      if (nl > fetchHeaderBytesMax) break;
      return { header: parseHeader(new TextDecoder().decode(all.subarray(0, nl))), rest: all.subarray(nl + 1) };
    }
    if (n > fetchHeaderBytesMax) break;
  }
  throw new ImageFetchError(`answer header longer than ${fetchHeaderBytesMax} bytes`, {});
}

function parseHeader(text: string): FetchHeader {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new ImageFetchError('answer header is not JSON', {});
  }
  const r = v as Record<string, unknown>;
  if (r.ok === true && Number.isSafeInteger(r.sizeBytes) && typeof r.format === 'string' && typeof r.name === 'string') {
    return { ok: true, sizeBytes: r.sizeBytes as number, format: r.format, name: r.name };
  }
  if (r.ok === false && typeof r.code === 'string' && typeof r.message === 'string') return { ok: false, code: r.code, message: r.message };
  throw new ImageFetchError('answer header is malformed', {});
}

function concat(chunks: Uint8Array[], total: number): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  chunks.splice(0, chunks.length, out);
  return out;
}

/** Calls `fn` at most every progressIntervalMs, and always for the final report. */
function throttle(fn: ((p: ImageProgress) => void) | undefined): (p: ImageProgress, final?: boolean) => void {
  let last = 0;
  return (p, final = false) => {
    if (fn === undefined) return;
    const now = Date.now();
    if (!final && now - last < progressIntervalMs) return;
    last = now;
    fn(p);
  };
}

async function writeFileAtomic(path: string, text: string, dir: string): Promise<void> {
  const tmp = join(dir, `${tempPrefix}${randomUUID()}`);
  await writeFile(tmp, text, { mode: 0o600, flag: 'wx' });
  const fh = await open(tmp, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

/** fsync of the directory: makes a rename durable. */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function round1(n: number): number {
  return Math.round(n * 10) / 10;
}
