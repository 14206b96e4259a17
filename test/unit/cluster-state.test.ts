// Proves the cluster state machine: each command's success and refusal, deterministic snapshots across replicas, audit ring bound, hashed tokens, join-token rules by command time, the migration phase machine, schema migration and the command validator.
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ClusterError,
  ClusterStateMachine,
  auditRecordsMax,
  clusterSchemaVersion,
  commandBytesMax,
  decodeCommand,
  decodeSnapshot,
  encodeCommand,
  hashSecret,
  migrate,
  migrationOptionsDefault,
  migrationTransitions,
  snapshotFormat,
  validateCommand,
  type Actor,
  type ChangeEvent,
  type ClusterCommand,
  type MigrationPhase,
  type VmSpec,
} from '../../consensus/cluster/index.js';

const A = 'NodeA';
const B = 'NodeB';
const C = 'NodeC';
const admin: Actor = { kind: 'token', id: 'tok-admin', name: 'admin' };
const adminSecret = 'admin-secret-never-stored';
const t0 = 1_700_000_000_000;
const spec: VmSpec = { vcpus: 1, memoryMiB: 256, disks: [{ sizeGiB: 1 }], nics: [{ model: 'virtio-net-pci' }] };
const imageId = 'a'.repeat(64);

type Body<T extends ClusterCommand['type']> = Omit<Extract<ClusterCommand, { type: T }>, 'type' | 'at' | 'actor' | 'from'>;

class Harness {
  readonly sm = new ClusterStateMachine();
  index = 0;
  at = t0;
  events: ChangeEvent[] = [];
  constructor() {
    this.sm.onChange((e) => this.events.push(e));
  }
  run<T extends ClusterCommand['type']>(type: T, body: Body<T>, opts: { actor?: Actor; at?: number } = {}): unknown {
    const cmd = { type, at: opts.at ?? this.at++, actor: opts.actor ?? admin, from: '192.0.2.1', ...body } as unknown as ClusterCommand;
    return this.sm.apply(encodeCommand(cmd), ++this.index);
  }
  /** Runs a command expected to be refused; returns the code and checks nothing changed but the audit record of the refusal. */
  refused<T extends ClusterCommand['type']>(type: T, body: Body<T>, opts: { actor?: Actor; at?: number } = {}): string {
    const before = decodeSnapshot(this.sm.snapshot());
    let code = '(no error)';
    try {
      this.run(type, body, opts);
    } catch (err) {
      expect(err).toBeInstanceOf(ClusterError);
      code = (err as ClusterError).code;
    }
    const after = decodeSnapshot(this.sm.snapshot());
    expect({ ...after, audit: [], auditNextSeq: 0 }).toEqual({ ...before, audit: [], auditNextSeq: 0 });
    if (before.clusterId !== null) {
      // An initialised cluster records the refusal (deterministically, so every replica has it).
      expect(after.auditNextSeq).toBe(before.auditNextSeq + 1);
      expect(after.audit.at(-1)).toMatchObject({ seq: before.auditNextSeq, action: type, outcome: 'refused', error: code });
    } else {
      expect(after.auditNextSeq).toBe(before.auditNextSeq);
    }
    return code;
  }
}

function node(id: string, name = id.toLowerCase(), site = 'site-1') {
  return { id, name, addresses: [`/ip4/127.0.0.1/tcp/1/p2p/${id}`], site };
}

function initialized(): Harness {
  const h = new Harness();
  h.run('cluster.init', { clusterId: 'c1', node: node(A), adminToken: { id: 'tok-admin', name: 'admin', secretHash: hashSecret(adminSecret) } }, { actor: { kind: 'system', id: A } });
  return h;
}

function withVm(): Harness {
  const h = initialized();
  h.run('member.add', { node: node(B, 'nodeb', 'site-2'), role: 'voter' });
  h.run('member.add', { node: node(C, 'nodec', 'site-3'), role: 'learner' });
  h.run('image.add', { id: imageId, name: 'debian', sizeBytes: 1024, node: A });
  h.run('vm.create', { id: 'vm1', name: 'web', spec: { ...spec, disks: [{ imageId, sizeGiB: 2 }] }, desired: 'running', owner: A });
  return h;
}

describe('cluster.init and settings', () => {
  it('creates the cluster once; nothing else is accepted before it', () => {
    const h = new Harness();
    expect(h.refused('member.add', { node: node(B), role: 'learner' })).toBe('cluster_not_initialized');
    h.run('cluster.init', { clusterId: 'c1', node: node(A), adminToken: { id: 'tok-admin', name: 'admin', secretHash: hashSecret(adminSecret) }, settings: { desiredVoters: 5 } }, { at: t0 });
    expect(h.sm.getClusterId()).toBe('c1');
    expect(h.sm.listMembers()).toMatchObject([{ id: A, role: 'voter', status: 'active', joinedAt: t0 }]);
    expect(h.sm.getSettings()).toEqual({ desiredVoters: 5, voterReplaceAfterMs: 30_000 });
    expect(h.refused('cluster.init', { clusterId: 'c2', node: node(B), adminToken: { id: 't2', name: 'x', secretHash: hashSecret('x') } })).toBe('cluster_already_initialized');
  });

  it('updates settings', () => {
    const h = initialized();
    h.run('settings.update', { settings: { voterReplaceAfterMs: 5_000 } });
    expect(h.sm.getSettings()).toEqual({ desiredVoters: 5, voterReplaceAfterMs: 5_000 });
  });
});

