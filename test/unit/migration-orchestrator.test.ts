// Proves the node-side orchestration of live migrations: the pure source/target decisions (restart rules included), the downtime arithmetic, the data-stream header framing, and two MigrationServices over the real cluster state machine with a fake engine, mesh and driver: a full migration moves ownership and removes the source copy, cancel aborts and cleans both sides, a refused switch-over leaves the VM on the source, restarted nodes resolve inherited records, and the agent is kept off migrating VMs.
import { mkdtempSync, rmSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ClusterStateMachine, encodeCommand, hashSecret, migrationOptionsDefault, type ClusterCommand, type Migration, type MigrationPhase } from '../../consensus/cluster/index.js';
import pino from 'pino';
import { decideSource, decideTarget, downtimeMs, progressDue, type SourceFacts, type TargetFacts } from '../../node/migration/decide.js';
import { encodeDataHeader, readDataHeader, validateLoadedAnswer, validateMigrateRequest, type ByteChannel, type ChannelKind } from '../../node/migration/protocol.js';
import { MigrationService, clean, type MigrationMeshHost } from '../../node/migration/service.js';
import type { EngineProgress, EngineTargetSession, MigrationDriver, MigrationEngine, SourceRunOptions } from '../../node/migration/engine.js';
import type { QmpClient } from '../../node/hypervisor/qmp.js';
import type { VmState } from '../../node/hypervisor/qemu.js';
import { waitUntil } from '../support/wait.js';
import { channelPair } from '../support/channel-pair.js';

const A = 'NodeA';
const B = 'NodeB';
const C = 'NodeC';
const vmId = '11111111-2222-4333-8444-555555555555';

function mig(phase: MigrationPhase, over: Partial<Migration> = {}): Migration {
  return { id: 'm1', vm: vmId, source: A, target: B, options: migrationOptionsDefault, phase, reason: null, progress: {}, createdAt: 1, updatedAt: 1, finishedAt: null, ...over };
}

