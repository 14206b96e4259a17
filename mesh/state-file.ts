// Small JSON state files in <dataDir>/identity: written atomically (temp file + rename) with mode 0600,
// because they hold secrets' hashes and the member list that decides who may speak cluster protocols.
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { MeshStateError, meshErrorMessage } from './errors.js';

export const stateFileMode = 0o600;
export const stateFileBytesMax = 4 * 1024 * 1024;

export function readJsonState(path: string): unknown {
  if (!existsSync(path)) return undefined;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new MeshStateError(`cannot read ${path}: ${meshErrorMessage(err)}`, { cause: err });
  }
  if (text.length > stateFileBytesMax) throw new MeshStateError(`${path} is larger than ${stateFileBytesMax} bytes`);
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new MeshStateError(`${path} is not valid JSON: ${meshErrorMessage(err)}`, { cause: err });
  }
}

export function writeJsonState(path: string, value: unknown): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: stateFileMode });
    chmodSync(tmp, stateFileMode);
    renameSync(tmp, path);
  } catch (err) {
    throw new MeshStateError(`cannot write ${path}: ${meshErrorMessage(err)}`, { cause: err });
  }
}