describe('members', () => {
  it('adds, updates, changes roles and removes members with their invariants', () => {
    const h = initialized();
    h.run('member.add', { node: node(B), role: 'learner' });
    expect(h.refused('member.add', { node: node(B, 'other'), role: 'learner' })).toBe('already_exists');
    expect(h.refused('member.add', { node: node(C, 'nodeb'), role: 'learner' })).toBe('already_exists');
    h.run('member.update', { id: B, status: 'draining', site: 'site-9' });
    expect(h.sm.getMember(B)).toMatchObject({ status: 'draining', site: 'site-9', name: 'nodeb' });
    expect(h.refused('member.update', { id: B, name: 'nodea' })).toBe('already_exists');
    expect(h.refused('member.update', { id: C, status: 'active' })).toBe('not_found');
    expect(h.refused('member.setRole', { id: A, role: 'learner' })).toBe('conflict'); // last voter
    h.run('member.setRole', { id: B, role: 'voter' });
    h.run('member.setRole', { id: A, role: 'learner' });
    expect(h.sm.getMember(A)?.role).toBe('learner');
    expect(h.refused('member.remove', { id: B })).toBe('conflict'); // last voter
    h.run('vm.create', { id: 'vm1', name: 'web', spec, desired: 'running', owner: A });
    expect(h.refused('member.remove', { id: A })).toBe('conflict'); // owns a VM
    h.run('vm.setOwner', { id: 'vm1', owner: B });
    h.run('member.remove', { id: A });
    expect(h.sm.getMember(A)).toBeNull();
    expect(h.refused('member.remove', { id: A })).toBe('not_found');
  });
});

describe('VMs', () => {
  it('creates VMs with unique names, known owners and known images', () => {
    const h = withVm();
    const vm = h.sm.getVm('vm1');
    expect(vm).toMatchObject({ name: 'web', owner: A, desired: 'running', version: 1, observed: null });
    expect(h.sm.getVmByName('web')?.id).toBe('vm1');
    expect(h.refused('vm.create', { id: 'vm2', name: 'web', spec, desired: 'stopped', owner: null })).toBe('already_exists');
    expect(h.refused('vm.create', { id: 'vm1', name: 'other', spec, desired: 'stopped', owner: null })).toBe('already_exists');
    expect(h.refused('vm.create', { id: 'vm2', name: 'db', spec, desired: 'stopped', owner: 'NodeZ' })).toBe('not_found');
    expect(h.refused('vm.create', { id: 'vm2', name: 'db', spec: { ...spec, disks: [{ imageId: 'b'.repeat(64), sizeGiB: 1 }] }, desired: 'stopped', owner: null })).toBe('not_found');
    expect(Object.isFrozen(vm)).toBe(true);
  });

  it('uses versions for optimistic concurrency', () => {
    const h = withVm();
    h.run('vm.update', { id: 'vm1', expectedVersion: 1, name: 'web2', spec: { ...spec, vcpus: 2 } });
    expect(h.sm.getVmByName('web')).toBeNull();
    expect(h.sm.getVmByName('web2')).toMatchObject({ version: 2, spec: { vcpus: 2 } });
    expect(h.refused('vm.update', { id: 'vm1', expectedVersion: 1, name: 'web3' })).toBe('version_conflict');
    expect(h.refused('vm.setDesired', { id: 'vm1', desired: 'stopped', expectedVersion: 1 })).toBe('version_conflict');
    h.run('vm.setDesired', { id: 'vm1', desired: 'paused', expectedVersion: 2 });
    h.run('vm.setDesired', { id: 'vm1', desired: 'stopped' });
    expect(h.sm.getVm('vm1')).toMatchObject({ desired: 'stopped', version: 4 });
    expect(h.refused('vm.setDesired', { id: 'nope', desired: 'stopped' })).toBe('not_found');
    expect(h.refused('vm.delete', { id: 'vm1', expectedVersion: 3 })).toBe('version_conflict');
    h.run('vm.delete', { id: 'vm1', expectedVersion: 4 });
    expect(h.sm.listVms()).toEqual([]);
    expect(h.refused('vm.delete', { id: 'vm1' })).toBe('not_found');
  });

  it('takes observed state only from the owner node, without bumping the version', () => {
    const h = withVm();
    expect(h.refused('vm.setObserved', { id: 'vm1', state: 'running', reason: '' }, { actor: { kind: 'node', id: B } })).toBe('forbidden');
    h.run('vm.setObserved', { id: 'vm1', state: 'running', reason: 'booted' }, { actor: { kind: 'node', id: A }, at: t0 + 500 });
    expect(h.sm.getVm('vm1')).toMatchObject({ observed: { state: 'running', reason: 'booted', at: t0 + 500 }, version: 1 });
  });

  it('moves ownership only to members', () => {
    const h = withVm();
    expect(h.refused('vm.setOwner', { id: 'vm1', owner: 'NodeZ' })).toBe('not_found');
    h.run('vm.setOwner', { id: 'vm1', owner: B, expectedVersion: 1 });
    h.run('vm.setOwner', { id: 'vm1', owner: null });
    expect(h.sm.getVm('vm1')).toMatchObject({ owner: null, version: 3 });
  });
});

