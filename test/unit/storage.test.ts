// Proves memory and LevelDB RaftStorage follow one contract (shared compliance suite), LevelDB records detect corruption, and the format/lock checks hold.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClassicLevel } from 'classic-level';
import { describe, expect, it } from 'vitest';
import { crc32c } from '../../consensus/storage/crc32c.js';
import { StorageInvalidArgumentError, StorageLockedError, StorageVersionError } from '../../consensus/storage/errors.js';
import { LEVEL_KEYS, LevelRaftStorage } from '../../consensus/storage/leveldb.js';
import { MemoryDisk, MemoryRaftStorage } from '../../consensus/storage/memory.js';
import { decodeEntry, encodeEntry, encodeMeta, ENTRY_DATA_MAX_BYTES } from '../../consensus/storage/records.js';
import { StorageCorruptError } from '../../consensus/types.js';
import { entry, range, registerStorageCompliance, type Damage, type StorageSite } from '../support/storage-compliance.js';

registerStorageCompliance({
  name: 'memory',
  async site(): Promise<StorageSite> {
    const disk = new MemoryDisk();
    return { open: () => MemoryRaftStorage.open(disk), cleanup: async () => undefined };
  },
});

async function damageLevel(dir: string, index: number, how: Damage): Promise<void> {
  const raw = new ClassicLevel<Uint8Array, Uint8Array>(dir, { keyEncoding: 'view', valueEncoding: 'view' });
  await raw.open();
  try {
    const key = LEVEL_KEYS.entry(index);
    const value = await raw.get(key);
    if (value === undefined) throw new Error(`no record for entry ${index}`);
    if (how === 'flip-byte') {
      const bad = value.slice();
      bad[Math.floor(bad.length / 2)]! ^= 0x10;
      await raw.put(key, bad);
    } else if (how === 'truncate') {
      await raw.put(key, value.slice(0, value.length - 3));
    } else if (how === 'misplace') {
      const other = await raw.get(LEVEL_KEYS.entry(index + 1));
      if (other === undefined) throw new Error(`no record for entry ${index + 1}`);
      await raw.put(key, other);
    } else {
      await raw.del(key);
    }
  } finally {
    await raw.close();
  }
}

function levelSite(): StorageSite & { dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'nc-raftdb-'));
  return {
    dir,
    open: () => LevelRaftStorage.open(dir),
    openUnverified: () => LevelRaftStorage.open(dir, { verifyOnOpen: false }),
    damage: (index, how) => damageLevel(dir, index, how),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
}

registerStorageCompliance({ name: 'leveldb', recordsOnDisk: true, site: async () => levelSite() });

describe('crc32c', () => {
  it('matches the standard check value', () => {
    // The CRC-32C check value from the Castagnoli / iSCSI specification.
    expect(crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array())).toBe(0);
  });
});

describe('entry records', () => {
  it('round-trip, and every single-byte flip is detected', () => {
    const e = entry(300, 7, 'payload');
    const rec = encodeEntry(e);
    expect(decodeEntry(rec, 300)).toEqual(e);
    expect(rec[0]).toBe(1); // record version byte
    for (let i = 0; i < rec.length; i++) {
      const bad = rec.slice();
      bad[i]! ^= 0x01;
      expect(() => decodeEntry(bad, 300)).toThrow(StorageCorruptError);
    }
    for (let n = 0; n < rec.length; n++) expect(() => decodeEntry(rec.subarray(0, n), 300)).toThrow(StorageCorruptError);
    expect(() => decodeEntry(rec, 301)).toThrow(/holds index 300/);
  });

  it('bounds entry size and index range', () => {
    expect(() => encodeEntry({ index: 1, term: 1, type: 'normal', data: new Uint8Array(ENTRY_DATA_MAX_BYTES + 1) })).toThrow(StorageInvalidArgumentError);
    expect(() => encodeEntry({ index: 2 ** 53, term: 1, type: 'normal', data: new Uint8Array() })).toThrow(StorageInvalidArgumentError);
    const big = { index: 2 ** 40 + 5, term: 2 ** 33, type: 'conf' as const, data: Uint8Array.of(1) };
    expect(decodeEntry(encodeEntry(big), big.index)).toEqual(big);
  });
});

