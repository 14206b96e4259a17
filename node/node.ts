// The composition root: one NovaCron node in one process. It owns the data dir lock, the mesh, the cluster
// service (Raft), the image store, the VM agent and the API server, started in order and stopped in reverse
// (migration joins them with its issue).
import type { AddressInfo } from 'node:net';
import { accessSync, constants } from 'node:fs';
import type { NodeConfig } from './config/schema.js';
import { lockDataDir, prepareDataDir, type DataDirLayout, type DataDirLock } from './datadir.js';
import type { Logger } from './log.js';
import { closeApi, createApi, type Api } from './api/server.js';
import { registerSystemRoutes, type Check, type VersionInfo } from './api/routes/system.js';
import { registerMetricsRoutes } from './api/routes/metrics.js';
import { NodeMetrics, renderClusterMetrics } from './metrics.js';
import { probeQemu, qemuVersionMin, type QemuProbe } from './hypervisor/qemu-version.js';
import { apiVersion, novacronVersion } from './version.js';
import type { Mesh } from '../mesh/mesh.js';
import type { ClusterService } from './cluster/service.js';
import { join } from 'node:path';
import type { VmAgent } from './agent/agent.js';
import type { MigrationService } from './migration/service.js';

export interface NodeStartOptions {
  config: NodeConfig;
  logger: Logger;
}

/** A shutdown step taking this long is logged (a shutdown that hits shutdown.timeoutMs then says where it hung). */
const slowShutdownStepMs = 1_000;

export class NovaNode {
  private stopping: Promise<void> | null = null;
  /** stopped with the node (the agent disconnects from QEMU; VMs keep running). */
  private vms: { agent: VmAgent; migrations: MigrationService } | null = null;
  private readonly startedAtMs = Date.now();

  private constructor(
    readonly config: NodeConfig,
    readonly layout: DataDirLayout,
    private readonly lock: DataDirLock,
    private readonly api: Api,
    private readonly qemu: QemuProbe,
    private readonly logger: Logger,
    readonly mesh: Mesh,
    readonly cluster: ClusterService,
  ) {}

