// Who belongs to the cluster. The gate asks a settable MemberProvider; until the [cluster] issue drives it
// from Raft, the default provider is LocalMembership: peers from config `mesh.members` plus peers admitted
// through a join token or learnt from another member, persisted in <dataDir>/identity/cluster.json.
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { MeshStateError } from './errors.js';
import type { MemberProvider } from './protocol.js';
import { readJsonState, writeJsonState } from './state-file.js';

export const clusterStateFileName = 'cluster.json';
/** Members kept in the local set; admissions beyond this are refused. */
export const membersMax = 1024;
/** Bootstrap addresses remembered from join tokens. */
export const bootstrapAddrsMax = 32;

export type MemberSource = 'self' | 'config' | 'token' | 'learnt';

export interface MemberEntry {
  peer: string;
  source: MemberSource;
  sinceMs: number;
}

interface ClusterStateFile {
  v: 1;
  clusterId: string | null;
  members: Array<{ peer: string; source: 'token' | 'learnt'; sinceMs: number }>;
  bootstrap: string[];
}

/** The gate's view: this node is always a member of its own cluster; the rest comes from the provider. */
export class MembershipGate implements MemberProvider {
  constructor(
    readonly self: string,
    private provider: MemberProvider,
  ) {}

  setProvider(provider: MemberProvider): void {
    this.provider = provider;
  }

  isMember(peer: string): boolean {
    return peer === this.self || this.provider.isMember(peer);
  }
}

export class LocalMembership implements MemberProvider {
  private readonly file: string;
  private readonly configured: Set<string>;
  private readonly admitted = new Map<string, { source: 'token' | 'learnt'; sinceMs: number }>();
  private clusterIdValue: string | null = null;
  private bootstrapAddrs: string[] = [];
  private readonly listeners = new Set<(added: string[]) => void>();

  constructor(
    identityDir: string,
    readonly self: string,
    configured: readonly string[],
  ) {
    this.file = join(identityDir, clusterStateFileName);
    this.configured = new Set(configured);
    this.load();
  }

  get clusterId(): string | null {
    return this.clusterIdValue;
  }

  get bootstrap(): readonly string[] {
    return this.bootstrapAddrs;
  }

  isMember(peer: string): boolean {
    return peer === this.self || this.configured.has(peer) || this.admitted.has(peer);
  }

  list(): MemberEntry[] {
    const out: MemberEntry[] = [{ peer: this.self, source: 'self', sinceMs: 0 }];
    for (const p of this.configured) if (p !== this.self) out.push({ peer: p, source: 'config', sinceMs: 0 });
    for (const [peer, a] of this.admitted) if (!this.configured.has(peer) && peer !== this.self) out.push({ peer, ...a });
    return out;
  }

  peers(): string[] {
    return this.list().map((m) => m.peer);
  }

  /** Creates the cluster ID on first use: the node that first issues a token founds the cluster. */
  ensureClusterId(): string {
    if (this.clusterIdValue === null) {
      this.clusterIdValue = randomUUID();
      this.save();
    }
    return this.clusterIdValue;
  }

  /** Adopts the cluster of a join token and remembers its bootstrap addresses for restarts. */
  joinCluster(clusterId: string, bootstrap: readonly string[]): void {
    if (this.clusterIdValue !== null && this.clusterIdValue !== clusterId) {
      throw new MeshStateError(`this node already belongs to cluster ${this.clusterIdValue}`);
    }
    this.clusterIdValue = clusterId;
    this.bootstrapAddrs = [...new Set([...bootstrap, ...this.bootstrapAddrs])].slice(0, bootstrapAddrsMax);
    this.save();
  }

  /** Adds peers; returns those that were new. Persists once for the batch. */
  admit(peers: readonly string[], source: 'token' | 'learnt', nowMs: number): string[] {
    const added: string[] = [];
    for (const peer of peers) {
      if (this.isMember(peer)) continue;
      if (this.admitted.size >= membersMax) throw new MeshStateError(`member set is full (${membersMax} peers)`);
      this.admitted.set(peer, { source, sinceMs: nowMs });
      added.push(peer);
    }
    if (added.length > 0) {
      this.save();
      for (const l of this.listeners) l(added);
    }
    return added;
  }

  onAdmitted(listener: (added: string[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private load(): void {
    const raw = readJsonState(this.file);
    if (raw === undefined) return;
    const s = raw as Partial<ClusterStateFile>;
    if (s.v !== 1 || !Array.isArray(s.members) || !Array.isArray(s.bootstrap)) throw new MeshStateError(`${this.file} has an unknown format`);
    this.clusterIdValue = typeof s.clusterId === 'string' ? s.clusterId : null;
    this.bootstrapAddrs = s.bootstrap.filter((a): a is string => typeof a === 'string').slice(0, bootstrapAddrsMax);
    for (const m of s.members.slice(0, membersMax)) {
      if (typeof m.peer === 'string') this.admitted.set(m.peer, { source: m.source === 'token' ? 'token' : 'learnt', sinceMs: Number(m.sinceMs) || 0 });
    }
  }

  private save(): void {
    const state: ClusterStateFile = {
      v: 1,
      clusterId: this.clusterIdValue,
      members: [...this.admitted].map(([peer, a]) => ({ peer, ...a })),
      bootstrap: this.bootstrapAddrs,
    };
    writeJsonState(this.file, state);
  }
}
