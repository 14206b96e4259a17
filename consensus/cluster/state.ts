// The cluster state machine Raft replicates: members, VMs, images, migrations, API and join tokens, audit
// and settings. apply() is pure and deterministic: it uses only the command (its `at` is the time) and the
// current state, never a clock, a random source or I/O, so every replica reaches byte-identical snapshots.
//
// Refusals: a business-rule violation throws a ClusterError (stable `code`) BEFORE anything is changed, so the
// state is untouched on every replica; the Raft driver catches it and rejects only that entry's proposer.
// Each handler therefore checks everything first and mutates only after its last check.
import type { StateMachine } from '../driver.js';
import { decodeCommand, type Actor, type ClusterCommand, type CommandOf, type CommandType, type MemberInput, type MigrationPhase, type VmSpec } from './commands.js';
import { ClusterError } from './errors.js';
import {
  settingsDefault,
  type ApiToken,
  type ApiTokenRecord,
  type AuditRecord,
  type Image,
  type JoinToken,
  type JoinTokenRecord,
  type Member,
  type Migration,
  type Settings,
  type Vm,
} from './records.js';
import { decodeSnapshot, encodeSnapshot, type StateData } from './snapshot.js';

/** Audit records kept; the oldest is dropped beyond this (readers see the gap through `seq`). */
export const auditRecordsMax = 10_000;
/** Largest audit page one read returns. */
export const auditPageMax = 1_000;
export const membersMax = 1_024;
export const vmsMax = 100_000;
export const imagesMax = 10_000;
/** API tokens including revoked ones; revoked ones are pruned first when full. */
export const apiTokensMax = 1_000;
/** Join tokens including used, revoked and expired ones, which are pruned first when full. */
export const joinTokensMax = 1_000;
/** Migrations including finished ones, which are pruned (oldest first) when full. */
export const migrationsMax = 10_000;

/** Legal phase changes. `transferring → transferring` carries progress updates; terminal phases go nowhere. */
export const migrationTransitions: Readonly<Record<MigrationPhase, readonly MigrationPhase[]>> = {
  requested: ['preparing', 'failed', 'cancelled'],
  preparing: ['transferring', 'failed', 'cancelled'],
  transferring: ['transferring', 'switching', 'failed', 'cancelled'],
  // Once QEMU switches over, cancelling could leave two copies or none: only completion or failure remain.
  switching: ['completed', 'failed'],
  completed: [],
  failed: [],
  cancelled: [],
};

const terminalPhases: ReadonlySet<MigrationPhase> = new Set(['completed', 'failed', 'cancelled']);

export function isMigrationActive(m: Migration): boolean {
  return !terminalPhases.has(m.phase);
}

/** What apply returns to the proposer and what onChange listeners receive. */
export interface ChangeEvent {
  readonly index: number;
  /** The command type, `snapshot.restore` when the whole state was replaced, or `audit.refused` (ids: the audit seq). */
  readonly type: CommandType | 'snapshot.restore' | 'audit.refused';
  /** Ids of the records changed (first the command's target). */
  readonly ids: readonly string[];
}

export interface ApplyResult extends ChangeEvent {
  /** The record as it is after the change (null when it was deleted). */
  readonly value: unknown;
  readonly auditSeq: number;
}

export type ChangeListener = (event: ChangeEvent) => void;

