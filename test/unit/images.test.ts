// Proves the image store on real files with real qemu-img: imports are content-addressed, read-only and deduped, a
// hash mismatch keeps nothing, overlays back onto the base image, deletes tell the cluster, and ensure() fetches a
// missing image from a holder (hash verified, a corrupt holder skipped, concurrent callers sharing one fetch).
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { ClusterCommand, Image } from '../../consensus/cluster/index.js';
import {
  ImageFetchError,
  ImageHashMismatchError,
  ImageInvalidError,
  ImageStore,
  imageProtocol,
  type ImageBulk,
  type ImageCluster,
  type ImagePeers,
} from '../../node/hypervisor/images.js';
import { commandWorks, describeIf } from '../support/prereq.js';

const logger = pino({ level: 'silent' });
const nodeA = '12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
const nodeB = '12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB';
const nodeC = '12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC';

/** A cluster whose image records are shared by every fake node, applied like the state machine does. */
class FakeCluster {
  readonly images = new Map<string, Image>();
  readonly proposed: ClusterCommand[] = [];
  forNode(nodeId: string): ImageCluster {
    return { nodeId, state: { getImage: (id) => this.images.get(id) ?? null }, propose: async (cmd) => this.apply(cmd) };
  }
  apply(cmd: ClusterCommand): void {
    this.proposed.push(cmd);
    if (cmd.type === 'image.add') {
      const prev = this.images.get(cmd.id);
      const nodes = [...new Set([...(prev?.nodes ?? []), cmd.node])].sort();
      this.images.set(cmd.id, { id: cmd.id, name: prev?.name ?? cmd.name, sizeBytes: cmd.sizeBytes, nodes, addedAt: prev?.addedAt ?? cmd.at });
    } else if (cmd.type === 'image.remove') {
      const prev = this.images.get(cmd.id);
      if (prev === undefined) throw new Error('not_found');
      if (cmd.node === undefined) this.images.delete(cmd.id);
      else this.images.set(cmd.id, { ...prev, nodes: prev.nodes.filter((n) => n !== cmd.node) });
    }
  }
}

/** One direction of an in-memory byte pipe. */
class Pipe {
  private readonly chunks: Uint8Array[] = [];
  private ended = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;
  push(c: Uint8Array): void {
    this.chunks.push(c.slice());
    this.wake?.();
  }
  end(err?: Error): void {
    this.ended = true;
    if (err !== undefined) this.failure = err;
    this.wake?.();
  }
  async *read(): AsyncGenerator<Uint8Array> {
    for (;;) {
      if (this.failure !== null) throw this.failure;
      const c = this.chunks.shift();
      if (c !== undefined) yield c;
      else if (this.ended) return;
      else await new Promise<void>((r) => (this.wake = r));
    }
  }
}

function bulkPair(): [ImageBulk, ImageBulk] {
  const ab = new Pipe();
  const ba = new Pipe();
  const side = (out: Pipe, inp: Pipe): ImageBulk => ({
    write: async (c) => out.push(c),
    read: () => inp.read(),
    closeWrite: async () => out.end(),
    abort: (err) => {
      out.end(err);
      inp.end(err);
    },
  });
  return [side(ab, ba), side(ba, ab)];
}

/** Peers in one process: openBulk(peer) reaches that peer's registered handler. */
class FakeMesh {
  readonly handlers = new Map<string, (bulk: ImageBulk, ctx: { peer: string }) => Promise<void>>();
  opened: string[] = [];
  peersOf(self: string): ImagePeers {
    return {
      openBulk: async (peer, protocol) => {
        expect(protocol).toBe(imageProtocol);
        this.opened.push(peer);
        const handler = this.handlers.get(peer);
        if (handler === undefined) throw Object.assign(new Error(`cannot reach ${peer}`), { code: 'mesh_peer_unreachable' });
        const [mine, theirs] = bulkPair();
        void handler(theirs, { peer: self }).catch((err: unknown) => theirs.abort(err as Error));
        return mine;
      },
      handleBulk: async (_p, handler) => void this.handlers.set(self, handler),
      unhandle: async () => void this.handlers.delete(self),
    };
  }
}

const root = mkdtempSync(join(tmpdir(), 'nc-images-'));
let n = 0;
const freshDir = (): string => join(root, `store-${++n}`);
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const qemuInfo = (path: string): Record<string, unknown> => JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', path], { encoding: 'utf8' })) as Record<string, unknown>;