describe('LevelRaftStorage specifics', () => {
  it('keys sort by index (big-endian fixed width)', () => {
    const keys = [1, 255, 256, 65_536, 2 ** 32, 2 ** 32 + 1].map((i) => Buffer.from(LEVEL_KEYS.entry(i)));
    const sorted = [...keys].sort((a, b) => Buffer.compare(a, b));
    expect(sorted).toEqual(keys);
  });

  it('maps a second handle on an open database to StorageLockedError', async () => {
    const site = levelSite();
    const st = await site.open();
    try {
      await expect(site.open()).rejects.toMatchObject({ name: 'StorageLockedError', code: 'storage_locked' });
      await expect(site.open()).rejects.toBeInstanceOf(StorageLockedError);
    } finally {
      await st.close();
      await site.cleanup();
    }
  });

  it('refuses an unknown format version and a foreign database', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nc-raftdb-'));
    try {
      await (await LevelRaftStorage.open(dir)).close();
      const raw = new ClassicLevel<Uint8Array, Uint8Array>(dir, { keyEncoding: 'view', valueEncoding: 'view' });
      await raw.put(LEVEL_KEYS.meta, encodeMeta(99));
      await raw.close();
      await expect(LevelRaftStorage.open(dir)).rejects.toMatchObject({ name: 'StorageVersionError', code: 'storage_version' });

      const foreign = mkdtempSync(join(tmpdir(), 'nc-foreign-'));
      const other = new ClassicLevel(foreign);
      await other.put('hello', 'world');
      await other.close();
      await expect(LevelRaftStorage.open(foreign)).rejects.toBeInstanceOf(StorageVersionError);
      rmSync(foreign, { recursive: true, force: true });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('detects a corrupt hard state', async () => {
    const site = levelSite();
    const st = await site.open();
    await st.save({ term: 2, vote: 'a', commit: 1 }, range(1, 3, 2));
    await st.close();
    const raw = new ClassicLevel<Uint8Array, Uint8Array>(site.dir, { keyEncoding: 'view', valueEncoding: 'view' });
    const hs = (await raw.get(LEVEL_KEYS.hardState))!.slice();
    hs[3]! ^= 0xff;
    await raw.put(LEVEL_KEYS.hardState, hs);
    await raw.close();
    await expect(site.open()).rejects.toBeInstanceOf(StorageCorruptError);
    await site.cleanup();
  });

  it('memory disk survives a crash (instance dropped, lock released) with all saved state', async () => {
    const disk = new MemoryDisk();
    const st = await MemoryRaftStorage.open(disk);
    await st.save({ term: 1, vote: 'a', commit: 0 }, [entry(1, 1)]);
    disk.crash();
    const again = await MemoryRaftStorage.open(disk);
    expect(await again.initialState()).toMatchObject({ lastIndex: 1, hardState: { vote: 'a' } });
    // The crashed instance can no longer write: a zombie must not corrupt the reopened store.
    await expect(st.save(null, [entry(2, 1)])).rejects.toBeInstanceOf(Error);
    await again.close();
  });
});

describe('LevelDB synced batch latency (informational)', () => {
  it('measures save() of one small entry with sync: true', async () => {
    const site = levelSite();
    const st = await site.open();
    const n = 200;
    const t0 = performance.now();
    for (let i = 1; i <= n; i++) await st.save({ term: 1, vote: 'a', commit: i - 1 }, [entry(i, 1, 128)]);
    const perWriteMs = (performance.now() - t0) / n;
    const t1 = performance.now();
    await st.entries(1, n + 1);
    const readMs = performance.now() - t1;
    console.log(`leveldb: synced save ${perWriteMs.toFixed(3)} ms/write over ${n}; read ${n} entries ${readMs.toFixed(2)} ms`);
    expect(perWriteMs).toBeGreaterThan(0);
    await st.close();
    await site.cleanup();
  });
});