describe('decisions', () => {
  const src = (f: Partial<SourceFacts>): SourceFacts => ({ running: false, inherited: false, handled: false, ownerIsSelf: true, ...f });
  const tgt = (f: Partial<TargetFacts>): TargetFacts => ({ session: 'none', inherited: false, handled: false, ownerIsSelf: false, leftovers: false, ...f });

  it('source: starts requested ones once, fails inherited in-flight ones, aborts a run the record left, removes the moved copy', () => {
    expect(decideSource(mig('requested'), src({}))).toEqual({ kind: 'start' });
    expect(decideSource(mig('requested'), src({ running: true }))).toEqual({ kind: 'none' });
    expect(decideSource(mig('requested'), src({ inherited: true }))).toEqual({ kind: 'start' });
    for (const p of ['preparing', 'transferring', 'switching'] as const) {
      expect(decideSource(mig(p), src({ running: true }))).toEqual({ kind: 'none' });
      // Fresh record seen mid-flight without a run and not inherited: another process of ours cannot exist; wait.
      expect(decideSource(mig(p), src({}))).toEqual({ kind: 'none' });
      const d = decideSource(mig(p), src({ inherited: true }));
      expect(d.kind).toBe('fail');
      expect(d.kind === 'fail' && d.reason).toContain(`restarted during ${p}`);
    }
    expect(decideSource(mig('cancelled', { reason: 'user' }), src({ running: true }))).toEqual({ kind: 'abort', reason: 'user' });
    expect(decideSource(mig('failed'), src({}))).toEqual({ kind: 'recover' });
    expect(decideSource(mig('failed'), src({ handled: true }))).toEqual({ kind: 'none' });
    expect(decideSource(mig('completed'), src({ ownerIsSelf: false }))).toEqual({ kind: 'cleanupMovedAway' });
    // Never remove a VM this node owns again (it came back by a later migration).
    expect(decideSource(mig('completed'), src({ ownerIsSelf: true }))).toEqual({ kind: 'none' });
    expect(decideSource(mig('completed'), src({ ownerIsSelf: false, running: true }))).toEqual({ kind: 'none' });
  });

  it('target: keeps the received QEMU through switching, goes live only when completed, cleans up a dead or ended session', () => {
    for (const p of ['requested', 'preparing', 'transferring'] as const) {
      expect(decideTarget(mig(p), tgt({}))).toEqual({ kind: 'none' });
      expect(decideTarget(mig(p), tgt({ session: 'ready' }))).toEqual({ kind: 'none' });
      const d = decideTarget(mig(p), tgt({ inherited: true }));
      expect(d.kind === 'cleanup' && d.fail).toContain('target node restarted');
    }
    expect(decideTarget(mig('switching'), tgt({ inherited: true, leftovers: true }))).toEqual({ kind: 'none' });
    expect(decideTarget(mig('transferring'), tgt({ session: 'ready' }))).toEqual({ kind: 'none' });
    expect(decideTarget(mig('completed'), tgt({ session: 'ready', ownerIsSelf: true }))).toEqual({ kind: 'goLive' });
    expect(decideTarget(mig('completed'), tgt({ session: 'live', ownerIsSelf: true }))).toEqual({ kind: 'none' });
    expect(decideTarget(mig('completed'), tgt({ inherited: true, ownerIsSelf: true, leftovers: true }))).toEqual({ kind: 'none' });
    expect(decideTarget(mig('cancelled'), tgt({ session: 'ready' }))).toEqual({ kind: 'cleanup', fail: null });
    expect(decideTarget(mig('failed'), tgt({ leftovers: true }))).toEqual({ kind: 'cleanup', fail: null });
    expect(decideTarget(mig('failed'), tgt({ leftovers: true, ownerIsSelf: true }))).toEqual({ kind: 'none' });
    expect(decideTarget(mig('failed'), tgt({}))).toEqual({ kind: 'none' });
  });

  it('downtime: pause to resume on the source clock, with half the network time as the error bound', () => {
    // Paused at 1000; go-live sent at 1050, answered at 1090, 20 ms of it spent on the target: 20 ms network.
    expect(downtimeMs(1000, 1050, 1090, 20)).toEqual({ downtimeMs: 80, errorBoundMs: 10 });
    expect(downtimeMs(1000, 1000, 1000, 50)).toEqual({ downtimeMs: 0, errorBoundMs: 0 });
    // The target's state watch resumed it 30 ms before the answer left.
    expect(downtimeMs(1000, 1050, 1090, 20, 30)).toEqual({ downtimeMs: 50, errorBoundMs: 10 });
  });

  it('progress goes through Raft at most once per interval and never twice at once', () => {
    expect(progressDue(0, null, false)).toBe(true);
    expect(progressDue(999, 0, false)).toBe(false);
    expect(progressDue(1000, 0, false)).toBe(true);
    expect(progressDue(5000, 0, true)).toBe(false);
  });

  it('progress is cleaned to what the command schema takes', () => {
    expect(clean({ bytesTransferred: 10.6, ratio: 2.5, rateBytesPerSec: Number.NaN, step: 'x'.repeat(300), converging: true })).toEqual({ bytesTransferred: 11, ratio: 2.5, step: 'x'.repeat(256), converging: true });
  });
});

/** An in-memory duplex pair with the ByteChannel shape. */
describe('data stream header', () => {
  it('is read across split chunks and leaves the payload that shares its chunk', async () => {
    const { a: a, b: b } = channelPair();
    const header = encodeDataHeader({ migrationId: 'm1', kind: 'nbd' });
    const payload = new TextEncoder().encode('payload');
    const all = new Uint8Array(header.byteLength + payload.byteLength);
    all.set(header);
    all.set(payload, header.byteLength);
    await a.write(all.subarray(0, 1));
    await a.write(all.subarray(1, 5));
    await a.write(all.subarray(5));
    await a.closeWrite();
    const { header: h, channel } = await readDataHeader(b, AbortSignal.timeout(1000));
    expect(h).toEqual({ migrationId: 'm1', kind: 'nbd' });
    let got = '';
    for await (const c of channel.read()) got += new TextDecoder().decode(c);
    expect(got).toBe('payload');
  });

  it('refuses a malformed header and a stream that ends early', async () => {
    const { a: a, b: b } = channelPair();
    await a.write(new Uint8Array([0, 3, 0x7b, 0x7d, 0x20]));
    await expect(readDataHeader(b, AbortSignal.timeout(1000))).rejects.toThrow(/kind/);
    const { a: c, b: d } = channelPair();
    await c.write(new Uint8Array([0]));
    await c.closeWrite();
    await expect(readDataHeader(d, AbortSignal.timeout(1000))).rejects.toThrow(/ended before/);
  });
});

