// A TCP or unix socket as the mesh's ByteChannel, for the migration bench's two halves (no libp2p between them).
import type { Socket } from 'node:net';
import type { ByteChannel } from '../node/migration/protocol.js';

export function socketChannel(socket: Socket): ByteChannel {
  // Failures surface through write callbacks and the iterator; an 'error' event without a listener would crash.
  socket.on('error', () => undefined);
  // As libp2p's TCP transport does (noDelay true): without it Nagle holds the acks, small frames, behind the
  // peer's delayed ACKs.
  socket.setNoDelay(true);
  return {
    write: (chunk) => new Promise((resolve, reject) => socket.write(chunk, (err) => (err == null ? resolve() : reject(err)))),
    read: async function* () {
      for await (const chunk of socket.iterator({ destroyOnReturn: false })) yield chunk as Uint8Array;
    },
    closeWrite: async () => {
      socket.end();
    },
    abort: () => socket.destroy(),
  };
}