interface Outcome {
  target: string;
  ids: string[];
  value: unknown;
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

function fail(code: ConstructorParameters<typeof ClusterError>[0], message: string, details?: Record<string, unknown>): never {
  throw new ClusterError(code, message, details);
}

/** A VM spec's kernel/initrd that is a hex SHA-256 refers to an image of the cluster. */
export function isImageRef(ref: string): boolean {
  return /^[0-9a-f]{64}$/.test(ref);
}

function byId<T extends { id: string }>(a: T, b: T): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

function emptyState(): StateData {
  return {
    clusterId: null,
    settings: settingsDefault,
    members: [],
    vms: [],
    images: [],
    migrations: [],
    apiTokens: [],
    joinTokens: [],
    audit: [],
    auditNextSeq: 1,
  };
}

export interface ClusterStateOptions {
  /** Called when an onChange listener throws; a listener must not break apply (the change is already made). */
  onListenerError?: (err: unknown, event: ChangeEvent) => void;
}

export class ClusterStateMachine implements StateMachine {
  private clusterId: string | null = null;
  private settings: Settings = settingsDefault;
  private readonly members = new Map<string, Member>();
  private readonly vms = new Map<string, Vm>();
  private readonly vmNames = new Map<string, string>();
  private readonly images = new Map<string, Image>();
  private readonly migrations = new Map<string, Migration>();
  /** VM id → its one active migration. */
  private readonly activeMigrationByVm = new Map<string, string>();
  private readonly apiTokens = new Map<string, ApiTokenRecord>();
  private readonly apiTokenByHash = new Map<string, string>();
  private readonly joinTokens = new Map<string, JoinTokenRecord>();
  /** Ring of audit records: `audit[(auditStart + i) % auditRecordsMax]` for i < auditCount. */
  private audit: AuditRecord[] = [];
  private auditStart = 0;
  private auditNextSeq = 1;
  private readonly listeners = new Set<ChangeListener>();
  private readonly onListenerError: ((err: unknown, event: ChangeEvent) => void) | undefined;

  constructor(options: ClusterStateOptions = {}) {
    this.onListenerError = options.onListenerError;
    this.load(emptyState());
  }

  // ---- StateMachine ----

  apply(command: Uint8Array, index: number): ApplyResult {
    const cmd = decodeCommand(command);
    let out: Outcome;
    try {
      out = this.execute(cmd);
    } catch (err) {
      // Refusals are deterministic (same log, same refusal on every node), so recording them keeps replicas
      // identical and lets an operator see who tried what. Before cluster.init there is no audit log yet.
      if (err instanceof ClusterError && this.clusterId !== null) {
        const seq = this.appendAudit(cmd, refusedTarget(cmd), err.code);
        this.emit({ index, type: 'audit.refused', ids: [String(seq)] });
      }
      throw err;
    }
    const seq = this.appendAudit(cmd, out.target);
    const event: ChangeEvent = { index, type: cmd.type, ids: out.ids };
    this.emit(event);
    return { ...event, value: out.value, auditSeq: seq };
  }

  snapshot(): Uint8Array {
    return encodeSnapshot(this.toData());
  }

  restore(data: Uint8Array, index: number): void {
    // Decode fully before touching the state: a bad snapshot leaves the current one in place.
    const state = decodeSnapshot(data);
    this.load(state);
    this.emit({ index, type: 'snapshot.restore', ids: [] });
  }

  onChange(listener: ChangeListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ---- read API (plain readonly data) ----

  getClusterId(): string | null {
    return this.clusterId;
  }

  getSettings(): Readonly<Settings> {
    return this.settings;
  }

  listMembers(): readonly Member[] {
    return [...this.members.values()].sort(byId);
  }

  getMember(id: string): Member | null {
    return this.members.get(id) ?? null;
  }

  listVms(): readonly Vm[] {
    return [...this.vms.values()].sort(byId);
  }

  getVm(id: string): Vm | null {
    return this.vms.get(id) ?? null;
  }

  getVmByName(name: string): Vm | null {
    const id = this.vmNames.get(name);
    return id === undefined ? null : (this.vms.get(id) ?? null);
  }

  listImages(): readonly Image[] {
    return [...this.images.values()].sort(byId);
  }

  getImage(id: string): Image | null {
    return this.images.get(id) ?? null;
  }

  listMigrations(): readonly Migration[] {
    return [...this.migrations.values()].sort(byId);
  }

  getMigration(id: string): Migration | null {
    return this.migrations.get(id) ?? null;
  }

  listApiTokens(): readonly ApiToken[] {
    return [...this.apiTokens.values()].sort(byId).map(withoutHash);
  }

  getApiToken(id: string): ApiToken | null {
    const t = this.apiTokens.get(id);
    return t === undefined ? null : withoutHash(t);
  }

  listJoinTokens(): readonly JoinToken[] {
    return [...this.joinTokens.values()].sort(byId).map(withoutHash);
  }

  /**
   * The live (not revoked) API token whose secret hashes to `secretHash`, or null. A map lookup by hash: the
   * timing can at most reveal bits of a SHA-256 of a 256-bit secret, which does not help guess the secret.
   */
  verifyApiToken(secretHash: string): ApiToken | null {
    const id = this.apiTokenByHash.get(secretHash);
    const t = id === undefined ? undefined : this.apiTokens.get(id);
    if (t === undefined || t.revokedAt !== null) return null;
    return withoutHash(t);
  }

  /** Audit records with seq > afterSeq, oldest first, at most `limit` (≤ auditPageMax). */
  auditPage(afterSeq = 0, limit = auditPageMax): { records: readonly AuditRecord[]; firstSeq: number; nextSeq: number } {
    const n = Math.max(0, Math.min(Math.floor(limit), auditPageMax));
    const count = this.audit.length;
    const firstSeq = this.auditNextSeq - count;
    const records: AuditRecord[] = [];
    const from = Math.max(0, afterSeq + 1 - firstSeq);
    for (let i = from; i < count && records.length < n; i++) {
      const r = this.audit[(this.auditStart + i) % auditRecordsMax];
      if (r !== undefined) records.push(r);
    }
    return { records, firstSeq, nextSeq: this.auditNextSeq };
  }

  // ---- internals ----

  private emit(event: ChangeEvent): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch (err) {
        this.onListenerError?.(err, event);
      }
    }
  }