describe('images', () => {
  it('tracks holders and refuses removing an image in use', () => {
    const h = withVm();
    h.run('image.add', { id: imageId, name: 'debian', sizeBytes: 1024, node: B });
    h.run('image.add', { id: imageId, name: 'debian', sizeBytes: 1024, node: B }); // idempotent
    expect(h.sm.getImage(imageId)?.nodes).toEqual([A, B]);
    expect(h.refused('image.add', { id: imageId, name: 'debian', sizeBytes: 999, node: C })).toBe('conflict');
    expect(h.refused('image.add', { id: 'c'.repeat(64), name: 'x', sizeBytes: 1, node: 'NodeZ' })).toBe('not_found');
    expect(h.refused('image.remove', { id: imageId })).toBe('conflict');
    h.run('image.remove', { id: imageId, node: A });
    expect(h.sm.getImage(imageId)?.nodes).toEqual([B]);
    h.run('vm.delete', { id: 'vm1' });
    h.run('image.remove', { id: imageId });
    expect(h.sm.listImages()).toEqual([]);
    expect(h.refused('image.remove', { id: imageId })).toBe('not_found');
  });
});

describe('kernel and initrd images', () => {
  it('refuses a VM whose kernel or initrd names an unknown image, and removing an image used as a kernel', () => {
    const h = withVm();
    const kernel = 'd'.repeat(64);
    expect(h.refused('vm.create', { id: 'vm2', name: 'k', spec: { ...spec, kernel }, desired: 'stopped', owner: A })).toBe('not_found');
    expect(h.refused('vm.create', { id: 'vm2', name: 'k', spec: { ...spec, kernel: '/boot/vmlinuz', initrd: kernel }, desired: 'stopped', owner: A })).toBe('not_found');
    // A path is the owner node's business, not the cluster's.
    h.run('vm.create', { id: 'vm3', name: 'p', spec: { ...spec, kernel: '/boot/vmlinuz' }, desired: 'stopped', owner: A });
    h.run('image.add', { id: kernel, name: 'vmlinuz', sizeBytes: 10, node: A });
    h.run('vm.create', { id: 'vm2', name: 'k', spec: { ...spec, kernel, initrd: kernel }, desired: 'stopped', owner: A });
    expect(h.refused('vm.update', { id: 'vm3', expectedVersion: 1, spec: { ...spec, initrd: 'e'.repeat(64), kernel: '/boot/vmlinuz' } })).toBe('not_found');
    expect(h.refused('image.remove', { id: kernel })).toBe('conflict');
    h.run('vm.delete', { id: 'vm2' });
    h.run('image.remove', { id: kernel });
  });
});

