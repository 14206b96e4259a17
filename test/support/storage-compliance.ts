// One RaftStorage compliance suite, registered once per implementation, so memory and LevelDB cannot drift apart.
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import type { AppliedStore } from '../../consensus/storage/base.js';
import {
  StorageClosedError,
  StorageCompactedError,
  StorageInvalidArgumentError,
  StorageLockedError,
  StorageSnapshotOutOfDateError,
  StorageUnavailableError,
} from '../../consensus/storage/errors.js';
import type { Entry, RaftStorage, Snapshot } from '../../consensus/types.js';
import { StorageCorruptError } from '../../consensus/types.js';

export type TestStorage = RaftStorage & AppliedStore;

/** Ways to damage one stored entry record under the API, the way a torn write or a bad disk would. */
export type Damage = 'flip-byte' | 'truncate' | 'misplace' | 'drop';

/** One place where a store lives; it can be opened again after close (reopen = restart of the process). */
export interface StorageSite {
  open(): Promise<TestStorage>;
  /** Damage the record of entry `index`; called while the store is closed. Absent: the engine has no records. */
  damage?(index: number, how: Damage): Promise<void>;
  /** Open with verification at open switched off, so corruption surfaces at read time. */
  openUnverified?(): Promise<TestStorage>;
  cleanup(): Promise<void>;
}

export interface StorageHarness {
  name: string;
  /** The engine stores encoded records that can be damaged (runs the corruption tests). */
  recordsOnDisk?: boolean;
  site(): Promise<StorageSite>;
}

export function entry(index: number, term: number, data: string | number = `e${index}`): Entry {
  const bytes = typeof data === 'number' ? new Uint8Array(data).fill(index & 0xff) : new TextEncoder().encode(data);
  return { index, term, type: 'normal', data: bytes };
}

export function range(lo: number, hi: number, term: number, data?: number): Entry[] {
  const out: Entry[] = [];
  for (let i = lo; i < hi; i++) out.push(entry(i, term, data));
  return out;
}

export function snap(index: number, term: number, data = `state@${index}`): Snapshot {
  return { meta: { index, term, conf: { voters: ['a', 'b', 'c'], learners: ['d'], votersOutgoing: [] } }, data: new TextEncoder().encode(data) };
}

const summary = (es: Entry[]): [number, number, string][] => es.map((e) => [e.index, e.term, new TextDecoder().decode(e.data)]);