  private appendAudit(cmd: ClusterCommand, target: string, refusedWith?: string): number {
    const seq = this.auditNextSeq++;
    const actor: Actor = cmd.actor.name === undefined ? { kind: cmd.actor.kind, id: cmd.actor.id } : { kind: cmd.actor.kind, id: cmd.actor.id, name: cmd.actor.name };
    const base = { seq, at: cmd.at, actor, action: cmd.type, target, from: cmd.from };
    const rec: AuditRecord = deepFreeze(refusedWith === undefined ? { ...base, outcome: 'ok' } : { ...base, outcome: 'refused', error: refusedWith });
    if (this.audit.length < auditRecordsMax) this.audit.push(rec);
    else {
      this.audit[this.auditStart] = rec;
      this.auditStart = (this.auditStart + 1) % auditRecordsMax;
    }
    return seq;
  }

  private auditInOrder(): AuditRecord[] {
    return [...this.audit.slice(this.auditStart), ...this.audit.slice(0, this.auditStart)];
  }

  private toData(): StateData {
    // Sorted by id so the bytes do not depend on insertion history, only on content.
    return {
      clusterId: this.clusterId,
      settings: this.settings,
      members: this.listMembers(),
      vms: this.listVms(),
      images: this.listImages(),
      migrations: this.listMigrations(),
      apiTokens: [...this.apiTokens.values()].sort(byId),
      joinTokens: [...this.joinTokens.values()].sort(byId),
      audit: this.auditInOrder(),
      auditNextSeq: this.auditNextSeq,
    };
  }

  private load(s: StateData): void {
    deepFreeze(s);
    this.clusterId = s.clusterId;
    this.settings = s.settings;
    this.members.clear();
    this.vms.clear();
    this.vmNames.clear();
    this.images.clear();
    this.migrations.clear();
    this.activeMigrationByVm.clear();
    this.apiTokens.clear();
    this.apiTokenByHash.clear();
    this.joinTokens.clear();
    for (const m of s.members) this.members.set(m.id, m);
    for (const v of s.vms) {
      this.vms.set(v.id, v);
      this.vmNames.set(v.name, v.id);
    }
    for (const i of s.images) this.images.set(i.id, i);
    for (const m of s.migrations) {
      this.migrations.set(m.id, m);
      if (isMigrationActive(m)) this.activeMigrationByVm.set(m.vm, m.id);
    }
    for (const t of s.apiTokens) {
      this.apiTokens.set(t.id, t);
      this.apiTokenByHash.set(t.secretHash, t.id);
    }
    for (const t of s.joinTokens) this.joinTokens.set(t.id, t);
    const audit = s.audit.slice(-auditRecordsMax);
    this.audit = [...audit];
    this.auditStart = 0;
    this.auditNextSeq = s.auditNextSeq;
  }