describe('control requests', () => {
  it('takes prepare, loaded and goLive with a well-formed id; refuses anything else; checks the answers', () => {
    for (const op of ['prepare', 'loaded', 'goLive'] as const) expect(validateMigrateRequest({ op, migrationId: 'm-1' })).toEqual({ op, migrationId: 'm-1' });
    expect(() => validateMigrateRequest({ op: 'commit', migrationId: 'm1' })).toThrow(/unknown op/);
    expect(() => validateMigrateRequest({ op: 'loaded', migrationId: '../x' })).toThrow(/migrationId/);
    expect(() => validateMigrateRequest(null)).toThrow(/not an object/);
    expect(validateLoadedAnswer({ handledMs: 12 })).toEqual({ handledMs: 12 });
    for (const bad of [{ handledMs: -1 }, { handledMs: Number.NaN }, { handledMs: '5' }, {}, null]) expect(() => validateLoadedAnswer(bad)).toThrow(/loaded answer/);
  });
});

// ---- two services over one (instantly replicated) state machine ----

class World {
  readonly sm = new ClusterStateMachine();
  index = 0;
  readonly dirs: string[] = [];
  /** Proposals a test wants refused as if no quorum answered. */
  failProposals = false;
  constructor() {
    this.run({ type: 'cluster.init', clusterId: 'c1', node: node(A), adminToken: { id: 'tok', name: 'admin', secretHash: hashSecret('s') } });
    this.run({ type: 'member.add', node: node(B), role: 'voter' });
    this.run({ type: 'member.add', node: node(C), role: 'voter' });
    this.run({ type: 'vm.create', id: vmId, name: 'demo', spec: { vcpus: 1, memoryMiB: 64, disks: [{ sizeGiB: 1 }], nics: [] }, desired: 'running', owner: A });
  }
  run(partial: Record<string, unknown>): unknown {
    const cmd = { at: Date.now(), actor: { kind: 'system', id: A }, from: null, ...partial } as unknown as ClusterCommand;
    return this.sm.apply(encodeCommand(cmd), ++this.index);
  }
  async propose(cmd: ClusterCommand): Promise<unknown> {
    await new Promise((r) => setImmediate(r));
    if (this.failProposals) throw Object.assign(new Error('no quorum'), { code: 'no_quorum' });
    return this.sm.apply(encodeCommand(cmd), ++this.index);
  }
  create(id = 'm1', target = B): void {
    this.run({ type: 'migration.create', id, vm: vmId, target, options: migrationOptionsDefault });
  }
  advance(phase: MigrationPhase, id = 'm1'): void {
    this.run({ type: 'migration.advance', id, phase, reason: `test: ${phase}` });
  }
  tmp(): string {
    const d = mkdtempSync(join(tmpdir(), 'nc-mig-unit-'));
    this.dirs.push(d);
    return d;
  }
}

function node(id: string) {
  return { id, name: id.toLowerCase(), addresses: [`/ip4/127.0.0.1/tcp/1/p2p/${id}`], site: 's' };
}

class FakeDriver implements MigrationDriver {
  readonly vms = new Map<string, VmState>();
  readonly qmpLog: string[] = [];
  readonly stopped: string[] = [];
  list(): string[] {
    return [...this.vms.keys()];
  }
  async status(id: string) {
    return { vmId: id, state: this.vms.get(id) ?? 'exited', pid: 1 };
  }
  async startIncoming(config: { id: string }) {
    this.vms.set(config.id, 'migrating');
    return { pid: 42 };
  }
  async qmp(id: string): Promise<QmpClient> {
    // Only execute() is used by the service itself; the fake engine talks to the driver directly.
    return { execute: async (c: string) => (this.qmpLog.push(`${id}:${c}`), c === 'query-block-jobs' ? [{ device: 'disk0' }] : {}) } as unknown as QmpClient;
  }
  async stop(id: string) {
    this.stopped.push(id);
    this.vms.delete(id);
  }
  async delete(id: string) {
    this.vms.delete(id);
  }
}

