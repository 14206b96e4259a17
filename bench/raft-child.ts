// One node process of the Raft benchmark: Mesh + LevelDB + mesh Raft transport + RaftNode, driven over IPC; the leader runs the proposers.
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { multiaddr } from '@multiformats/multiaddr';
import { peerIdFromString } from '@libp2p/peer-id';
import { NotLeaderError, RaftNode, type RaftLogger } from '../consensus/driver.js';
import { Xoshiro128 } from '../consensus/core/random.js';
import { LevelRaftStorage } from '../consensus/storage/leveldb.js';
import { Mesh, singleHostMeshConfig, type MeshConfig, type MeshLogger } from '../mesh/index.js';
import { MeshRaftTransport } from '../node/raft-transport.js';
import { BenchMachine, CountingStorage, addFailure, round, type ChildReply, type ChildRequest, type LatencyResult, type PeerInfo, type SampleResult, type StatusResult } from './raft-ipc.js';

/** Telemetry is not what we measure; the default interval keeps its background cost as in production. */
const telemetryIntervalMs = 2000;
/** A proposer that hits NotLeader (leadership moved) waits this long before trying again, rather than spinning. */
const notLeaderBackoffMs = 50;
const dialTimeoutMs = 5000;
const loopDelayResolutionMs = 10;

function stderrLogger(prefix: string): RaftLogger & MeshLogger {
  // Warnings and errors only: info lines from three processes would bury the parent's progress output.
  const write = (level: string) => (a: Record<string, unknown> | string | object, b?: string): void => {
    const msg = typeof a === 'string' ? a : (b ?? '');
    const obj = typeof a === 'string' ? {} : a;
    let detail = '';
    try {
      detail = JSON.stringify(obj, (_k, v: unknown) => (v instanceof Error ? `${v.name}: ${v.message}` : v));
    } catch {
      detail = '';
    }
    process.stderr.write(`[${prefix}] ${level} ${msg} ${detail === '{}' ? '' : detail}\n`);
  };
  const drop = (): void => undefined;
  const logger: RaftLogger & MeshLogger = { trace: drop, debug: drop, info: drop, warn: write('warn'), error: write('error'), child: () => logger };
  return logger;
}

function meshConfig(): MeshConfig {
  return singleHostMeshConfig({ telemetryIntervalMs });
}

/** A fresh 256-byte (or N-byte) command: proposer and sequence up front so every command is distinct. */
function command(template: Uint8Array, proposer: number, seq: number): Uint8Array {
  // A new buffer each time: the core keeps a reference to proposed data until it is persisted and sent.
  const cmd = template.slice();
  const v = new DataView(cmd.buffer);
  v.setUint32(0, proposer);
  v.setUint32(4, seq);
  return cmd;
}

function templateOf(bytes: number): Uint8Array {
  const t = new Uint8Array(Math.max(8, bytes));
  const rnd = new Xoshiro128(bytes);
  for (let i = 0; i < t.length; i++) t[i] = rnd.int(256);
  return t;
}

class Load {
  completed = 0;
  readonly failed: Record<string, number> = {};
  latenciesMs: number[] = [];
  private stopping = false;
  private readonly loops: Promise<void>[] = [];

  constructor(
    private readonly node: RaftNode,
    proposers: number,
    commandBytes: number,
  ) {
    const template = templateOf(commandBytes);
    for (let p = 0; p < proposers; p++) this.loops.push(this.loop(p, template));
  }