describe('migrations', () => {
  it('runs requested → completed and moves the owner in the same entry', () => {
    const h = withVm();
    h.run('migration.create', { id: 'm1', vm: 'vm1', target: B, options: migrationOptionsDefault });
    expect(h.sm.getMigration('m1')).toMatchObject({ source: A, target: B, phase: 'requested', finishedAt: null, options: migrationOptionsDefault });
    expect(h.refused('migration.create', { id: 'm2', vm: 'vm1', target: C, options: migrationOptionsDefault })).toBe('conflict'); // one at a time
    expect(h.refused('vm.delete', { id: 'vm1' })).toBe('conflict');
    expect(h.refused('vm.setOwner', { id: 'vm1', owner: C })).toBe('conflict');
    expect(h.refused('member.remove', { id: B })).toBe('conflict');
    h.run('migration.advance', { id: 'm1', phase: 'preparing' });
    h.run('migration.advance', { id: 'm1', phase: 'transferring', progress: { bytesTotal: 100, bytesTransferred: 10 } });
    h.run('migration.advance', { id: 'm1', phase: 'transferring', progress: { bytesTransferred: 90 } });
    expect(h.sm.getMigration('m1')?.progress).toEqual({ bytesTotal: 100, bytesTransferred: 90 });
    h.run('migration.advance', { id: 'm1', phase: 'switching' });
    expect(h.refused('migration.advance', { id: 'm1', phase: 'cancelled' })).toBe('migration_transition_invalid');
    h.run('migration.advance', { id: 'm1', phase: 'completed' }, { at: t0 + 9_000 });
    expect(h.sm.getMigration('m1')).toMatchObject({ phase: 'completed', finishedAt: t0 + 9_000 });
    expect(h.sm.getVm('vm1')).toMatchObject({ owner: B, version: 2 });
    expect(h.refused('migration.advance', { id: 'm1', phase: 'failed' })).toBe('migration_transition_invalid');
    expect(h.refused('migration.create', { id: 'm2', vm: 'vm1', target: B, options: migrationOptionsDefault })).toBe('conflict'); // already there
    h.run('migration.create', { id: 'm2', vm: 'vm1', target: C, options: migrationOptionsDefault });
    h.run('migration.advance', { id: 'm2', phase: 'failed', reason: 'target unreachable' });
    expect(h.sm.getMigration('m2')).toMatchObject({ phase: 'failed', reason: 'target unreachable' });
    expect(h.sm.getVm('vm1')?.owner).toBe(B); // a failed migration leaves the VM on the source
    expect(h.refused('migration.create', { id: 'm1', vm: 'vm1', target: A, options: migrationOptionsDefault })).toBe('already_exists');
    expect(h.refused('migration.advance', { id: 'nope', phase: 'failed' })).toBe('not_found');
  });

  it('accepts exactly the transitions of the table', () => {
    const phases: MigrationPhase[] = ['requested', 'preparing', 'transferring', 'switching', 'completed', 'failed', 'cancelled'];
    const path: Record<MigrationPhase, MigrationPhase[]> = {
      requested: [],
      preparing: ['preparing'],
      transferring: ['preparing', 'transferring'],
      switching: ['preparing', 'transferring', 'switching'],
      completed: ['preparing', 'transferring', 'switching', 'completed'],
      failed: ['failed'],
      cancelled: ['cancelled'],
    };
    for (const from of phases) {
      for (const to of phases) {
        const h = withVm();
        h.run('migration.create', { id: 'm', vm: 'vm1', target: B, options: migrationOptionsDefault });
        for (const p of path[from]) h.run('migration.advance', { id: 'm', phase: p });
        const legal = migrationTransitions[from].includes(to);
        if (legal) h.run('migration.advance', { id: 'm', phase: to });
        else expect(h.refused('migration.advance', { id: 'm', phase: to }), `${from} → ${to}`).toBe('migration_transition_invalid');
      }
    }
  });
});

describe('API tokens', () => {
  it('stores only the hash, verifies by hash and honours revocation', () => {
    const h = initialized();
    const secret = 'operator-secret-0123456789';
    h.run('token.create', { id: 'tok-op', name: 'ci', role: 'operator', secretHash: hashSecret(secret) });
    const snap = Buffer.from(h.sm.snapshot()).toString();
    expect(snap).not.toContain(secret);
    expect(snap).not.toContain(adminSecret);
    expect(snap).toContain(hashSecret(secret));
    expect(h.sm.verifyApiToken(hashSecret(secret))).toMatchObject({ id: 'tok-op', role: 'operator', revokedAt: null });
    expect(h.sm.verifyApiToken(hashSecret('wrong'))).toBeNull();
    for (const t of h.sm.listApiTokens()) expect(t).not.toHaveProperty('secretHash');
    expect(h.refused('token.create', { id: 'tok-op', name: 'x', role: 'viewer', secretHash: hashSecret('other') })).toBe('already_exists');
    expect(h.refused('token.create', { id: 'tok-2', name: 'x', role: 'viewer', secretHash: hashSecret(secret) })).toBe('conflict');
    h.run('token.revoke', { id: 'tok-op' }, { at: t0 + 77 });
    expect(h.sm.verifyApiToken(hashSecret(secret))).toBeNull();
    expect(h.sm.getApiToken('tok-op')?.revokedAt).toBe(t0 + 77);
    expect(h.refused('token.revoke', { id: 'tok-admin' })).toBe('conflict'); // last admin
    expect(h.refused('token.revoke', { id: 'nope' })).toBe('not_found');
    expect(() => validateCommand({ type: 'token.create', at: t0, actor: admin, from: null, id: 't', name: 'n', role: 'admin', secretHash: hashSecret('s'), secret: 's' })).toThrow(ClusterError);
  });
});