class EngineError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** A fake engine with the real contract's shape: bytes really flow through the service's channels. */
class FakeEngine implements MigrationEngine {
  /** Resolve to let the source pass from transfer to switch-over. */
  gate: Promise<void> = Promise.resolve();
  received = '';
  /** When set, the target's QEMU "fails to load" the stream: loaded() rejects with it. */
  loadFailure: string | null = null;
  sessions: Array<{ aborted: string | null; live: boolean }> = [];
  constructor(
    private readonly srcDriver: FakeDriver,
    private readonly dstDriver: FakeDriver,
  ) {}
  async prepareTarget(): Promise<EngineTargetSession> {
    const rec = { aborted: null as string | null, live: false };
    this.sessions.push(rec);
    const dst = this.dstDriver;
    const receive = (s: string): void => {
      this.received += s;
    };
    const loadFailure = (): string | null => this.loadFailure;
    return {
      exports: ['novacron-m1-disk0'],
      async acceptChannel(_kind: ChannelKind, ch: ByteChannel) {
        for await (const c of ch.read()) receive(new TextDecoder().decode(c));
      },
      async loaded() {
        const failure = loadFailure();
        if (failure !== null) throw new EngineError('qemu_failed', failure);
      },
      async goLive() {
        rec.live = true;
        dst.vms.set(vmId, 'running');
        return Date.now();
      },
      async abort(reason: string) {
        rec.aborted = reason;
      },
    };
  }
  initialProgress: EngineProgress | undefined;
  async estimateBeforeStart(): Promise<EngineProgress | null> {
    return { step: 'estimating the dirty rate', dirtyRateBytesPerSec: 4096, converging: true };
  }
  async runSource(o: SourceRunOptions) {
    this.initialProgress = o.initialProgress;
    const t0 = Date.now();
    const ch = await o.openChannel('ram');
    await ch.write(new TextEncoder().encode('guest-ram'));
    await ch.closeWrite();
    o.onProgress({ bytesTransferred: 9, bytesTotal: 9 });
    const aborted = new Promise<never>((_, reject) => o.signal.addEventListener('abort', () => reject(new EngineError('cancelled', 'cancelled')), { once: true }));
    await Promise.race([this.gate, aborted]);
    this.srcDriver.vms.set(vmId, 'paused');
    if (!(await o.beforeSwitchover())) {
      this.srcDriver.vms.set(vmId, 'running');
      throw new EngineError('switchover_refused', 'switch-over refused');
    }
    const pausedAtMs = Date.now();
    if (!(await o.targetLoaded())) {
      this.srcDriver.vms.set(vmId, 'running');
      throw new EngineError('target_failed', 'the target did not load the state');
    }
    if (!(await o.commit())) {
      this.srcDriver.vms.set(vmId, 'running');
      throw new EngineError('switchover_refused', 'commit refused');
    }
    return { pausedAtMs, durationMs: Date.now() - t0, progress: { bytesTransferred: 9, wireBytes: 9 } };
  }
}