  static async start({ config, logger }: NodeStartOptions): Promise<NovaNode> {
    const { layout, tightened } = prepareDataDir(config.dataDir);
    for (const dir of tightened) logger.warn({ dir }, 'data dir folder was accessible to other users; permissions set to 0700');
    const lock = lockDataDir(layout);
    let mesh: Mesh | undefined;
    let cluster: ClusterService | undefined;
    let agentRef: VmAgent | undefined;
    let migrationsRef: MigrationService | undefined;
    try {
      const qemu = await probeQemu(config.hypervisor.qemuBinary);
      if (!qemu.supported) {
        logger.warn(
          { binary: qemu.binary, found: qemu.version?.raw ?? null, error: qemu.error, required: `${qemuVersionMin.major}.${qemuVersionMin.minor}` },
          'QEMU is missing or too old: this node will refuse to start VMs',
        );
      }
      // Loaded here rather than at the top: every CLI command imports this module, and libp2p is slow to load.
      const { Mesh } = await import('../mesh/mesh.js');
      const { registerMeshRoutes } = await import('./api/routes/mesh.js');
      const { ClusterService } = await import('./cluster/service.js');
      const { registerClusterRoutes } = await import('./api/routes/cluster.js');
      mesh = await Mesh.create({
        config: config.mesh,
        identityDir: layout.identity,
        dataDir: layout.root,
        nodeName: config.node.name,
        version: novacronVersion,
        logger: logger.child({ component: 'mesh' }),
        vmCounts: () => agentRef?.counts() ?? { running: 0, total: 0 }, // real VM counts in telemetry
      });
      await mesh.start();
      const metrics = new NodeMetrics();
      metrics.addMesh(mesh);
      // Raft runs if <dataDir>/raft was initialised; otherwise from `cluster init` on. Its metrics register then.
      cluster = await ClusterService.start({
        raftDir: layout.raft,
        config: config.raft,
        nodeName: config.node.name,
        mesh,
        logger,
        onRaftStarted: (raft) => metrics.addRaft(raft),
      });
      const clusterForAuth = cluster;
      const { registerTokenRoutes } = await import('./api/routes/tokens.js');
      const { registerNodeRoutes } = await import('./api/routes/nodes.js');
      const { EventHub, appliedAt, registerEventRoutes, toClusterEvent } = await import('./api/routes/events.js');
      // State changes from here on feed the event stream; earlier ones (a replayed log) are behind its floor.
      const events = new EventHub({ startIndex: cluster.raft?.status().applied ?? 0 });
      const state = cluster.state;
      state.onChange((change) => events.publish(toClusterEvent(change, appliedAt(state, change), state)));
      const api = await createApi({
        logger,
        bodyLimitBytes: config.api.bodyLimitBytes,
        onRequestDone: (method, route, status, durationS) => metrics.observeRequest(method, route, status, durationS),
        auth: { enforced: () => clusterForAuth.authEnforced, lookup: (secret) => clusterForAuth.verifyToken(secret), loading: () => clusterForAuth.loading },
        readPoint: (stale) => clusterForAuth.readPoint(stale),
      });
      const node = new NovaNode(config, layout, lock, api, qemu, logger, mesh, cluster);
      registerSystemRoutes(api, { checks: () => node.checks(), version: () => node.versionInfo() });
      const clusterForJoin = cluster;
      registerMeshRoutes(api, {
        mesh,
        join: (token, joiner) => clusterForJoin.join(token, joiner),
        joinTokens: {
          create: (ttlMs, origin) => clusterForJoin.createJoinToken(ttlMs, origin),
          list: () => clusterForJoin.listJoinTokens(),
          revoke: (id, origin) => clusterForJoin.revokeJoinToken(id, origin),
        },
      });
      registerClusterRoutes(api, { cluster });
      registerNodeRoutes(api, { cluster });
      registerTokenRoutes(api, { cluster });
      // Content-addressed image store in <dataDir>/images, served to members over /novacron/image/1.0.0 (one per node;
      // the VM agent below creates its disks and fetches boot files through it).
      const { ImageStore } = await import('./hypervisor/images.js');
      const { registerImageRoutes } = await import('./api/routes/images.js');
      const clusterForImages = cluster;
      const images = await ImageStore.open({ dir: layout.images, cluster: { nodeId: mesh.peerId, state: cluster.state, propose: (cmd) => clusterForImages.propose(cmd) }, peers: mesh.protocols, logger });
      registerImageRoutes(api, { images, cluster });
      // the VM agent (reconciles the VMs this node owns over the image store above), /novacron/vm/1.0.0, VM routes.
      const { VmAgent } = await import('./agent/agent.js');
      const { VmOwnerClient, registerVmProtocol } = await import('./agent/vm-protocol.js');
      const { registerVmRoutes } = await import('./api/routes/vms.js');
      const { importDemoGuest } = await import('./hypervisor/demo-images.js');
      const { QemuDriver } = await import('./hypervisor/qemu.js');
      const { chooseAccel } = await import('./hypervisor/accel.js');
      const clusterForVms = cluster;
      const meshForVms = mesh;
      const vmRunDir = join(layout.run, 'vms');
      // Live migration (node/migration/service.ts over the engine in migration/): it drives the agent's QEMU driver.
      const { MigrationService } = await import('./migration/service.js');
      const { qemuMigrationEngine } = await import('../migration/index.js');
      const { RateLimiter } = await import('../bandwidth/index.js');
      const { registerMigrationRoutes } = await import('./api/routes/migrations.js');
      let qemuDriver: InstanceType<typeof QemuDriver> | null = null;
      const vmsReady = (): boolean => {
        const raft = clusterForVms.raft;
        if (!clusterForVms.initialised || clusterForVms.loading || raft === null) return false;
        const s = raft.status();
        return s.leader !== null && s.applied >= s.commit;
      };
      const nodeCapBytesPerSec = config.migration.maxBandwidthBytesPerSec;
      const migrations = new MigrationService({
        nodeId: mesh.peerId,
        state: cluster.state,
        propose: (cmd) => clusterForVms.propose(cmd),
        ready: vmsReady,
        driver: () => qemuDriver,
        engine: qemuMigrationEngine,
        images,
        mesh: meshForVms.protocols,
        link: (peer) => {
          const l = meshForVms.linkTo(peer);
          return { rttMs: l?.rttMs ?? null, throughputBytesPerSec: l?.throughputBytesPerSec ?? null };
        },
        connected: (peer) => meshForVms.isConnected(peer),
        vmsDir: layout.vms,
        // Short: unix socket paths (108 bytes) live under here.
        workDir: join(layout.run, 'mig'),
        limiters: nodeCapBytesPerSec > 0 ? [new RateLimiter({ bytesPerSec: nodeCapBytesPerSec, nowMs: () => performance.now() })] : [],
        maxConcurrent: config.migration.maxConcurrent,
        logger,
        onIdle: () => agentRef?.schedule(),
      });
      const agent = new VmAgent({
        nodeId: mesh.peerId,
        state: cluster.state,
        propose: (cmd) => clusterForVms.propose(cmd),
        ready: vmsReady,
        createDriver: async () => {
          const choice = await chooseAccel(config.hypervisor.qemuBinary, config.hypervisor.accel, logger);
          qemuDriver = new QemuDriver({ runDir: vmRunDir, qemuBinary: config.hypervisor.qemuBinary, accel: choice.accel, logger });
          return qemuDriver;
        },
        migrations,
        images,
        vmsDir: layout.vms,
        runDir: vmRunDir,
        logger,
        unusableReason: qemu.supported ? null : (qemu.error ?? `QEMU older than ${qemuVersionMin.major}.${qemuVersionMin.minor}`),
      });
      await agent.start();
      agentRef = agent;
      await registerVmProtocol(mesh.protocols, agent);
      await migrations.start();
      migrationsRef = migrations;
      node.vms = { agent, migrations };
      registerVmRoutes(api, {
        cluster,
        telemetry: () => meshForVms.viewList(),
        owner: new VmOwnerClient(mesh.peerId, agent, mesh.protocols),
        importDemoGuest: () => importDemoGuest(images),
      });
      registerMigrationRoutes(api, { cluster, telemetry: () => meshForVms.viewList() });
      registerEventRoutes(api, { hub: events, authEnforced: () => clusterForAuth.authEnforced });
      const meshForView = mesh;
      registerMetricsRoutes(api, {
        local: () => metrics.render(),
        cluster: () => renderClusterMetrics(meshForView.viewList()),
        contentType: metrics.contentType,
      });
      await api.listen({ host: config.api.host, port: config.api.port });
      logger.info(
        { api: node.apiUrl, dataDir: layout.root, version: novacronVersion, peerId: mesh.peerId, meshAddrs: mesh.addresses() },
        'node started',
      );
      return node;
    } catch (err) {
      await migrationsRef?.stop().catch(() => undefined);
      await agentRef?.stop().catch(() => undefined);
      await cluster?.stop().catch(() => undefined);
      await mesh?.stop().catch(() => undefined);
      lock.release();
      throw err;
    }
  }