describe('join tokens', () => {
  const hash = hashSecret('join-secret');
  function withJoin(): Harness {
    const h = initialized();
    h.run('joinToken.create', { id: 'j1', secretHash: hash, expiresAt: t0 + 60_000 });
    return h;
  }

  it('admits a node as a learner once; a retry by the same node succeeds, another node is refused', () => {
    const h = withJoin();
    expect(h.sm.listJoinTokens()[0]).not.toHaveProperty('secretHash');
    expect(h.refused('joinToken.use', { id: 'j1', secretHash: hashSecret('wrong'), node: node(B) })).toBe('join_token_invalid');
    expect(h.refused('joinToken.use', { id: 'nope', secretHash: hash, node: node(B) })).toBe('join_token_invalid');
    h.run('joinToken.use', { id: 'j1', secretHash: hash, node: node(B) });
    expect(h.sm.getMember(B)).toMatchObject({ role: 'learner', status: 'active' });
    expect(h.sm.listJoinTokens()[0]).toMatchObject({ usedBy: B });
    h.run('joinToken.use', { id: 'j1', secretHash: hash, node: node(B) }, { at: t0 + 120_000 }); // retry, even after expiry
    expect(h.refused('joinToken.use', { id: 'j1', secretHash: hash, node: node(C) })).toBe('join_token_used');
    h.run('member.remove', { id: B });
    expect(h.refused('joinToken.use', { id: 'j1', secretHash: hash, node: node(B) })).toBe('join_token_used');
  });

  it('expires by command time and refuses revoked tokens', () => {
    const h = withJoin();
    expect(h.refused('joinToken.use', { id: 'j1', secretHash: hash, node: node(B) }, { at: t0 + 60_000 })).toBe('join_token_expired');
    h.run('joinToken.use', { id: 'j1', secretHash: hash, node: node(B) }, { at: t0 + 59_999 });
    h.run('joinToken.create', { id: 'j2', secretHash: hashSecret('two'), expiresAt: t0 + 60_000 });
    h.run('joinToken.revoke', { id: 'j2' });
    expect(h.refused('joinToken.use', { id: 'j2', secretHash: hashSecret('two'), node: node(C) })).toBe('join_token_revoked');
    expect(h.refused('joinToken.create', { id: 'j3', secretHash: hash, expiresAt: t0 }, { at: t0 + 1 })).toBe('conflict');
    expect(h.refused('joinToken.create', { id: 'j2', secretHash: hash, expiresAt: t0 + 99_999 })).toBe('already_exists');
    expect(h.refused('joinToken.revoke', { id: 'nope' })).toBe('not_found');
  });
});

describe('audit', () => {
  it('records every change and every refusal that reached the log, with who, when and from where', () => {
    const h = withVm();
    const n = h.sm.auditPage().records.length;
    h.refused('vm.delete', { id: 'nope' }, { at: t0 + 4 });
    h.run('vm.setDesired', { id: 'vm1', desired: 'stopped' }, { at: t0 + 5 });
    const last = h.sm.auditPage(n).records;
    expect(last).toEqual([
      { seq: n + 1, at: t0 + 4, actor: admin, action: 'vm.delete', target: 'nope', from: '192.0.2.1', outcome: 'refused', error: 'not_found' },
      { seq: n + 2, at: t0 + 5, actor: admin, action: 'vm.setDesired', target: 'vm1', from: '192.0.2.1', outcome: 'ok' },
    ]);
    expect(h.events.at(-2)).toMatchObject({ type: 'audit.refused', ids: [String(n + 1)] });
  });

  it(`keeps at most ${auditRecordsMax} records, dropping the oldest, and pages by seq`, () => {
    const h = initialized();
    const extra = 25;
    for (let i = 0; i < auditRecordsMax + extra; i++) h.run('settings.update', { settings: { voterReplaceAfterMs: 1_000 + i } });
    const total = auditRecordsMax + extra + 1; // + cluster.init
    const first = h.sm.auditPage(0, 10);
    expect(first.firstSeq).toBe(total - auditRecordsMax + 1);
    expect(first.nextSeq).toBe(total + 1);
    expect(first.records.map((r) => r.seq)).toEqual(Array.from({ length: 10 }, (_, i) => first.firstSeq + i));
    let count = 0;
    let after = 0;
    for (;;) {
      const p = h.sm.auditPage(after);
      if (p.records.length === 0) break;
      count += p.records.length;
      after = p.records[p.records.length - 1]?.seq ?? after;
    }
    expect(count).toBe(auditRecordsMax);
    // The ring survives a snapshot round trip in order.
    const r = new ClusterStateMachine();
    r.restore(h.sm.snapshot(), h.index);
    expect(r.auditPage(total - 3).records.map((x) => x.seq)).toEqual([total - 2, total - 1, total]);
    expect(Buffer.from(r.snapshot()).equals(Buffer.from(h.sm.snapshot()))).toBe(true);
  });
});