/** Two services whose mesh calls reach each other directly. */
function pair(world: World, opts: { connected?: boolean } = {}) {
  const logger = pino({ level: process.env.MIG_LOG ?? 'silent' });
  const drivers = { [A]: new FakeDriver(), [B]: new FakeDriver() } as Record<string, FakeDriver>;
  drivers[A]!.vms.set(vmId, 'running');
  const engine = new FakeEngine(drivers[A]!, drivers[B]!);
  const services: Record<string, MigrationService> = {};
  const handlers: Record<string, { req?: (r: unknown, peer: string) => Promise<unknown>; validate?: (v: unknown) => unknown; bulk?: (b: ByteChannel, peer: string) => Promise<void> }> = { [A]: {}, [B]: {} };
  const dirs: Record<string, { vms: string; work: string }> = {};
  const make = (self: string): MigrationService => {
    const mesh: MigrationMeshHost = {
      handleRequest: async (_p, handler, o) => {
        handlers[self]!.req = (r, peer) => handler(r as never, { peer });
        handlers[self]!.validate = o.validate;
      },
      request: async (peer, _p, body, o) => {
        const h = handlers[peer]!;
        // Through JSON and both validators, as over the wire.
        const answer = await h.req!(h.validate!(JSON.parse(JSON.stringify(body))), self);
        return o.validate(JSON.parse(JSON.stringify(answer)));
      },
      openBulk: async (peer) => {
        const { a: mine, b: theirs } = channelPair();
        void handlers[peer]!.bulk!(theirs, self).catch(() => undefined);
        return mine;
      },
      handleBulk: async (_p, handler) => {
        handlers[self]!.bulk = (b, peer) => handler(b, { peer });
      },
      unhandle: async () => undefined,
    };
    const root = world.tmp();
    dirs[self] = { vms: join(root, 'vms'), work: join(root, 'work') };
    return new MigrationService({
      nodeId: self,
      state: world.sm,
      propose: (cmd) => world.propose(cmd),
      ready: () => true,
      driver: () => drivers[self]!,
      engine,
      images: {
        ensure: async () => {
          throw new Error('no images in this test');
        },
        createDisk: async (path) => writeFileSync(path, 'disk'),
      },
      mesh,
      link: () => ({ rttMs: 1, throughputBytesPerSec: 1e9 }),
      connected: () => opts.connected ?? true,
      vmsDir: dirs[self].vms,
      workDir: dirs[self].work,
      limiters: [],
      maxConcurrent: 2,
      logger,
      goLiveStateWaitMs: 300,
    });
  };
  services[A] = make(A);
  services[B] = make(B);
  return { services, drivers, engine, dirs, handlers, src: services[A], dst: services[B] };
}

const phaseOf = (w: World, id = 'm1'): MigrationPhase | undefined => w.sm.getMigration(id)?.phase;

