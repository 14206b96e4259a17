// Proves the image store across real node processes: an image uploaded to node 1 with the CLI (hash sent and checked)
// is listed on node 2, node 2 fetches it from node 1 over the mesh with the hash verified and becomes a holder, and
// an upload whose declared SHA-256 is wrong is refused with nothing left behind.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runCli, spawnCli, waitForLog } from '../support/proc.js';
import { commandWorks, describeIf } from '../support/prereq.js';
import { pollFor, type NodeProc } from '../support/cluster-http.js';

/** Bound for a join to replicate on loopback. */
const convergeBoundMs = 15_000;
const imageBytes = 32 * 1024 * 1024;

interface ImageOut {
  id: string;
  name: string;
  sizeBytes: number;
  nodes: string[];
  format: string | null;
  local: boolean;
}

const procs: NodeProc[] = [];
const work = mkdtempSync(join(tmpdir(), 'nc-img-it-'));
let admin = '';

async function startNode(name: string): Promise<NodeProc> {
  const dataDir = join(work, name);
  const child = spawnCli(['node', 'start', '--data-dir', dataDir, '--name', name, '--api-host', '127.0.0.1', '--api-port', '0']);
  const started = await waitForLog(child, (r) => r.msg === 'node started');
  return { name, dataDir, child, url: started.api as string, peerId: started.peerId as string };
}

async function cli(p: NodeProc, args: string[], token: string | undefined = admin): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCli([...args, '--api', p.url, '--json', ...(token === undefined || token === '' ? [] : ['--token', token])], { timeoutMs: 60_000 });
}

function until<T>(what: string, check: () => Promise<T | null | undefined | false>): Promise<T> {
  return pollFor(what, convergeBoundMs, check, 200);
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const stored = (p: NodeProc): string[] => readdirSync(join(p.dataDir, 'images')).sort();

beforeAll(async () => {
  procs.push(...(await Promise.all(['img1', 'img2'].map((n) => startNode(n)))));
  const [n1, n2] = procs as [NodeProc, NodeProc];
  const init = await cli(n1, ['cluster', 'init'], undefined);
  expect(init.code, init.stderr).toBe(0);
  admin = (JSON.parse(init.stdout) as { adminToken: string }).adminToken;
  const tok = await cli(n1, ['cluster', 'join-token', 'create']);
  expect(tok.code, tok.stderr).toBe(0);
  const joined = await cli(n2, ['cluster', 'join', (JSON.parse(tok.stdout) as { token: string }).token], undefined);
  expect(joined.code, joined.stderr).toBe(0);
}, 60_000);

afterAll(() => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
});

describeIf({ 'qemu-img': commandWorks('qemu-img') })('images across nodes', () => {
  it('uploads on node 1, lists on node 2, fetches to node 2 with the hash verified, and refuses a corrupt upload', async () => {
    const [n1, n2] = procs as [NodeProc, NodeProc];
    const bytes = randomBytes(imageBytes);
    const file = join(work, 'base.raw');
    writeFileSync(file, bytes);
    const id = sha(bytes);

    const t0 = Date.now();
    const up = await cli(n1, ['image', 'import', file, '--name', 'base']);
    const uploadS = (Date.now() - t0) / 1000;
    expect(up.code, up.stderr).toBe(0);
    expect(JSON.parse(up.stdout)).toMatchObject({ id, name: 'base', sizeBytes: imageBytes, format: 'raw', local: true, nodes: [n1.peerId] });
    expect(stored(n1)).toEqual([id, `${id}.json`]);

    const listed = await until('image listed on node 2', async () => {
      const r = await cli(n2, ['image', 'list']);
      const images = r.code === 0 ? (JSON.parse(r.stdout) as ImageOut[]) : [];
      return images.find((i) => i.id === id) ?? null;
    });
    expect(listed).toMatchObject({ name: 'base', sizeBytes: imageBytes, nodes: [n1.peerId], local: false, format: null });

    const t1 = Date.now();
    const fetched = await cli(n2, ['image', 'fetch', id]);
    const fetchS = (Date.now() - t1) / 1000;
    expect(fetched.code, fetched.stderr).toBe(0);
    const img = JSON.parse(fetched.stdout) as ImageOut;
    expect(img).toMatchObject({ id, local: true, format: 'raw' });
    expect([...img.nodes].sort()).toEqual([n1.peerId, n2.peerId].sort());
    expect(sha(readFileSync(join(n2.dataDir, 'images', id)))).toBe(id);
    expect(stored(n2)).toEqual([id, `${id}.json`]);
    const shown = await cli(n1, ['image', 'show', id]);
    expect([...(JSON.parse(shown.stdout) as ImageOut).nodes].sort()).toEqual([n1.peerId, n2.peerId].sort());
    console.log(`images: CLI upload of ${imageBytes / 1e6} MB in ${uploadS.toFixed(2)} s (${(imageBytes / 1e6 / uploadS).toFixed(1)} MB/s incl. CLI start and hashing); peer fetch in ${fetchS.toFixed(2)} s (${(imageBytes / 1e6 / fetchS).toFixed(1)} MB/s incl. CLI start)`);

    // A corrupt upload: the declared hash is not the content's. Refused, and nothing new on disk or in the cluster.
    const other = randomBytes(1024 * 1024);
    const res = await fetch(`${n1.url}/v1/images?name=bad&sha256=${sha(Buffer.from('not this'))}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/octet-stream' },
      body: other,
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: 'image_hash_mismatch' });
    expect(stored(n1)).toEqual([id, `${id}.json`]);
    const after = JSON.parse((await cli(n1, ['image', 'list'])).stdout) as ImageOut[];
    expect(after.map((i) => i.id)).toEqual([id]);

    // Deleting node 2's copy leaves node 1 as the only holder.
    const del = await cli(n2, ['image', 'delete', id]);
    expect(del.code, del.stderr).toBe(0);
    expect(stored(n2)).toEqual([]);
    const final = JSON.parse((await cli(n1, ['image', 'show', id])).stdout) as ImageOut;
    expect(final.nodes).toEqual([n1.peerId]);
  }, 120_000);
});