  private execute(cmd: ClusterCommand): Outcome {
    if (cmd.type === 'cluster.init') return this.clusterInit(cmd);
    if (this.clusterId === null) fail('cluster_not_initialized', `${cmd.type} before cluster.init`);
    switch (cmd.type) {
      case 'member.add':
        return this.memberAdd(cmd);
      case 'member.setRole':
        return this.memberSetRole(cmd);
      case 'member.remove':
        return this.memberRemove(cmd);
      case 'member.update':
        return this.memberUpdate(cmd);
      case 'vm.create':
        return this.vmCreate(cmd);
      case 'vm.update':
        return this.vmUpdate(cmd);
      case 'vm.setDesired':
        return this.vmSetDesired(cmd);
      case 'vm.setObserved':
        return this.vmSetObserved(cmd);
      case 'vm.setOwner':
        return this.vmSetOwner(cmd);
      case 'vm.delete':
        return this.vmDelete(cmd);
      case 'image.add':
        return this.imageAdd(cmd);
      case 'image.remove':
        return this.imageRemove(cmd);
      case 'migration.create':
        return this.migrationCreate(cmd);
      case 'migration.advance':
        return this.migrationAdvance(cmd);
      case 'token.create':
        return this.tokenCreate(cmd);
      case 'token.revoke':
        return this.tokenRevoke(cmd);
      case 'joinToken.create':
        return this.joinTokenCreate(cmd);
      case 'joinToken.use':
        return this.joinTokenUse(cmd);
      case 'joinToken.revoke':
        return this.joinTokenRevoke(cmd);
      case 'settings.update':
        return this.settingsUpdate(cmd);
    }
  }

  // ---- cluster, settings ----

  private clusterInit(c: CommandOf<'cluster.init'>): Outcome {
    if (this.clusterId !== null) fail('cluster_already_initialized', `cluster ${this.clusterId} already exists`);
    const member = this.newMember(c.node, 'voter', c.at);
    const token: ApiTokenRecord = deepFreeze({ id: c.adminToken.id, name: c.adminToken.name, role: 'admin', secretHash: c.adminToken.secretHash, createdAt: c.at, revokedAt: null });
    this.clusterId = c.clusterId;
    this.settings = deepFreeze({ ...settingsDefault, ...c.settings });
    this.members.set(member.id, member);
    this.apiTokens.set(token.id, token);
    this.apiTokenByHash.set(token.secretHash, token.id);
    return { target: c.clusterId, ids: [c.clusterId, member.id, token.id], value: { clusterId: c.clusterId, member, token: withoutHash(token) } };
  }

  private settingsUpdate(c: CommandOf<'settings.update'>): Outcome {
    this.settings = deepFreeze({ ...this.settings, ...c.settings });
    const id = this.clusterId ?? '';
    return { target: id, ids: [id], value: this.settings };
  }

  // ---- members ----

  private newMember(n: MemberInput, role: Member['role'], at: number): Member {
    return deepFreeze({ id: n.id, name: n.name, role, addresses: [...n.addresses], site: n.site, joinedAt: at, status: 'active' });
  }

  private checkNewMember(n: MemberInput): void {
    if (this.members.has(n.id)) fail('already_exists', `node ${n.id} is already a member`);
    for (const m of this.members.values()) if (m.name === n.name) fail('already_exists', `a member is already named ${n.name}`);
    if (this.members.size >= membersMax) fail('limit_exceeded', `the cluster has ${membersMax} members already`);
  }

  private member(id: string): Member {
    return this.members.get(id) ?? fail('not_found', `no member ${id}`);
  }

  private voterCount(): number {
    let n = 0;
    for (const m of this.members.values()) if (m.role === 'voter') n++;
    return n;
  }

  private memberAdd(c: CommandOf<'member.add'>): Outcome {
    this.checkNewMember(c.node);
    const m = this.newMember(c.node, c.role, c.at);
    this.members.set(m.id, m);
    return { target: m.id, ids: [m.id], value: m };
  }