  private async loop(proposer: number, template: Uint8Array): Promise<void> {
    for (let seq = 0; !this.stopping; seq++) {
      const start = performance.now();
      try {
        await this.node.propose(command(template, proposer, seq));
        this.latenciesMs.push(performance.now() - start);
        this.completed++;
      } catch (err) {
        addFailure(this.failed, err);
        if (err instanceof NotLeaderError) await new Promise((r) => setTimeout(r, notLeaderBackoffMs));
      }
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
  }
}

export async function runChild(index: number, dataDir: string): Promise<void> {
  const log = stderrLogger(`node${index}`);
  let exitAfterReply = false;
  const send = (msg: ChildReply | { hello: PeerInfo }): void => {
    // Exit only once the reply to `stop` is handed to the IPC channel, or the parent would wait for it in vain.
    process.send?.(msg, undefined, undefined, () => {
      if (exitAfterReply && 'id' in msg) process.exit(0);
    });
  };
  // An orphaned node would keep its LevelDB lock and port: leave as soon as the parent is gone.
  process.on('disconnect', () => process.exit(1));

  const mesh = await Mesh.create({ config: meshConfig(), identityDir: join(dataDir, 'identity'), dataDir, nodeName: `bench-${index}`, version: 'bench', logger: log });
  await mesh.start();
  const sm = new BenchMachine();
  const loopDelay = monitorEventLoopDelay({ resolution: loopDelayResolutionMs });
  loopDelay.enable();
  let members = new Set<string>();
  let storage: CountingStorage | null = null;
  let transport: MeshRaftTransport | null = null;
  let node: RaftNode | null = null;
  let load: Load | null = null;

  const raft = (): RaftNode => {
    if (node === null) throw new Error('raft node not open');
    return node;
  };

  const handlers: { [K in ChildRequest['op']]: (req: Extract<ChildRequest, { op: K }>) => Promise<unknown> } = {
    peers: async (req) => {
      members = new Set(req.peers.map((p) => p.peerId));
      mesh.setMemberProvider({ isMember: (p) => members.has(p) });
      for (const p of req.peers) {
        if (p.peerId === mesh.peerId) continue;
        // The peer store must know addresses so that the transport can dial by peer id alone (and re-dial).
        const addrs = p.addrs.map((a) => multiaddr(a).decapsulateCode(421));
        await mesh.libp2p.peerStore.merge(peerIdFromString(p.peerId), { multiaddrs: addrs });
      }
      return null;
    },
    open: async (req) => {
      // One connection per pair: the lower-numbered node dials, so the two sides do not race two connections.
      await Promise.all(req.dial.map((p) => mesh.libp2p.dial(peerIdFromString(p.peerId), { signal: AbortSignal.timeout(dialTimeoutMs) })));
      storage = new CountingStorage(await LevelRaftStorage.open(join(dataDir, 'raft')));
      transport = new MeshRaftTransport(mesh.protocols, mesh.peerId, log);
      await transport.start();
      node = await RaftNode.open({
        id: mesh.peerId,
        storage,
        transport,
        stateMachine: sm,
        bootstrap: { voters: req.voters, learners: [], votersOutgoing: [] },
        random: new Xoshiro128(req.seed),
        logger: log,
        tickIntervalMs: req.tickIntervalMs,
      });
      return null;
    },
    status: async () => ({ status: raft().status(), checksum: sm.checksum }) satisfies StatusResult,
    'load-start': async (req) => {
      if (load !== null) throw new Error('load already running');
      load = new Load(raft(), req.proposers, req.commandBytes);
      return null;
    },
    sample: async (req) => {
      const cpu = process.cpuUsage();
      // The histogram records whole sampling intervals (an idle loop shows the resolution): subtract it.
      const lateMs = (ns: number): number => round(Math.max(0, ns / 1e6 - loopDelayResolutionMs));
      const eventLoopDelayMs = { mean: lateMs(loopDelay.mean), p99: lateMs(loopDelay.percentile(99)) };
      // Progress samples in the middle of a window must not cut the window's event-loop histogram short.
      if (req.window) loopDelay.reset();
      const latenciesMs = load?.latenciesMs ?? [];
      if (load !== null) load.latenciesMs = [];
      return {
        atMs: performance.now(),
        completed: load?.completed ?? 0,
        failed: { ...(load?.failed ?? {}) },
        latenciesMs,
        counters: { ...raft().counters },
        storage: { ...(storage?.stats ?? { saves: 0, hardStateOnlySaves: 0, saveMs: 0, entries: 0 }) },
        cpuUserUs: cpu.user,
        cpuSystemUs: cpu.system,
        eventLoopDelayMs,
      } satisfies SampleResult;
    },
    'load-stop': async () => {
      await load?.stop();
      load = null;
      return null;
    },
    latency: async (req) => {
      const n = raft();
      const template = templateOf(req.commandBytes);
      const latenciesMs: number[] = [];
      const failed: Record<string, number> = {};
      for (let seq = 0; seq < req.count; seq++) {
        const start = performance.now();
        try {
          await n.propose(command(template, 0xffffffff, seq));
          latenciesMs.push(performance.now() - start);
        } catch (err) {
          addFailure(failed, err);
        }
      }
      return { latenciesMs, failed } satisfies LatencyResult;
    },
    stop: async () => {
      await load?.stop();
      await node?.close(); // closes the transport and the storage too
      if (node === null) await storage?.close();
      await mesh.stop();
      exitAfterReply = true;
      return null;
    },
  };

  process.on('message', (raw) => {
    const req = raw as ChildRequest;
    const handler = handlers[req.op] as (r: ChildRequest) => Promise<unknown>;
    handler(req).then(
      (result) => send({ id: req.id, ok: true, result }),
      (err: unknown) => send({ id: req.id, ok: false, error: err instanceof Error ? `${err.name}: ${err.message}` : String(err) }),
    );
  });
  send({ hello: { peerId: mesh.peerId, addrs: mesh.addresses() } });
}