describe('change notifications', () => {
  it('reports index, type and ids after each apply and on restore', () => {
    const h = withVm();
    h.events.length = 0;
    h.run('migration.create', { id: 'm1', vm: 'vm1', target: B, options: migrationOptionsDefault });
    expect(h.events).toEqual([{ index: h.index, type: 'migration.create', ids: ['m1', 'vm1'] }]);
    h.sm.restore(h.sm.snapshot(), 99);
    expect(h.events[1]).toEqual({ index: 99, type: 'snapshot.restore', ids: [] });
  });

  it('a throwing listener does not break apply', () => {
    const errors: unknown[] = [];
    const sm = new ClusterStateMachine({ onListenerError: (e) => errors.push(e) });
    sm.onChange(() => {
      throw new Error('boom');
    });
    sm.apply(encodeCommand({ type: 'cluster.init', at: t0, actor: admin, from: null, clusterId: 'c', node: node(A), adminToken: { id: 't', name: 't', secretHash: hashSecret('s') } }), 1);
    expect(sm.getClusterId()).toBe('c');
    expect(errors).toHaveLength(1);
  });
});

describe('validator and encoding', () => {
  const good: ClusterCommand = { type: 'vm.setDesired', at: t0, actor: admin, from: null, id: 'vm1', desired: 'stopped' };
  const bad: [string, unknown][] = [
    ['not an object', 'vm.setDesired'],
    ['array', [good]],
    ['unknown type', { ...good, type: 'vm.explode' }],
    ['missing at', { ...good, at: undefined }],
    ['negative at', { ...good, at: -1 }],
    ['fractional at', { ...good, at: 1.5 }],
    ['extra property', { ...good, force: true }],
    ['bad power state', { ...good, desired: 'exploded' }],
    ['bad actor', { ...good, actor: { kind: 'root', id: 'x' } }],
    ['bad id', { ...good, id: '../etc' }],
    ['bad name', { type: 'vm.create', at: t0, actor: admin, from: null, id: 'v', name: 'Web_1', spec, desired: 'running', owner: null }],
    ['zero vcpus', { type: 'vm.create', at: t0, actor: admin, from: null, id: 'v', name: 'web', spec: { ...spec, vcpus: 0 }, desired: 'running', owner: null }],
    ['bad hash', { type: 'token.create', at: t0, actor: admin, from: null, id: 't', name: 't', role: 'admin', secretHash: 'xyz' }],
    ['bad node id', { type: 'member.remove', at: t0, actor: admin, from: null, id: 'not a peer id' }],
    ['bad phase', { type: 'migration.advance', at: t0, actor: admin, from: null, id: 'm', phase: 'teleporting' }],
  ];

  it('accepts a good command and round-trips it', () => {
    expect(validateCommand(good)).toBe(good);
    expect(decodeCommand(encodeCommand(good))).toEqual(good);
  });

  it.each(bad)('rejects %s at propose time with command_invalid', (_label, value) => {
    expect(() => validateCommand(value)).toThrow(expect.objectContaining({ name: 'ClusterError', code: 'command_invalid' }) as Error);
    expect(() => encodeCommand(value as ClusterCommand)).toThrow(ClusterError);
  });

  it('refuses malformed bytes at apply harmlessly', () => {
    const h = withVm();
    const before = Buffer.from(h.sm.snapshot());
    const raw = [
      new TextEncoder().encode('{not json'),
      new Uint8Array([0xff, 0xfe, 0x00]),
      new TextEncoder().encode(JSON.stringify({ ...good, desired: 'exploded' })),
      new TextEncoder().encode(JSON.stringify(good).padEnd(commandBytesMax + 1, ' ')),
      ...bad.map(([, v]) => new TextEncoder().encode(JSON.stringify(v) ?? 'null')),
    ];
    for (const bytes of raw) expect(() => h.sm.apply(bytes, ++h.index)).toThrow(expect.objectContaining({ code: 'command_invalid' }) as Error);
    expect(Buffer.from(h.sm.snapshot()).equals(before)).toBe(true);
    expect(() => encodeCommand({ type: 'vm.setObserved', at: t0, actor: admin, from: null, id: 'vm1', state: 'error', reason: 'x'.repeat(1024) })).not.toThrow();
  });
});