  private memberSetRole(c: CommandOf<'member.setRole'>): Outcome {
    const m = this.member(c.id);
    if (m.role === 'voter' && c.role === 'learner' && this.voterCount() <= 1) fail('conflict', `${c.id} is the last voter`);
    const next = deepFreeze({ ...m, role: c.role });
    this.members.set(m.id, next);
    return { target: m.id, ids: [m.id], value: next };
  }

  private memberUpdate(c: CommandOf<'member.update'>): Outcome {
    const m = this.member(c.id);
    if (c.name !== undefined && c.name !== m.name) {
      for (const o of this.members.values()) if (o.name === c.name) fail('already_exists', `a member is already named ${c.name}`);
    }
    const next: Member = deepFreeze({
      ...m,
      name: c.name ?? m.name,
      addresses: c.addresses === undefined ? m.addresses : [...c.addresses],
      site: c.site ?? m.site,
      status: c.status ?? m.status,
    });
    this.members.set(m.id, next);
    return { target: m.id, ids: [m.id], value: next };
  }

  private memberRemove(c: CommandOf<'member.remove'>): Outcome {
    const m = this.member(c.id);
    if (m.role === 'voter' && this.voterCount() <= 1) fail('conflict', `${c.id} is the last voter`);
    for (const v of this.vms.values()) if (v.owner === c.id) fail('conflict', `${c.id} still owns VM ${v.name}; move or delete it first`, { vm: v.id });
    for (const mid of this.activeMigrationByVm.values()) {
      const mig = this.migrations.get(mid);
      if (mig !== undefined && (mig.source === c.id || mig.target === c.id)) fail('conflict', `${c.id} takes part in migration ${mid}`, { migration: mid });
    }
    this.members.delete(c.id);
    const ids = [c.id];
    for (const img of this.images.values()) {
      if (img.nodes.includes(c.id)) {
        this.images.set(img.id, deepFreeze({ ...img, nodes: img.nodes.filter((n) => n !== c.id) }));
        ids.push(img.id);
      }
    }
    return { target: c.id, ids, value: null };
  }

  // ---- VMs ----

  private vm(id: string): Vm {
    return this.vms.get(id) ?? fail('not_found', `no VM ${id}`);
  }

  private checkVersion(vm: Vm, expected: number | undefined): void {
    if (expected !== undefined && expected !== vm.version) fail('version_conflict', `VM ${vm.id} is at version ${vm.version}, not ${expected}`, { version: vm.version });
  }

  private checkSpec(spec: VmSpec): void {
    for (const d of spec.disks) if (d.imageId !== undefined && !this.images.has(d.imageId)) fail('not_found', `no image ${d.imageId}`);
    // A kernel or initrd given as a hex SHA-256 names an image (anything else is a path on the owner node).
    for (const ref of [spec.kernel, spec.initrd]) if (ref !== undefined && isImageRef(ref) && !this.images.has(ref)) fail('not_found', `no image ${ref}`);
  }

  private checkNoActiveMigration(vm: Vm): void {
    const mid = this.activeMigrationByVm.get(vm.id);
    if (mid !== undefined) fail('conflict', `VM ${vm.name} is being migrated (${mid})`, { migration: mid });
  }

  private vmCreate(c: CommandOf<'vm.create'>): Outcome {
    if (this.vms.has(c.id)) fail('already_exists', `VM ${c.id} exists`);
    if (this.vmNames.has(c.name)) fail('already_exists', `a VM is already named ${c.name}`);
    if (c.owner !== null) this.member(c.owner);
    this.checkSpec(c.spec);
    if (this.vms.size >= vmsMax) fail('limit_exceeded', `the cluster has ${vmsMax} VMs already`);
    const vm: Vm = deepFreeze({ id: c.id, name: c.name, spec: c.spec, desired: c.desired, owner: c.owner, observed: null, createdAt: c.at, updatedAt: c.at, version: 1 });
    this.vms.set(vm.id, vm);
    this.vmNames.set(vm.name, vm.id);
    return { target: vm.id, ids: [vm.id], value: vm };
  }

  private putVm(prev: Vm, next: Vm): Vm {
    deepFreeze(next);
    if (prev.name !== next.name) {
      this.vmNames.delete(prev.name);
      this.vmNames.set(next.name, next.id);
    }
    this.vms.set(next.id, next);
    return next;
  }

