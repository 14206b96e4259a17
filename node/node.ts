// The composition root: one NovaCron node in one process. It owns the data dir lock, the mesh and the
// API server and the cluster service (Raft); later issues add the agent and migration here, started and
// stopped in order.
import type { AddressInfo } from 'node:net';
import { accessSync, constants } from 'node:fs';
import type { NodeConfig } from './config/schema.js';
import { lockDataDir, prepareDataDir, type DataDirLayout, type DataDirLock } from './datadir.js';
import type { Logger } from './log.js';
import { createApi, type Api } from './api/server.js';
import { registerSystemRoutes, type Check, type VersionInfo } from './api/routes/system.js';
import { registerMetricsRoutes } from './api/routes/metrics.js';
import { NodeMetrics, renderClusterMetrics } from './metrics.js';
import { probeQemu, qemuVersionMin, type QemuProbe } from './hypervisor/qemu-version.js';
import { apiVersion, novacronVersion } from './version.js';
import type { Mesh } from '../mesh/mesh.js';
import type { ClusterService } from './cluster/service.js';

export interface NodeStartOptions {
  config: NodeConfig;
  logger: Logger;
}

export class NovaNode {
  private stopping: Promise<void> | null = null;
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
      state.onChange((change) => events.publish(toClusterEvent(change, appliedAt(state, change))));
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
      try {
        await this.api.close();
        // Raft before the mesh: its transport streams ride on the mesh.
        await this.cluster.stop().catch((err: unknown) => this.logger.error({ err }, 'raft did not close cleanly'));
        await this.mesh.stop();
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