describe('snapshots and schema versions', () => {
  it('refuses a newer schema version clearly and keeps the current state', () => {
    const h = withVm();
    const before = Buffer.from(h.sm.snapshot());
    const doc = JSON.parse(before.toString()) as Record<string, unknown>;
    const newer = new TextEncoder().encode(JSON.stringify({ ...doc, schemaVersion: clusterSchemaVersion + 1 }));
    expect(() => h.sm.restore(newer, 5)).toThrow(/newer than this release/);
    expect(() => h.sm.restore(new TextEncoder().encode('{"format":"other"}'), 5)).toThrow(expect.objectContaining({ code: 'snapshot_invalid' }) as Error);
    expect(() => h.sm.restore(new TextEncoder().encode('garbage'), 5)).toThrow(ClusterError);
    expect(Buffer.from(h.sm.snapshot()).equals(before)).toBe(true);
  });

  it('migrates a v0 snapshot through the hook', () => {
    const v0state = {
      clusterId: 'old',
      members: [{ id: A, name: 'nodea', role: 'voter', addresses: [], joinedAt: t0, status: 'active' }],
      vms: [],
      images: [],
      migrations: [],
      apiTokens: [{ id: 'tok-admin', name: 'admin', role: 'admin', secretHash: hashSecret(adminSecret), createdAt: t0, revokedAt: null }],
      auditLog: [{ seq: 1, at: t0, actor: { kind: 'system', id: A }, action: 'cluster.init', target: 'old', from: null, outcome: 'ok' }],
    };
    expect(migrate(0, v0state)).toMatchObject({ joinTokens: [], auditNextSeq: 2, settings: { desiredVoters: 3 } });
    const sm = new ClusterStateMachine();
    sm.restore(new TextEncoder().encode(JSON.stringify({ format: snapshotFormat, schemaVersion: 0, state: v0state })), 10);
    expect(sm.getClusterId()).toBe('old');
    expect(sm.getMember(A)?.site).toBe('');
    expect(sm.verifyApiToken(hashSecret(adminSecret))?.id).toBe('tok-admin');
    expect(sm.auditPage().records).toHaveLength(1);
    sm.apply(encodeCommand({ type: 'member.add', at: t0 + 1, actor: admin, from: null, node: node(B), role: 'learner' }), 11);
    expect(sm.auditPage().records.map((r) => r.seq)).toEqual([1, 2]);
    expect(JSON.parse(Buffer.from(sm.snapshot()).toString())).toMatchObject({ schemaVersion: clusterSchemaVersion });
  });
});

// ---- determinism: random command sequences over small id pools, so collisions and refusals are common ----

const nodes = [A, B, C, 'NodeD'];
const nodeArb = fc.constantFrom(...nodes);
const vmIdArb = fc.constantFrom('vm1', 'vm2', 'vm3');
const migIdArb = fc.constantFrom('m1', 'm2', 'm3');
const phaseArb = fc.constantFrom<MigrationPhase>('requested', 'preparing', 'transferring', 'switching', 'completed', 'failed', 'cancelled');
const secretArb = fc.constantFrom('s1', 's2', 's3');
const actorArb = fc.oneof(fc.constant(admin), nodeArb.map((id): Actor => ({ kind: 'node', id })));

const bodyArb: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  nodeArb.map((id) => ({ type: 'member.add', node: node(id, id.toLowerCase(), `site-${id}`), role: 'learner' })),
  fc.record({ id: nodeArb, role: fc.constantFrom('voter', 'learner') }).map((b) => ({ type: 'member.setRole', ...b })),
  nodeArb.map((id) => ({ type: 'member.remove', id })),
  fc.record({ id: nodeArb, status: fc.constantFrom('active', 'draining', 'unreachable') }).map((b) => ({ type: 'member.update', ...b })),
  fc.record({ id: vmIdArb, name: fc.constantFrom('web', 'db', 'cache'), owner: fc.option(nodeArb, { nil: null }) }).map((b) => ({ type: 'vm.create', ...b, spec, desired: 'running' })),
  fc.record({ id: vmIdArb, v: fc.integer({ min: 1, max: 4 }), vcpus: fc.integer({ min: 1, max: 4 }) }).map((b) => ({ type: 'vm.update', id: b.id, expectedVersion: b.v, spec: { ...spec, vcpus: b.vcpus } })),
  fc.record({ id: vmIdArb, desired: fc.constantFrom('running', 'stopped', 'paused') }).map((b) => ({ type: 'vm.setDesired', ...b })),
  fc.record({ id: vmIdArb, state: fc.constantFrom('running', 'stopped', 'error') }).map((b) => ({ type: 'vm.setObserved', ...b, reason: 'r' })),
  fc.record({ id: vmIdArb, owner: fc.option(nodeArb, { nil: null }) }).map((b) => ({ type: 'vm.setOwner', ...b })),
  vmIdArb.map((id) => ({ type: 'vm.delete', id })),
  nodeArb.map((n) => ({ type: 'image.add', id: imageId, name: 'img', sizeBytes: 10, node: n })),
  fc.option(nodeArb, { nil: undefined }).map((n) => (n === undefined ? { type: 'image.remove', id: imageId } : { type: 'image.remove', id: imageId, node: n })),
  { arbitrary: fc.record({ id: migIdArb, vm: vmIdArb, target: nodeArb }).map((b) => ({ type: 'migration.create', ...b, options: migrationOptionsDefault })), weight: 3 },
  // Weighted: a migration reaches `completed` only through four legal steps in a row.
  { arbitrary: fc.record({ id: migIdArb, phase: phaseArb }).map((b) => ({ type: 'migration.advance', ...b, progress: { bytesTransferred: 1 } })), weight: 12 },
  fc.record({ id: fc.constantFrom('t1', 't2'), s: secretArb, role: fc.constantFrom('admin', 'viewer') }).map((b) => ({ type: 'token.create', id: b.id, name: 'n', role: b.role, secretHash: hashSecret(b.s) })),
  fc.constantFrom('t1', 't2', 'tok-admin').map((id) => ({ type: 'token.revoke', id })),
  fc.record({ id: fc.constantFrom('j1', 'j2'), s: secretArb, ttl: fc.integer({ min: 1, max: 1_000 }) }).map((b) => ({ type: 'joinToken.create', id: b.id, secretHash: hashSecret(b.s), ttl: b.ttl })),
  { arbitrary: fc.record({ id: fc.constantFrom('j1', 'j2'), s: secretArb, n: fc.constantFrom(B, 'NodeE', 'NodeF') }).map((b) => ({ type: 'joinToken.use', id: b.id, secretHash: hashSecret(b.s), node: node(b.n, b.n.toLowerCase()) })), weight: 4 },
  fc.constantFrom('j1', 'j2').map((id) => ({ type: 'joinToken.revoke', id })),
  fc.integer({ min: 1_000, max: 9_999 }).map((ms) => ({ type: 'settings.update', settings: { voterReplaceAfterMs: ms } })),
);