export function registerStorageCompliance(h: StorageHarness): void {
  describe(`RaftStorage compliance: ${h.name}`, () => {
    const sites: StorageSite[] = [];
    const open: TestStorage[] = [];
    afterEach(async () => {
      for (const s of open.splice(0)) await s.close();
      for (const s of sites.splice(0)) await s.cleanup();
    });
    async function fresh(): Promise<{ site: StorageSite; st: TestStorage }> {
      const site = await h.site();
      sites.push(site);
      const st = await site.open();
      open.push(st);
      return { site, st };
    }
    async function reopen(site: StorageSite, st: TestStorage): Promise<TestStorage> {
      await st.close();
      const again = await site.open();
      open.push(again);
      return again;
    }

    it('starts empty', async () => {
      const { st } = await fresh();
      expect(await st.initialState()).toEqual({ hardState: { term: 0, vote: null, commit: 0 }, snapshot: null, firstIndex: 1, lastIndex: 0 });
      expect(await st.entries(1, 1)).toEqual([]);
      expect(await st.snapshot()).toBeNull();
      expect(await st.loadApplied()).toBeNull();
    });

    it('appends and reads entries back, as copies', async () => {
      const { st } = await fresh();
      await st.save(null, range(1, 6, 1));
      const got = await st.entries(1, 6);
      expect(summary(got)).toEqual(summary(range(1, 6, 1)));
      expect(got.map((e) => e.type)).toEqual(['normal', 'normal', 'normal', 'normal', 'normal']);
      got[0]!.data[0] = 0x7a;
      expect(summary(await st.entries(1, 2))).toEqual([[1, 1, 'e1']]);
      expect((await st.initialState()).lastIndex).toBe(5);
    });

    it('keeps entry types and empty data', async () => {
      const { st } = await fresh();
      const es: Entry[] = [
        { index: 1, term: 1, type: 'empty', data: new Uint8Array() },
        { index: 2, term: 1, type: 'conf', data: Uint8Array.of(1, 2, 3) },
        { index: 3, term: 2, type: 'normal', data: Uint8Array.of(0) },
      ];
      await st.save(null, es);
      expect(await st.entries(1, 4)).toEqual(es);
    });

    it('round-trips the hard state, with and without a vote', async () => {
      const { site, st } = await fresh();
      await st.save({ term: 3, vote: '12D3KooWabc', commit: 0 }, []);
      expect((await st.initialState()).hardState).toEqual({ term: 3, vote: '12D3KooWabc', commit: 0 });
      await st.save({ term: 4, vote: null, commit: 0 }, range(1, 3, 4));
      const again = await reopen(site, st);
      expect((await again.initialState()).hardState).toEqual({ term: 4, vote: null, commit: 0 });
    });

    it('overwrites the conflicting suffix: entries at or after the first new index are replaced', async () => {
      const { st } = await fresh();
      await st.save(null, range(1, 8, 1));
      await st.save(null, [entry(4, 2, 'x4'), entry(5, 2, 'x5')]);
      expect((await st.initialState()).lastIndex).toBe(5);
      expect(summary(await st.entries(1, 6))).toEqual([...summary(range(1, 4, 1)), [4, 2, 'x4'], [5, 2, 'x5']]);
      await expect(st.entries(1, 8)).rejects.toBeInstanceOf(StorageUnavailableError);
    });

    it('rejects a gap, a non-contiguous batch and terms going backwards', async () => {
      const { st } = await fresh();
      await st.save(null, range(1, 4, 2));
      await expect(st.save(null, [entry(5, 2)])).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      await expect(st.save(null, [entry(4, 2), entry(6, 2)])).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      await expect(st.save(null, [entry(4, 3), entry(5, 2)])).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      await expect(st.save(null, [entry(4, 1)])).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      await st.save({ term: 5, vote: null, commit: 0 }, []);
      await expect(st.save({ term: 4, vote: null, commit: 0 }, [])).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      // A rejected call changes nothing and leaves the store usable.
      expect((await st.initialState()).lastIndex).toBe(3);
      await st.save(null, [entry(4, 2)]);
      expect((await st.initialState()).lastIndex).toBe(4);
    });

    it('checks entries() bounds', async () => {
      const { st } = await fresh();
      await st.save(null, range(1, 11, 1));
      await st.compact(snap(5, 1), 0);
      await expect(st.entries(5, 7)).rejects.toBeInstanceOf(StorageCompactedError);
      await expect(st.entries(6, 12)).rejects.toBeInstanceOf(StorageUnavailableError);
      await expect(st.entries(8, 7)).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      expect(await st.entries(11, 11)).toEqual([]);
      expect((await st.entries(6, 11)).map((e) => e.index)).toEqual([6, 7, 8, 9, 10]);
    });

    it('limits entries() by maxBytes but returns at least one', async () => {
      const { st } = await fresh();
      await st.save(null, range(1, 6, 1, 100));
      expect((await st.entries(1, 6, 250)).map((e) => e.index)).toEqual([1, 2]);
      expect((await st.entries(1, 6, 300)).map((e) => e.index)).toEqual([1, 2, 3]);
      expect((await st.entries(2, 6, 0)).map((e) => e.index)).toEqual([2]);
      expect((await st.entries(1, 6, 10_000)).length).toBe(5);
      expect((await st.entries(1, 6)).length).toBe(5);
    });

    it('compact stores the snapshot and drops entries up to index - keepEntries', async () => {
      const { st } = await fresh();
      await st.save({ term: 1, vote: 'a', commit: 10 }, range(1, 11, 1));
      await st.compact(snap(7, 1), 2);
      const s = await st.initialState();
      expect(s.firstIndex).toBe(6);
      expect(s.lastIndex).toBe(10);
      expect(s.snapshot).toEqual(snap(7, 1).meta);
      expect((await st.entries(6, 11)).map((e) => e.index)).toEqual([6, 7, 8, 9, 10]);
      await expect(st.entries(5, 6)).rejects.toBeInstanceOf(StorageCompactedError);
      expect(await st.snapshot()).toEqual(snap(7, 1));
      // Entries up to the snapshot are committed: re-sent ones are skipped, a different term there is a bug.
      await st.save(null, [entry(6, 1, 'other'), entry(7, 1, 'other'), entry(8, 2, 'new8')]);
      expect(summary(await st.entries(6, 9))).toEqual([[6, 1, 'e6'], [7, 1, 'e7'], [8, 2, 'new8']]);
      await expect(st.save(null, [entry(7, 2)])).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      await st.save(null, range(9, 11, 2));
      // keepEntries 0 drops everything up to and including the snapshot index.
      await st.compact(snap(9, 2), 0);
      expect((await st.initialState()).firstIndex).toBe(10);
      // Appending right after still checks terms against what is left.
      await expect(st.save(null, [entry(11, 1)])).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      await st.save(null, [entry(11, 3)]);
      expect((await st.entries(10, 12)).map((e) => e.term)).toEqual([2, 3]);
    });

    it('compact refuses old, future and mismatched snapshots', async () => {
      const { st } = await fresh();
      await st.save(null, [...range(1, 4, 1), ...range(4, 7, 2)]);
      await st.compact(snap(3, 1), 0);
      await expect(st.compact(snap(3, 1), 0)).rejects.toBeInstanceOf(StorageSnapshotOutOfDateError);
      await expect(st.compact(snap(2, 1), 0)).rejects.toBeInstanceOf(StorageSnapshotOutOfDateError);
      await expect(st.compact(snap(7, 2), 0)).rejects.toBeInstanceOf(StorageUnavailableError);
      await expect(st.compact(snap(5, 1), 0)).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      await st.compact(snap(5, 2), 0);
      expect((await st.initialState()).firstIndex).toBe(6);
    });

    it('applySnapshot past the log drops it all and raises commit', async () => {
      const { st } = await fresh();
      await st.save({ term: 3, vote: 'b', commit: 2 }, range(1, 6, 1));
      await st.applySnapshot(snap(8, 3));
      const s = await st.initialState();
      expect(s).toEqual({ hardState: { term: 3, vote: 'b', commit: 8 }, snapshot: snap(8, 3).meta, firstIndex: 9, lastIndex: 8 });
      expect(await st.entries(9, 9)).toEqual([]);
      await expect(st.entries(8, 9)).rejects.toBeInstanceOf(StorageCompactedError);
      // The next append must follow the snapshot, with a term not below it.
      await expect(st.save(null, [entry(9, 2)])).rejects.toBeInstanceOf(StorageInvalidArgumentError);
      await st.save(null, [entry(9, 3)]);
      expect(summary(await st.entries(9, 10))).toEqual([[9, 3, 'e9']]);
    });

    it('applySnapshot keeps the entries after it when the log agrees at its index', async () => {
      const { st } = await fresh();
      await st.save(null, range(1, 11, 2));
      await st.applySnapshot(snap(6, 2));
      const s = await st.initialState();
      expect([s.firstIndex, s.lastIndex]).toEqual([7, 10]);
      expect((await st.entries(7, 11)).map((e) => e.index)).toEqual([7, 8, 9, 10]);
    });

    it('applySnapshot drops the whole log when it conflicts at the index', async () => {
      const { st } = await fresh();
      await st.save(null, range(1, 11, 2));
      await st.applySnapshot(snap(6, 3));
      const s = await st.initialState();
      expect([s.firstIndex, s.lastIndex]).toEqual([7, 6]);
      await expect(st.applySnapshot(snap(5, 3))).rejects.toBeInstanceOf(StorageSnapshotOutOfDateError);
    });

    it('saves and loads the applied state', async () => {
      const { site, st } = await fresh();
      await st.saveApplied(4, Uint8Array.of(9, 9));
      await st.saveApplied(7, Uint8Array.of(1, 2, 3));
      expect(await st.loadApplied()).toEqual({ index: 7, data: Uint8Array.of(1, 2, 3) });
      const again = await reopen(site, st);
      expect(await again.loadApplied()).toEqual({ index: 7, data: Uint8Array.of(1, 2, 3) });
    });

    it('reopen keeps everything', async () => {
      const { site, st } = await fresh();
      await st.save({ term: 2, vote: 'c', commit: 9 }, range(1, 13, 2));
      await st.compact(snap(6, 2, 'six'), 1);
      await st.save(null, [entry(12, 3, 'twelve'), entry(13, 3)]);
      await st.saveApplied(9, Uint8Array.of(42));
      const before = await st.initialState();
      const again = await reopen(site, st);
      expect(await again.initialState()).toEqual(before);
      expect(before).toMatchObject({ firstIndex: 6, lastIndex: 13 });
      expect(summary(await again.entries(6, 14))).toEqual(summary([...range(6, 12, 2), entry(12, 3, 'twelve'), entry(13, 3)]));
      expect(await again.snapshot()).toEqual(snap(6, 2, 'six'));
      expect(await again.loadApplied()).toEqual({ index: 9, data: Uint8Array.of(42) });
      // And it goes on working after the restart.
      await again.save(null, [entry(14, 3)]);
      expect((await again.initialState()).lastIndex).toBe(14);
    });

    it('refuses a second open while the first is open, then allows it after close', async () => {
      const { site, st } = await fresh();
      await expect(site.open()).rejects.toBeInstanceOf(StorageLockedError);
      await st.save(null, [entry(1, 1)]);
      const again = await reopen(site, st);
      expect((await again.initialState()).lastIndex).toBe(1);
    });

    it('refuses calls after close; close is idempotent', async () => {
      const { st } = await fresh();
      await st.close();
      await st.close();
      await expect(st.entries(1, 1)).rejects.toBeInstanceOf(StorageClosedError);
      await expect(st.save(null, [entry(1, 1)])).rejects.toMatchObject({ name: 'StorageClosedError', code: 'storage_closed' });
    });

    it('serializes calls made without awaiting, in call order', async () => {
      const { st } = await fresh();
      const writes: Promise<void>[] = [];
      for (let i = 1; i <= 20; i++) writes.push(st.save({ term: i, vote: null, commit: i - 1 }, [entry(i, i)]));
      const read = st.entries(1, 21);
      await Promise.all(writes);
      expect((await read).map((e) => e.term)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      expect((await st.initialState()).hardState.term).toBe(20);
    });

    it('matches a reference log under random appends, overwrites, compactions and reopens', async () => {
      // The reference: a plain array of terms indexed by log index, plus the snapshot index.
      const step = fc.oneof(
        fc.record({ kind: fc.constant('append' as const), back: fc.nat(6), count: fc.integer({ min: 1, max: 4 }), bump: fc.nat(1) }),
        fc.record({ kind: fc.constant('compact' as const), back: fc.nat(6), keep: fc.nat(3) }),
        fc.record({ kind: fc.constant('reopen' as const) }),
      );
      await fc.assert(
        fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 12 }), async (steps) => {
          const site = await h.site();
          let st = await site.open();
          try {
            const terms = new Map<number, number>();
            let first = 1;
            let last = 0;
            let snapIndex = 0;
            let term = 1;
            for (const s of steps) {
              if (s.kind === 'append') {
                const start = Math.max(first, snapIndex + 1, last + 1 - s.back);
                term += s.bump;
                const es = range(start, start + s.count, term);
                await st.save(null, es);
                for (let i = start; i <= last; i++) terms.delete(i);
                for (const e of es) terms.set(e.index, e.term);
                last = start + s.count - 1;
              } else if (s.kind === 'compact') {
                const at = last - s.back;
                if (at <= snapIndex || at < first) continue;
                await st.compact(snap(at, terms.get(at)!), s.keep);
                for (let i = first; i <= at - s.keep; i++) terms.delete(i);
                first = Math.max(first, at - s.keep + 1);
                snapIndex = at;
              } else {
                await st.close();
                st = await site.open();
              }
              const init = await st.initialState();
              expect([init.firstIndex, init.lastIndex, init.snapshot?.index ?? 0]).toEqual([first, last, snapIndex]);
              const got = await st.entries(first, last + 1);
              expect(got.map((e) => [e.index, e.term])).toEqual([...terms.entries()].sort((a, b) => a[0] - b[0]));
            }
          } finally {
            await st.close();
            await site.cleanup();
          }
        }),
        { numRuns: 25 },
      );
    });

    // Only engines with records on disk can have torn or corrupt ones; the memory store holds objects.
    if (h.recordsOnDisk === true) describe('corrupt records are errors, never data', () => {
      const cases: [Damage, string][] = [
        ['flip-byte', 'a flipped byte (bad checksum)'],
        ['truncate', 'a truncated record (torn write)'],
        ['misplace', 'a record stored under another index'],
        ['drop', 'a missing record (index discontinuity)'],
      ];
      for (const [how, what] of cases) {
        it(`detects ${what} at open and names the index`, async () => {
          const { site, st } = await fresh();
          if (!site.damage) throw new Error(`${h.name}: recordsOnDisk is set but the site cannot damage records`);
          await st.save(null, range(1, 7, 1));
          await st.close();
          await site.damage(4, how);
          const err: unknown = await site.open().then(
            async (s) => {
              open.push(s);
              return null;
            },
            (e: unknown) => e,
          );
          expect(err).toBeInstanceOf(StorageCorruptError);
          expect(err).toMatchObject({ name: 'StorageCorruptError', code: 'storage_corrupt', index: 4 });
        });

        it(`detects ${what} at read time when open does not verify`, async () => {
          const { site, st } = await fresh();
          if (!site.damage || !site.openUnverified) throw new Error(`${h.name}: recordsOnDisk is set but the site cannot damage records or open unverified`);
          await st.save(null, range(1, 7, 1));
          await st.close();
          await site.damage(4, how);
          const again = await site.openUnverified();
          open.push(again);
          // Entries before the damage are still served; any read that covers it fails.
          expect((await again.entries(1, 4)).map((e) => e.index)).toEqual([1, 2, 3]);
          await expect(again.entries(2, 6)).rejects.toMatchObject({ name: 'StorageCorruptError', index: 4 });
          await expect(again.entries(4, 5)).rejects.toBeInstanceOf(StorageCorruptError);
        });
      }
    });
  });
}