  private vmUpdate(c: CommandOf<'vm.update'>): Outcome {
    const vm = this.vm(c.id);
    this.checkVersion(vm, c.expectedVersion);
    if (c.name !== undefined && c.name !== vm.name && this.vmNames.has(c.name)) fail('already_exists', `a VM is already named ${c.name}`);
    if (c.spec !== undefined) {
      this.checkSpec(c.spec);
      this.checkNoActiveMigration(vm);
    }
    const next = this.putVm(vm, { ...vm, name: c.name ?? vm.name, spec: c.spec ?? vm.spec, updatedAt: c.at, version: vm.version + 1 });
    return { target: vm.id, ids: [vm.id], value: next };
  }

  private vmSetDesired(c: CommandOf<'vm.setDesired'>): Outcome {
    const vm = this.vm(c.id);
    this.checkVersion(vm, c.expectedVersion);
    const next = this.putVm(vm, { ...vm, desired: c.desired, updatedAt: c.at, version: vm.version + 1 });
    return { target: vm.id, ids: [vm.id], value: next };
  }

  private vmSetObserved(c: CommandOf<'vm.setObserved'>): Outcome {
    const vm = this.vm(c.id);
    // After a hand-over the old owner's agent may still report; only the current owner speaks for the VM.
    if (c.actor.kind === 'node' && c.actor.id !== vm.owner) fail('forbidden', `node ${c.actor.id} does not own VM ${vm.name}`);
    const next = this.putVm(vm, { ...vm, observed: { state: c.state, reason: c.reason, at: c.at } });
    return { target: vm.id, ids: [vm.id], value: next };
  }

  private vmSetOwner(c: CommandOf<'vm.setOwner'>): Outcome {
    const vm = this.vm(c.id);
    this.checkVersion(vm, c.expectedVersion);
    if (c.owner !== null) this.member(c.owner);
    this.checkNoActiveMigration(vm);
    const next = this.putVm(vm, { ...vm, owner: c.owner, updatedAt: c.at, version: vm.version + 1 });
    return { target: vm.id, ids: [vm.id], value: next };
  }

  private vmDelete(c: CommandOf<'vm.delete'>): Outcome {
    const vm = this.vm(c.id);
    this.checkVersion(vm, c.expectedVersion);
    this.checkNoActiveMigration(vm);
    this.vms.delete(vm.id);
    this.vmNames.delete(vm.name);
    return { target: vm.id, ids: [vm.id], value: null };
  }

  // ---- images ----

  private imageAdd(c: CommandOf<'image.add'>): Outcome {
    this.member(c.node);
    const img = this.images.get(c.id);
    if (img !== undefined && img.sizeBytes !== c.sizeBytes) fail('conflict', `image ${c.id} is ${img.sizeBytes} bytes, not ${c.sizeBytes}`);
    if (img === undefined && this.images.size >= imagesMax) fail('limit_exceeded', `the cluster has ${imagesMax} images already`);
    const nodes = img === undefined ? [c.node] : img.nodes.includes(c.node) ? [...img.nodes] : [...img.nodes, c.node].sort();
    const next: Image = deepFreeze(img === undefined ? { id: c.id, name: c.name, sizeBytes: c.sizeBytes, nodes, addedAt: c.at } : { ...img, nodes });
    this.images.set(next.id, next);
    return { target: next.id, ids: [next.id], value: next };
  }

  private imageRemove(c: CommandOf<'image.remove'>): Outcome {
    const img = this.images.get(c.id) ?? fail('not_found', `no image ${c.id}`);
    if (c.node !== undefined) {
      const next: Image = deepFreeze({ ...img, nodes: img.nodes.filter((n) => n !== c.node) });
      this.images.set(img.id, next);
      return { target: img.id, ids: [img.id], value: next };
    }
    for (const v of this.vms.values()) {
      if (v.spec.disks.some((d) => d.imageId === c.id) || v.spec.kernel === c.id || v.spec.initrd === c.id) fail('conflict', `image ${c.id} is used by VM ${v.name}`, { vm: v.id });
    }
    this.images.delete(img.id);
    return { target: img.id, ids: [img.id], value: null };
  }