const seqArb = fc.array(fc.record({ body: bodyArb, actor: actorArb, dt: fc.integer({ min: 0, max: 20 }) }), { minLength: 1, maxLength: 150, size: 'max' });

function toBytes(steps: { body: Record<string, unknown>; actor: Actor; dt: number }[]): Uint8Array[] {
  let at = t0;
  const init: ClusterCommand = { type: 'cluster.init', at, actor: admin, from: null, clusterId: 'c1', node: node(A, 'nodea', 'site-NodeA'), adminToken: { id: 'tok-admin', name: 'admin', secretHash: hashSecret('s0') } };
  // A prelude of members, an image and VMs, so that the random commands below succeed often enough.
  const prelude = [
    ...[B, C, 'NodeD'].map((id) => ({ type: 'member.add', node: node(id, id.toLowerCase(), `site-${id}`), role: 'voter' })),
    { type: 'image.add', id: imageId, name: 'img', sizeBytes: 10, node: A },
    { type: 'vm.create', id: 'vm1', name: 'web', spec, desired: 'running', owner: A },
    { type: 'vm.create', id: 'vm2', name: 'db', spec: { ...spec, disks: [{ imageId, sizeGiB: 1 }] }, desired: 'stopped', owner: B },
  ];
  const out = [encodeCommand(init), ...prelude.map((p) => encodeCommand({ ...p, at, actor: admin, from: null } as ClusterCommand))];
  for (const s of steps) {
    at += s.dt;
    const { ttl, ...body } = s.body as { ttl?: number };
    const cmd = { ...body, at, actor: s.actor, from: null, ...(ttl === undefined ? {} : { expiresAt: at + ttl }) } as ClusterCommand;
    out.push(encodeCommand(cmd));
  }
  return out;
}

function feed(sm: ClusterStateMachine, cmds: Uint8Array[], firstIndex = 1): { ok: number; codes: string[] } {
  let ok = 0;
  const codes: string[] = [];
  cmds.forEach((c, i) => {
    try {
      sm.apply(c, firstIndex + i);
      ok++;
    } catch (err) {
      codes.push((err as ClusterError).code);
      expect(err).toBeInstanceOf(ClusterError);
    }
  });
  return { ok, codes };
}

describe('determinism', () => {
  const applied = { ok: 0, refused: 0 };
  afterAll(() => {
    // The generator must exercise both paths, or the property proves little.
    expect(applied.ok).toBeGreaterThan(applied.refused / 10);
    expect(applied.refused).toBeGreaterThan(0);
  });
  it('replicas fed the same commands have identical snapshot bytes, and restore-then-continue equals continuing', () => {
    fc.assert(
      fc.property(seqArb, fc.nat(), (steps, cutSeed) => {
        const cmds = toBytes(steps);
        const r1 = new ClusterStateMachine();
        const r2 = new ClusterStateMachine();
        const a = feed(r1, cmds);
        const b = feed(r2, cmds);
        applied.ok += a.ok;
        applied.refused += a.codes.length;
        expect(b).toEqual(a);
        const s1 = Buffer.from(r1.snapshot());
        expect(Buffer.from(r2.snapshot()).equals(s1)).toBe(true);

        const cut = cutSeed % (cmds.length + 1);
        const r3 = new ClusterStateMachine();
        feed(r3, cmds.slice(0, cut));
        const r4 = new ClusterStateMachine();
        r4.restore(r3.snapshot(), cut);
        feed(r4, cmds.slice(cut), cut + 1);
        expect(Buffer.from(r4.snapshot()).equals(s1)).toBe(true);
        expect(r4.listVms()).toEqual(r1.listVms());
      }),
      { numRuns: 200 },
    );
  });
});
