// The data directory: one folder per concern, private to the node's user, and a pid lock so that two
// node processes never share one (LevelDB, QMP sockets and VM disks assume a single owner).
import { constants, accessSync, chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { DataDirError, errorMessage } from './errors.js';

export const dataDirModeSafe = 0o700;
const pidFileName = 'node.pid';

export interface DataDirLayout {
  root: string;
  /** Ed25519 peer key and the cluster credentials of this node. */
  identity: string;
  /** LevelDB: Raft log, hard state, snapshots and applied cluster state. */
  raft: string;
  /** Content-addressed base images. */
  images: string;
  /** Per-VM folders: qcow2 overlays, console logs. */
  vms: string;
  /** Runtime files: QMP and migration sockets, the pid lock. */
  run: string;
  /** node.log when file logging is on. */
  logs: string;
}

export function dataDirLayout(root: string): DataDirLayout {
  return {
    root,
    identity: join(root, 'identity'),
    raft: join(root, 'raft'),
    images: join(root, 'images'),
    vms: join(root, 'vms'),
    run: join(root, 'run'),
    logs: join(root, 'logs'),
  };
}

export interface PrepareResult {
  layout: DataDirLayout;
  /** Folders whose permissions were looser than 0700 and were tightened. */
  tightened: string[];
}

/** Creates (or checks) the layout with owner-only permissions. Throws DataDirError naming the path and the reason. */
export function prepareDataDir(root: string): PrepareResult {
  const layout = dataDirLayout(root);
  const tightened: string[] = [];
  for (const dir of [layout.root, layout.identity, layout.raft, layout.images, layout.vms, layout.run, layout.logs]) {
    ensureDir(dir, tightened);
  }
  return { layout, tightened };
}

/**
 * mkdir -p, one level at a time. Node 20's `mkdirSync(..., { recursive: true })` spins forever on paths
 * under /proc (it retries ENOENT), which would hang the node on a bad dataDir instead of failing.
 */
function mkdirParents(dir: string): void {
  const parent = dirname(dir);
  if (parent !== dir && !existsSync(parent)) mkdirParents(parent);
  try {
    mkdirSync(dir, { mode: dataDirModeSafe });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

function ensureDir(dir: string, tightened: string[]): void {
  let st;
  try {
    st = statSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new DataDirError(`data dir: cannot inspect ${dir}: ${errorMessage(err)}`, { cause: err });
    }
    try {
      mkdirParents(dir);
    } catch (mkErr) {
      throw new DataDirError(`data dir: cannot create ${dir}: ${errorMessage(mkErr)}`, { cause: mkErr });
    }
    return;
  }
  if (!st.isDirectory()) throw new DataDirError(`data dir: ${dir} exists and is not a directory`);
  try {
    accessSync(dir, constants.R_OK | constants.W_OK | constants.X_OK);
  } catch (err) {
    throw new DataDirError(`data dir: ${dir} is not readable and writable by this user: ${errorMessage(err)}`, { cause: err });
  }
  if ((st.mode & 0o077) !== 0) {
    try {
      chmodSync(dir, dataDirModeSafe);
      tightened.push(dir);
    } catch (err) {
      throw new DataDirError(`data dir: ${dir} is accessible to other users and cannot be made private: ${errorMessage(err)}`, { cause: err });
    }
  }
}

export interface DataDirLock {
  path: string;
  release(): void;
}

/** Takes the pid lock in run/. A lock left by a dead process is taken over; a live one is an error. */
export function lockDataDir(layout: DataDirLayout, pid: number = process.pid): DataDirLock {
  const path = join(layout.run, pidFileName);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, `${pid}\n`);
      closeSync(fd);
      return {
        path,
        release: () => {
          try {
            if (readFileSync(path, 'utf8').trim() === String(pid)) rmSync(path);
          } catch {
            // already gone: nothing to release
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new DataDirError(`data dir: cannot create lock ${path}: ${errorMessage(err)}`, { cause: err });
      }
      const holder = Number.parseInt(safeRead(path), 10);
      if (Number.isInteger(holder) && holder > 0 && holder !== pid && processAlive(holder)) {
        throw new DataDirError(`data dir ${layout.root} is in use by another novacron process (pid ${holder})`, {
          details: { pid: holder },
        });
      }
      rmSync(path, { force: true }); // stale lock from a crashed process
    }
  }
  throw new DataDirError(`data dir: could not take lock ${path}`);
}

function safeRead(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
