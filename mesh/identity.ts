// The node's persistent Ed25519 identity: <dataDir>/identity/peer.key (protobuf-encoded, mode 0600).
// The peer ID derived from it is the node ID everywhere in NovaCron.
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import type { PeerId, PrivateKey } from '@libp2p/interface';
import { MeshStateError, meshErrorMessage } from './errors.js';
import { stateFileMode } from './state-file.js';

export const identityKeyFileName = 'peer.key';

export interface MeshIdentity {
  privateKey: PrivateKey;
  peerId: PeerId;
  keyFile: string;
  created: boolean;
  /** True when the key file had looser permissions and was tightened to 0600. */
  tightened: boolean;
}

export async function loadOrCreateIdentity(identityDir: string): Promise<MeshIdentity> {
  const keyFile = join(identityDir, identityKeyFileName);
  if (existsSync(keyFile)) {
    let tightened = false;
    try {
      if ((statSync(keyFile).mode & 0o077) !== 0) {
        chmodSync(keyFile, stateFileMode);
        tightened = true;
      }
      const privateKey = privateKeyFromProtobuf(readFileSync(keyFile));
      if (privateKey.type !== 'Ed25519') throw new Error(`expected an Ed25519 key, found ${privateKey.type}`);
      return { privateKey, peerId: peerIdFromPrivateKey(privateKey), keyFile, created: false, tightened };
    } catch (err) {
      throw new MeshStateError(`identity key ${keyFile} is unusable: ${meshErrorMessage(err)}`, { cause: err });
    }
  }
  const privateKey = await generateKeyPair('Ed25519');
  try {
    mkdirSync(identityDir, { recursive: true, mode: 0o700 });
    const tmp = `${keyFile}.tmp-${process.pid}`;
    writeFileSync(tmp, privateKeyToProtobuf(privateKey), { mode: stateFileMode });
    chmodSync(tmp, stateFileMode);
    renameSync(tmp, keyFile);
  } catch (err) {
    throw new MeshStateError(`cannot write identity key ${keyFile}: ${meshErrorMessage(err)}`, { cause: err });
  }
  return { privateKey, peerId: peerIdFromPrivateKey(privateKey), keyFile, created: true, tightened: false };
}