afterAll(() => rmSync(root, { recursive: true, force: true }));

describeIf({ 'qemu-img': commandWorks('qemu-img') })('image store', () => {
  const rawBytes = randomBytes(3 * 1024 * 1024 + 17);
  const rawFile = join(root, 'disk.raw');
  const qcowFile = join(root, 'disk.qcow2');
  beforeAll(() => {
    writeFileSync(rawFile, rawBytes);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcowFile, '64M']);
  });

  it('imports a file under its SHA-256, read-only, detects the format, dedupes and records this node as a holder', async () => {
    const cluster = new FakeCluster();
    const store = await ImageStore.open({ dir: freshDir(), cluster: cluster.forNode(nodeA), logger });
    const img = await store.importFile(rawFile, { name: 'base' });
    expect(img).toMatchObject({ id: sha(rawBytes), name: 'base', sizeBytes: rawBytes.length, format: 'raw' });
    expect(statSync(img.path).mode & 0o777).toBe(0o444);
    expect(cluster.images.get(img.id)).toMatchObject({ name: 'base', sizeBytes: rawBytes.length, nodes: [nodeA] });

    const again = await store.importFile(rawFile, { name: 'other-name' });
    expect(again).toEqual(img); // same content: the stored copy, its first name kept
    const q = await store.importFile(qcowFile);
    expect(q.format).toBe('qcow2');
    expect((await store.list()).map((i) => i.id).sort()).toEqual([img.id, q.id].sort());
    expect(readdirSync(store.dir).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
    expect(cluster.proposed.filter((c) => c.type === 'image.add')).toHaveLength(3);
  });

  it('keeps nothing when the declared SHA-256 does not match, nor for an empty or backed image', async () => {
    const cluster = new FakeCluster();
    const store = await ImageStore.open({ dir: freshDir(), cluster: cluster.forNode(nodeA), logger });
    const wrong = sha(Buffer.from('something else'));
    const err = await store.importStream(Readable.from([rawBytes]), { name: 'x', sha256: wrong }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageHashMismatchError);
    await expect(store.importStream(Readable.from([]), { name: 'empty' })).rejects.toBeInstanceOf(ImageInvalidError);
    const backed = join(root, 'backed.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', qcowFile, backed]);
    await expect(store.importFile(backed)).rejects.toBeInstanceOf(ImageInvalidError);
    expect(readdirSync(store.dir)).toEqual([]);
    expect(cluster.proposed).toEqual([]);
    // The right hash is accepted.
    expect((await store.importStream(Readable.from([rawBytes]), { name: 'ok', sha256: sha(rawBytes) })).id).toBe(sha(rawBytes));
  });

  it('stores kernel/initrd files as told without probing them', async () => {
    const store = await ImageStore.open({ dir: freshDir(), cluster: new FakeCluster().forNode(nodeA), logger });
    const img = await store.importStream(Readable.from([Buffer.from('not a disk')]), { name: 'vmlinuz', format: 'kernel' });
    expect(img.format).toBe('kernel');
    await expect(store.createDisk(join(root, 'k.qcow2'), img.id, 1)).rejects.toBeInstanceOf(ImageInvalidError);
  });

  it('creates qcow2 overlays backed by the base image (grown when asked) and blank disks', async () => {
    const store = await ImageStore.open({ dir: freshDir(), cluster: new FakeCluster().forNode(nodeA), logger });
    const base = await store.importFile(qcowFile, { name: 'base' });
    const overlay = join(root, 'vm1.qcow2');
    await store.createDisk(overlay, base.id, 1);
    const info = qemuInfo(overlay);
    expect(info).toMatchObject({ format: 'qcow2', 'backing-filename': base.path, 'backing-filename-format': 'qcow2', 'virtual-size': 1024 ** 3 });
    // Smaller than the base: the overlay keeps the base's size.
    const same = join(root, 'vm2.qcow2');
    await store.createDisk(same, base.id, 0);
    expect(qemuInfo(same)['virtual-size']).toBe(64 * 1024 ** 2);
    const raw = await store.importFile(rawFile, { name: 'raw' });
    const onRaw = join(root, 'vm3.qcow2');
    await store.createDisk(onRaw, raw.id, 2);
    expect(qemuInfo(onRaw)).toMatchObject({ 'backing-filename': raw.path, 'backing-filename-format': 'raw', 'virtual-size': 2 * 1024 ** 3 });
    const blank = join(root, 'blank.qcow2');
    await store.createDisk(blank, null, 3);
    expect(qemuInfo(blank)).toMatchObject({ format: 'qcow2', 'virtual-size': 3 * 1024 ** 3 });
    expect(qemuInfo(blank)['backing-filename']).toBeUndefined();
    // Never over an existing disk.
    await expect(store.createDisk(blank, null, 1)).rejects.toMatchObject({ code: 'conflict' });
  });

  it('deletes this node\'s copy (image.remove with node) or the image everywhere (image.remove without)', async () => {
    const cluster = new FakeCluster();
    const store = await ImageStore.open({ dir: freshDir(), cluster: cluster.forNode(nodeA), logger });
    const img = await store.importFile(rawFile, { name: 'base' });
    await store.delete(img.id);
    expect(await store.get(img.id)).toBeNull();
    expect(readdirSync(store.dir)).toEqual([]);
    expect(cluster.proposed.at(-1)).toMatchObject({ type: 'image.remove', id: img.id, node: nodeA });
    expect(cluster.images.get(img.id)?.nodes).toEqual([]);
    await store.importFile(rawFile, { name: 'base' });
    await store.delete(img.id, { everywhere: true });
    expect(cluster.proposed.at(-1)).toEqual(expect.objectContaining({ type: 'image.remove', id: img.id }));
    expect(cluster.proposed.at(-1)).not.toHaveProperty('node');
    expect(cluster.images.has(img.id)).toBe(false);
  });

  it('ensure() fetches from a holder with the hash verified, skips a corrupt holder and shares one fetch', async () => {
    const cluster = new FakeCluster();
    const mesh = new FakeMesh();
    const holder = await ImageStore.open({ dir: freshDir(), cluster: cluster.forNode(nodeA), peers: mesh.peersOf(nodeA), logger });
    const img = await holder.importFile(rawFile, { name: 'base' });
    // nodeC claims the image but serves other bytes of the same length.
    mesh.handlers.set(nodeC, async (bulk) => {
      for await (const _ of bulk.read()) void _;
      await bulk.write(Buffer.from(`${JSON.stringify({ ok: true, sizeBytes: rawBytes.length, format: 'raw', name: 'base' })}\n`));
      await bulk.write(randomBytes(rawBytes.length));
      await bulk.closeWrite();
    });
    cluster.images.set(img.id, { ...cluster.images.get(img.id)!, nodes: [nodeC, nodeA] });
    const receiver = await ImageStore.open({ dir: freshDir(), cluster: cluster.forNode(nodeB), peers: mesh.peersOf(nodeB), logger });
    const progress: number[] = [];
    const [a, b] = await Promise.all([receiver.ensure(img.id, (p) => progress.push(p.bytesDone)), receiver.ensure(img.id)]);
    expect(a).toEqual(b);
    expect(a).toMatchObject({ id: img.id, sizeBytes: rawBytes.length, format: 'raw', name: 'base' });
    expect(sha(readFileSync(a.path))).toBe(img.id);
    expect(mesh.opened).toEqual([nodeC, nodeA]); // one shared fetch: the corrupt holder, then the good one
    expect(progress.at(-1)).toBe(rawBytes.length);
    expect(cluster.images.get(img.id)?.nodes).toContain(nodeB);
    expect(readdirSync(receiver.dir).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
    // Held now: no fetch.
    await receiver.ensure(img.id);
    expect(mesh.opened).toHaveLength(2);
  });

  it('ensure() gives up after bounded attempts when no holder delivers', async () => {
    const cluster = new FakeCluster();
    const mesh = new FakeMesh();
    const id = sha(Buffer.from('gone'));
    cluster.images.set(id, { id, name: 'gone', sizeBytes: 4, nodes: [nodeC], addedAt: 1 });
    const receiver = await ImageStore.open({ dir: freshDir(), cluster: cluster.forNode(nodeB), peers: mesh.peersOf(nodeB), logger });
    const err = await receiver.ensure(id).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageFetchError);
    expect(mesh.opened.length).toBeGreaterThan(1);
    await expect(receiver.ensure(sha(Buffer.from('unknown')))).rejects.toMatchObject({ code: 'image_not_found' });
  });
});