describe('MigrationService (fake engine, mesh and driver; real state machine)', () => {
  const worlds: World[] = [];
  const stops: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const s of stops.splice(0)) await s();
    for (const w of worlds.splice(0)) for (const d of w.dirs) rmSync(d, { recursive: true, force: true });
  });
  const setup = async (w = new World(), opts: { connected?: boolean } = {}) => {
    worlds.push(w);
    const p = pair(w, opts);
    await p.dst.start();
    await p.src.start();
    stops.push(() => p.src.stop(), () => p.dst.stop());
    return { w, ...p };
  };

  it('migrates: phases in order, bytes through the channel, owner moves, target live, source copy and overlays gone', async () => {
    const { w, src, drivers, engine, dirs } = await setup();
    mkdirSync(join(dirs[A]!.vms, vmId), { recursive: true });
    writeFileSync(join(dirs[A]!.vms, vmId, 'disk0.qcow2'), 'old');
    const seen: string[] = [];
    let atTransferStart: EngineProgress | null = null;
    w.sm.onChange((e) => {
      if (e.type !== 'migration.advance') return;
      const cur = w.sm.getMigration('m1')!;
      if (cur.phase === 'transferring') atTransferStart ??= { ...cur.progress };
      seen.push(cur.phase);
    });
    // The agent sees the VM as migrating-out from the start.
    w.create();
    expect(src.role(vmId)).toBe('source');
    await waitUntil(() => phaseOf(w) === 'completed', 5000);
    await src.idle();
    expect([...new Set(seen)]).toEqual(['preparing', 'transferring', 'switching', 'completed']);
    expect(engine.received).toBe('guest-ram');
    // The estimate taken while the target prepared is in the record before anything moves, and the run builds on it.
    expect(atTransferStart).toMatchObject({ step: 'transferring', dirtyRateBytesPerSec: 4096, converging: true });
    expect(engine.initialProgress).toMatchObject({ dirtyRateBytesPerSec: 4096 });
    expect(w.sm.getVm(vmId)!.owner).toBe(B);
    await waitUntil(() => engine.sessions[0]?.live === true, 2000);
    expect(drivers[B]!.vms.get(vmId)).toBe('running');
    expect(drivers[A]!.vms.has(vmId)).toBe(false);
    expect(existsSync(join(dirs[A]!.vms, vmId))).toBe(false);
    const m = w.sm.getMigration('m1')!;
    expect(m.progress.durationMs).toBeGreaterThanOrEqual(0);
    expect(m.progress.downtimeMs).toBeGreaterThanOrEqual(0);
    expect(m.progress.bytesTransferred).toBe(9);
    // The target's overlay exists (created for the incoming QEMU) and the target keeps it.
    expect(existsSync(join(dirs[B]!.vms, vmId, 'disk0.qcow2'))).toBe(true);
  });

  it('cancel in transferring aborts the run, leaves the VM running on the source and cleans the target', async () => {
    const { w, src, drivers, engine, dirs } = await setup();
    let open!: () => void;
    engine.gate = new Promise((r) => (open = r));
    w.create();
    await waitUntil(() => phaseOf(w) === 'transferring', 5000);
    expect(drivers[B]!.vms.get(vmId)).toBe('migrating');
    w.advance('cancelled');
    await src.idle();
    open();
    expect(phaseOf(w)).toBe('cancelled');
    expect(w.sm.getVm(vmId)!.owner).toBe(A);
    expect(drivers[A]!.vms.get(vmId)).toBe('running');
    await waitUntil(() => !drivers[B]!.vms.has(vmId) && !existsSync(join(dirs[B]!.vms, vmId)), 2000);
    expect(engine.sessions[0]!.aborted).toContain('cancelled');
    expect(src.role(vmId)).toBeNull();
  });

  it('cancel before the source acts (requested) never touches the target', async () => {
    const w = new World();
    w.create();
    w.advance('cancelled');
    const { drivers, engine } = await setup(w);
    await new Promise((r) => setTimeout(r, 100));
    expect(engine.sessions).toHaveLength(0);
    expect(drivers[A]!.vms.get(vmId)).toBe('running');
    expect(drivers[B]!.vms.size).toBe(0);
  });

  it('a switch-over refused (record failed meanwhile) resumes the source and never starts the target', async () => {
    const { w, src, drivers, engine } = await setup();
    let open!: () => void;
    engine.gate = new Promise((r) => (open = r));
    w.create();
    await waitUntil(() => phaseOf(w) === 'transferring', 5000);
    w.advance('failed');
    open();
    await src.idle();
    expect(phaseOf(w)).toBe('failed');
    expect(drivers[A]!.vms.get(vmId)).toBe('running');
    expect(engine.sessions[0]!.live).toBe(false);
    await waitUntil(() => !drivers[B]!.vms.has(vmId), 2000);
  });

  it('a target that fails to load the stream is never committed: the VM stays owned by and running on the source', async () => {
    const { w, src, drivers, engine } = await setup();
    engine.loadFailure = 'error while loading state section id 2(ram)';
    w.create();
    await waitUntil(() => phaseOf(w) === 'failed', 5000);
    await src.idle();
    expect(w.sm.getMigration('m1')!.reason).toContain('did not load');
    expect(w.sm.getVm(vmId)!.owner).toBe(A);
    expect(drivers[A]!.vms.get(vmId)).toBe('running');
    expect(engine.sessions[0]!.live).toBe(false);
    await waitUntil(() => !drivers[B]!.vms.has(vmId), 2000);
  });

  it('the target refuses data for a migration it did not prepare', async () => {
    const { w, handlers } = await setup();
    w.create('m2', C); // targets another node: B must refuse its data
    const { a: mine, b: theirs } = channelPair();
    await mine.write(encodeDataHeader({ migrationId: 'm2', kind: 'ram' }));
    await handlers[B]!.bulk!(theirs, A);
    await expect(
      (async () => {
        for await (const c of mine.read()) void c;
      })(),
    ).rejects.toThrow(/no migration m2/);
  });

  it('restart rules: an inherited in-flight record fails on the source (and QEMU is cleaned), an inherited target session is discarded', async () => {
    const w = new World();
    w.create();
    w.advance('preparing');
    w.advance('transferring');
    const { drivers } = await setup(w);
    await waitUntil(() => phaseOf(w) === 'failed', 5000);
    expect(w.sm.getMigration('m1')!.reason).toMatch(/restarted during transferring/);
    // The source's QEMU gets its migration and block jobs cancelled once the record is final.
    await waitUntil(() => drivers[A]!.qmpLog.includes(`${vmId}:block-job-cancel`), 2000);
    expect(w.sm.getVm(vmId)!.owner).toBe(A);
  });

  it('restart in switching: the record fails, the VM stays on the source; a target restarted in switching keeps its QEMU until the record is final', async () => {
    const w = new World();
    w.create();
    for (const p of ['preparing', 'transferring', 'switching'] as const) w.advance(p);
    const { drivers } = await setup(w);
    drivers[B]!.vms.set(vmId, 'paused'); // the received QEMU of the old target process
    await waitUntil(() => phaseOf(w) === 'failed', 5000);
    expect(w.sm.getVm(vmId)!.owner).toBe(A);
    // Failed: the target's leftover QEMU goes.
    await waitUntil(() => !drivers[B]!.vms.has(vmId), 2000);
  });

  it('commit without quorum keeps the guest paused (no completed, no failed) until Raft answers', async () => {
    const { w, src, drivers, engine } = await setup();
    let open!: () => void;
    engine.gate = new Promise((r) => (open = r));
    w.create();
    await waitUntil(() => phaseOf(w) === 'transferring', 5000);
    // switching is accepted, then quorum is lost before completed.
    const orig = w.propose.bind(w);
    let switched = false;
    w.propose = async (cmd) => {
      const r = await orig(cmd);
      if ((cmd as { phase?: string }).phase === 'switching') {
        switched = true;
        w.failProposals = true;
      }
      return r;
    };
    open();
    await waitUntil(() => switched, 5000);
    await new Promise((r) => setTimeout(r, 700));
    expect(phaseOf(w)).toBe('switching');
    expect(drivers[A]!.vms.get(vmId)).toBe('paused');
    expect(engine.sessions[0]!.live).toBe(false);
    w.failProposals = false;
    await waitUntil(() => phaseOf(w) === 'completed', 5000);
    await src.idle();
    expect(w.sm.getVm(vmId)!.owner).toBe(B);
    expect(drivers[A]!.vms.has(vmId)).toBe(false);
  });

  it('the source pre-checks refuse a target it cannot reach, before anything starts', async () => {
    const { w, drivers, engine } = await setup(new World(), { connected: false });
    w.create();
    await waitUntil(() => phaseOf(w) === 'failed', 5000);
    expect(w.sm.getMigration('m1')!.reason).toMatch(/not reachable/);
    expect(engine.sessions).toHaveLength(0);
    expect(drivers[A]!.vms.get(vmId)).toBe('running');
  });

  it('the target refuses go-live before the record completed, and prepare from a node that is not the source', async () => {
    const { w, handlers, engine } = await setup();
    let open!: () => void;
    engine.gate = new Promise((r) => (open = r));
    w.create();
    await waitUntil(() => phaseOf(w) === 'transferring', 5000);
    // Going live now would make two running copies: refused while the state says transferring.
    await expect(handlers[B]!.req!({ op: 'goLive', migrationId: 'm1' }, A)).rejects.toThrow(/not completed/);
    expect(engine.sessions[0]!.live).toBe(false);
    await expect(handlers[B]!.req!({ op: 'prepare', migrationId: 'm1' }, C)).rejects.toThrow(/not from NodeC/);
    // Whether the stream was loaded is the source's question alone.
    await expect(handlers[B]!.req!({ op: 'loaded', migrationId: 'm1' }, C)).rejects.toThrow(/not from NodeC/);
    await expect(handlers[B]!.req!({ op: 'loaded', migrationId: 'm1' }, A)).resolves.toHaveProperty('handledMs');
    open();
    await waitUntil(() => phaseOf(w) === 'completed', 5000);
  });
});
