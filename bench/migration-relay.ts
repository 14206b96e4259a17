// Runs inside the target's network namespace for bench:migration: accepts TCP connections on the shaped link and
// relays each, byte for byte, to a unix socket of the bench (unix sockets are not namespaced), so what crossed the
// shaped veth is exactly the NovaCron tunnel's framed stream. Usage: node migration-relay.js HOST PORT UNIX_PATH
import { connect, createServer } from 'node:net';

const [host, portText, unixPath] = process.argv.slice(2);
if (host === undefined || portText === undefined || unixPath === undefined) {
  process.stderr.write('usage: migration-relay HOST PORT UNIX_PATH\n');
  process.exit(2);
}
const server = createServer({ allowHalfOpen: true }, (tcp) => {
  const local = connect({ path: unixPath, allowHalfOpen: true });
  tcp.pipe(local);
  local.pipe(tcp);
  const close = (): void => {
    tcp.destroy();
    local.destroy();
  };
  tcp.on('error', close);
  local.on('error', close);
});
server.listen(Number(portText), host, () => process.stdout.write('ready\n'));
