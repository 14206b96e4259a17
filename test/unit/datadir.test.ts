// Proves the data dir is created private, refuses unusable paths with a DataDirError, and that the pid lock keeps two nodes apart.
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { lockDataDir, prepareDataDir } from '../../node/datadir.js';
import { DataDirError } from '../../node/errors.js';
import { removeTempDirs, tempDir } from '../support/tmp.js';

afterAll(removeTempDirs);

function tmp(): string {
  return tempDir('nc-datadir-');
}

describe('prepareDataDir', () => {
  it('creates every folder with mode 0700', () => {
    const root = join(tmp(), 'data');
    const { layout } = prepareDataDir(root);
    for (const dir of [layout.root, layout.identity, layout.raft, layout.images, layout.vms, layout.run, layout.logs]) {
      expect(statSync(dir).isDirectory()).toBe(true);
      expect(statSync(dir).mode & 0o777).toBe(0o700);
    }
  });

  it('tightens folders that other users could read', () => {
    const root = tmp();
    mkdirSync(join(root, 'images'), { mode: 0o755 });
    chmodSync(join(root, 'images'), 0o755);
    const { tightened } = prepareDataDir(root);
    expect(tightened).toContain(join(root, 'images'));
    expect(statSync(join(root, 'images')).mode & 0o777).toBe(0o700);
  });

  it('refuses a path that is a file', () => {
    const file = join(tmp(), 'file');
    writeFileSync(file, 'x');
    expect(() => prepareDataDir(file)).toThrow(DataDirError);
    expect(() => prepareDataDir(file)).toThrow(/exists and is not a directory/);
  });

  it('refuses a path below a file', () => {
    const file = join(tmp(), 'file');
    writeFileSync(file, 'x');
    expect(() => prepareDataDir(join(file, 'data'))).toThrow(/cannot (create|inspect)/);
  });

  it('refuses a path that cannot be created', () => {
    // /proc refuses mkdir even for root, so this holds in CI too.
    expect(() => prepareDataDir('/proc/novacron-test/data')).toThrow(DataDirError);
  });

  it('refuses a subfolder that is a file', () => {
    const root = tmp();
    writeFileSync(join(root, 'raft'), 'x');
    expect(() => prepareDataDir(root)).toThrow(/raft exists and is not a directory/);
  });
});

describe('lockDataDir', () => {
  it('takes the lock, refuses a second holder that is alive, and releases', async () => {
    const { layout } = prepareDataDir(tmp());
    const lock = lockDataDir(layout);
    expect(readFileSync(lock.path, 'utf8').trim()).toBe(String(process.pid));

    // A live process other than us holds it: simulate with a sleeping child's pid.
    lock.release();
    expect(existsSync(lock.path)).toBe(false);
    const child = spawn('sleep', ['30']);
    try {
      const other = lockDataDir(layout, child.pid);
      expect(() => lockDataDir(layout)).toThrow(/in use by another novacron process \(pid \d+\)/);
      other.release();
    } finally {
      child.kill();
    }
  });

  it('takes over a lock left by a dead process', async () => {
    const { layout } = prepareDataDir(tmp());
    const child = spawn('true');
    await new Promise((r) => child.on('exit', r));
    writeFileSync(join(layout.run, 'node.pid'), `${child.pid}\n`);
    const lock = lockDataDir(layout);
    expect(readFileSync(lock.path, 'utf8').trim()).toBe(String(process.pid));
    lock.release();
  });
});