  /** The URL the API answers on, with the port the OS picked when the config asked for 0. */
  get apiUrl(): string {
    const addr = this.api.server.address() as AddressInfo | null;
    const port = addr?.port ?? this.config.api.port;
    const host = this.config.api.host === '0.0.0.0' || this.config.api.host === '::' ? '127.0.0.1' : this.config.api.host;
    return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }

  checks(): Check[] {
    return [
      { name: 'api', ok: this.api.server.listening, required: true, detail: this.api.server.listening ? 'listening' : 'not listening' },
      dataDirCheck(this.layout),
      {
        name: 'qemu',
        ok: this.qemu.supported,
        // Not required: a node without a usable QEMU still serves the API and the cluster state.
        required: false,
        detail: this.qemu.supported ? (this.qemu.version?.raw ?? '') : (this.qemu.error ?? `QEMU older than ${qemuVersionMin.major}.${qemuVersionMin.minor}`),
      },
      meshCheck(this.mesh),
    ];
  }

  versionInfo(): VersionInfo {
    const v = this.qemu.version;
    return {
      version: novacronVersion,
      apiVersion,
      node: { name: this.config.node.name, id: this.mesh.peerId },
      runtime: { node: process.version, platform: process.platform, arch: process.arch },
      qemu: {
        binary: this.qemu.binary,
        version: v === null ? null : `${v.major}.${v.minor}.${v.micro}`,
        supported: this.qemu.supported,
        detail: v?.raw ?? this.qemu.error ?? '',
      },
      uptimeSeconds: Math.round((Date.now() - this.startedAtMs) / 1000),
    };
  }

  /** Stops components in reverse order of start. Safe to call more than once. */
  stop(reason: string): Promise<void> {
    this.stopping ??= (async () => {
      this.logger.info({ reason }, 'node stopping');
      // Each step is logged with its duration, so a shutdown that hits shutdown.timeoutMs says where it hung.
      const step = async (name: string, work: () => Promise<void>): Promise<void> => {
        const t0 = Date.now();
        await work();
        const ms = Date.now() - t0;
        if (ms >= slowShutdownStepMs) this.logger.warn({ step: name, ms }, 'slow shutdown step');
      };
      try {
        await step('api', () => closeApi(this.api));
        // the agent lets go of its QEMUs (they keep running) before Raft and the mesh stop.
        await step('migrations', async () => this.vms?.migrations.stop().catch((err: unknown) => this.logger.error({ err }, 'migration service did not stop cleanly')));
        await step('vm agent', async () => this.vms?.agent.stop().catch((err: unknown) => this.logger.error({ err }, 'VM agent did not stop cleanly')));
        // Raft before the mesh: its transport streams ride on the mesh.
        await step('raft', () => this.cluster.stop().catch((err: unknown) => this.logger.error({ err }, 'raft did not close cleanly')));
        await step('mesh', () => this.mesh.stop());
      } finally {
        this.lock.release();
      }
      this.logger.info('node stopped');
    })();
    return this.stopping;
  }
}

function meshCheck(mesh: Mesh): Check {
  const running = mesh.isRunning;
  const addrs = running ? mesh.addresses() : [];
  const ok = running && addrs.length > 0;
  return { name: 'mesh', ok, required: true, detail: !running ? 'mesh not running' : ok ? `${addrs.length} addresses, ${mesh.libp2p.getConnections().length} connections` : 'no listen address' };
}

function dataDirCheck(layout: DataDirLayout): Check {
  try {
    accessSync(layout.root, constants.W_OK);
    return { name: 'dataDir', ok: true, required: true, detail: layout.root };
  } catch (err) {
    return { name: 'dataDir', ok: false, required: true, detail: `${layout.root}: ${(err as Error).message}` };
  }
}
