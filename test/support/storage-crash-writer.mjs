// Child process of test/integration/storage-crash.test.ts: replays a write program against the built LevelDB
// RaftStorage (dist/) and reports on stdout, so the parent can SIGKILL it at chosen points.
//
//   node storage-crash-writer.mjs <dbDir> <program.json> <from> [stopAfter]
//
// Runs program ops [from, ...) one at a time. Before op k (1-based) it prints `begin k`; after its promise
// resolved (synced) it prints `ack k`. stdout to a pipe is synchronous on Linux, so a line is in the pipe
// before the next op starts. With stopAfter it idles after `ack stopAfter`, holding the database open.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import process from 'node:process';
import { setInterval } from 'node:timers';
import { pathToFileURL } from 'node:url';

const [dir, programPath, fromArg, stopArg] = process.argv.slice(2);
const root = resolve(import.meta.dirname, '../..');
const { LevelRaftStorage } = await import(pathToFileURL(resolve(root, 'dist/consensus/storage/leveldb.js')).href);

/** Deterministic payload; the parent builds the same bytes (storage-crash.test.ts `payload`). */
function payload(size, seed) {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (seed + i * 7) & 0xff;
  return b;
}

const program = JSON.parse(readFileSync(programPath, 'utf8'));
const from = Number(fromArg);
const stopAfter = stopArg === undefined ? Infinity : Number(stopArg);

try {
  const st = await LevelRaftStorage.open(dir);
  process.stdout.write(`ready ${from}\n`);
  for (let k = from + 1; k <= program.length; k++) {
    const op = program[k - 1];
    process.stdout.write(`begin ${k}\n`);
    if (op.kind === 'save') {
      const entries = op.entries.map((e) => ({ index: e.index, term: e.term, type: 'normal', data: payload(e.size, e.index * 131 + e.term) }));
      await st.save(op.hardState, entries);
    } else if (op.kind === 'compact' || op.kind === 'install') {
      const snapshot = { meta: { index: op.index, term: op.term, conf: op.conf }, data: payload(op.size, op.index) };
      if (op.kind === 'compact') await st.compact(snapshot, op.keep);
      else await st.applySnapshot(snapshot);
    } else if (op.kind === 'applied') {
      await st.saveApplied(op.index, payload(op.size, op.index + 1));
    } else {
      throw new Error(`unknown op ${op.kind}`);
    }
    process.stdout.write(`ack ${k}\n`);
    if (k >= stopAfter) {
      // Hold the database open until killed: the kill then lands exactly after the k-th acknowledged write.
      setInterval(() => undefined, 1 << 30);
      await new Promise(() => undefined);
    }
  }
  await st.close();
  process.stdout.write('done\n');
} catch (err) {
  process.stderr.write(`error ${err?.name} ${err?.code} ${err?.message}\n`);
  process.exit(1);
}