  // ---- migrations ----

  private migrationCreate(c: CommandOf<'migration.create'>): Outcome {
    if (this.migrations.has(c.id)) fail('already_exists', `migration ${c.id} exists`);
    const vm = this.vm(c.vm);
    this.member(c.target);
    if (vm.owner === null) fail('conflict', `VM ${vm.name} has no owner to migrate from`);
    if (vm.owner === c.target) fail('conflict', `VM ${vm.name} already runs on ${c.target}`);
    this.checkNoActiveMigration(vm);
    this.pruneFinished(this.migrations, migrationsMax, (m) => !isMigrationActive(m), (m) => m.finishedAt ?? 0);
    if (this.migrations.size >= migrationsMax) fail('limit_exceeded', `${migrationsMax} migrations are active`);
    const m: Migration = deepFreeze({
      id: c.id,
      vm: vm.id,
      source: vm.owner,
      target: c.target,
      options: c.options,
      phase: 'requested',
      reason: null,
      progress: {},
      createdAt: c.at,
      updatedAt: c.at,
      finishedAt: null,
    });
    this.migrations.set(m.id, m);
    this.activeMigrationByVm.set(vm.id, m.id);
    return { target: m.id, ids: [m.id, vm.id], value: m };
  }

  private migrationAdvance(c: CommandOf<'migration.advance'>): Outcome {
    const m = this.migrations.get(c.id) ?? fail('not_found', `no migration ${c.id}`);
    if (!migrationTransitions[m.phase].includes(c.phase)) {
      fail('migration_transition_invalid', `migration ${m.id} cannot go from ${m.phase} to ${c.phase}`, { phase: m.phase });
    }
    const terminal = terminalPhases.has(c.phase);
    const next: Migration = deepFreeze({
      ...m,
      phase: c.phase,
      reason: c.reason ?? m.reason,
      progress: { ...m.progress, ...c.progress },
      updatedAt: c.at,
      finishedAt: terminal ? c.at : null,
    });
    this.migrations.set(m.id, next);
    const ids = [m.id, m.vm];
    if (terminal) this.activeMigrationByVm.delete(m.vm);
    if (c.phase === 'completed') {
      // The target runs the VM now: ownership moves in the same entry, so no replica sees two owners.
      const vm = this.vms.get(m.vm);
      if (vm !== undefined) this.putVm(vm, { ...vm, owner: m.target, updatedAt: c.at, version: vm.version + 1 });
    }
    return { target: m.id, ids, value: next };
  }

  /** Drops the oldest inactive records (by `age`, then id) while the map is full. Deterministic: sorted. */
  private pruneFinished<T extends { id: string }>(map: Map<string, T>, max: number, inactive: (t: T) => boolean, age: (t: T) => number): void {
    if (map.size < max) return;
    const old = [...map.values()].filter(inactive).sort((a, b) => age(a) - age(b) || byId(a, b));
    for (const t of old) {
      if (map.size < max) break;
      map.delete(t.id);
    }
  }

  // ---- API tokens ----

  private tokenCreate(c: CommandOf<'token.create'>): Outcome {
    if (this.apiTokens.has(c.id)) fail('already_exists', `token ${c.id} exists`);
    if (this.apiTokenByHash.has(c.secretHash)) fail('conflict', 'a token with this secret exists');
    this.pruneFinished(this.apiTokens, apiTokensMax, (t) => t.revokedAt !== null, (t) => t.revokedAt ?? 0);
    if (this.apiTokens.size >= apiTokensMax) fail('limit_exceeded', `${apiTokensMax} live API tokens exist`);
    // pruneFinished may have dropped revoked tokens: keep the hash index in step.
    for (const [hash, id] of this.apiTokenByHash) if (!this.apiTokens.has(id)) this.apiTokenByHash.delete(hash);
    const t: ApiTokenRecord = deepFreeze({ id: c.id, name: c.name, role: c.role, secretHash: c.secretHash, createdAt: c.at, revokedAt: null });
    this.apiTokens.set(t.id, t);
    this.apiTokenByHash.set(t.secretHash, t.id);
    return { target: t.id, ids: [t.id], value: withoutHash(t) };
  }

  private tokenRevoke(c: CommandOf<'token.revoke'>): Outcome {
    const t = this.apiTokens.get(c.id) ?? fail('not_found', `no token ${c.id}`);
    if (t.revokedAt !== null) return { target: t.id, ids: [t.id], value: withoutHash(t) };
    if (t.role === 'admin') {
      let live = 0;
      for (const o of this.apiTokens.values()) if (o.role === 'admin' && o.revokedAt === null) live++;
      if (live <= 1) fail('conflict', 'refusing to revoke the last admin token; create another admin token first');
    }
    const next: ApiTokenRecord = deepFreeze({ ...t, revokedAt: c.at });
    this.apiTokens.set(t.id, next);
    return { target: t.id, ids: [t.id], value: withoutHash(next) };
  }

  // ---- join tokens ----

  private joinTokenCreate(c: CommandOf<'joinToken.create'>): Outcome {
    if (this.joinTokens.has(c.id)) fail('already_exists', `join token ${c.id} exists`);
    if (c.expiresAt <= c.at) fail('conflict', 'a join token must expire after it is created');
    this.pruneFinished(this.joinTokens, joinTokensMax, (t) => t.usedBy !== null || t.revokedAt !== null || t.expiresAt <= c.at, (t) => t.createdAt);
    if (this.joinTokens.size >= joinTokensMax) fail('limit_exceeded', `${joinTokensMax} unused join tokens exist`);
    const t: JoinTokenRecord = deepFreeze({ id: c.id, secretHash: c.secretHash, createdAt: c.at, expiresAt: c.expiresAt, usedBy: null, usedAt: null, revokedAt: null });
    this.joinTokens.set(t.id, t);
    return { target: t.id, ids: [t.id], value: withoutHash(t) };
  }

  private joinTokenUse(c: CommandOf<'joinToken.use'>): Outcome {
    const t = this.joinTokens.get(c.id);
    // Unknown id and wrong secret look the same, so the answer does not reveal which ids exist.
    if (t === undefined || t.secretHash !== c.secretHash) fail('join_token_invalid', 'unknown join token or wrong secret');
    if (t.revokedAt !== null) fail('join_token_revoked', `join token ${t.id} was revoked`);
    if (t.usedBy !== null && t.usedBy !== c.node.id) fail('join_token_used', `join token ${t.id} was used by another node`);
    if (t.usedBy === c.node.id) {
      // A retry by the node that redeemed it (its first answer was lost): same result, nothing changes.
      const m = this.members.get(c.node.id);
      if (m !== undefined) return { target: t.id, ids: [t.id, m.id], value: m };
      // Redeemed, then removed: a removed node needs a new token to come back.
      fail('join_token_used', `join token ${t.id} was already used`);
    }
    if (c.at >= t.expiresAt) fail('join_token_expired', `join token ${t.id} expired`);
    this.checkNewMember(c.node);
    const m = this.newMember(c.node, 'learner', c.at);
    this.members.set(m.id, m);
    this.joinTokens.set(t.id, deepFreeze({ ...t, usedBy: m.id, usedAt: c.at }));
    return { target: t.id, ids: [t.id, m.id], value: m };
  }

  private joinTokenRevoke(c: CommandOf<'joinToken.revoke'>): Outcome {
    const t = this.joinTokens.get(c.id) ?? fail('not_found', `no join token ${c.id}`);
    const next = t.revokedAt !== null ? t : deepFreeze({ ...t, revokedAt: c.at });
    this.joinTokens.set(t.id, next);
    return { target: t.id, ids: [t.id], value: withoutHash(next) };
  }
}

/** What a refused command was aimed at: its record id when it names one, else the cluster. */
function refusedTarget(cmd: ClusterCommand): string {
  if ('id' in cmd && typeof cmd.id === 'string') return cmd.id;
  if ('node' in cmd && typeof cmd.node === 'object') return cmd.node.id;
  return cmd.type;
}

function withoutHash<T extends { secretHash: string }>(t: T): Omit<T, 'secretHash'> {
  const { secretHash: _secretHash, ...rest } = t;
  return rest;
}
