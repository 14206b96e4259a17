// Proves the migration REST routes over the real cluster state machine (telemetry faked): a migration is requested with the defaults filled in (202), refused before it starts when the target has no room (counting VMs already migrating there), is unknown, is the owner, or the VM is not running or already migrating; list filters and cancel map a late cancel to 409.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { ClusterStateMachine, encodeCommand, hashSecret, migrationOptionsDefault, type ClusterCommand } from '../../consensus/cluster/index.js';
import type { ViewEntry } from '../../mesh/telemetry.js';
import { createApi, type Api } from '../../node/api/server.js';
import { registerMigrationRoutes, type MigrationOut } from '../../node/api/routes/migrations.js';
import { createLogger } from '../../node/log.js';

const A = 'NodeAaaa';
const B = 'NodeBbbb';
const C = 'NodeCccc';
const MiB = 1024 * 1024;

const sm = new ClusterStateMachine();
let index = 0;
const run = (partial: Record<string, unknown>): unknown =>
  sm.apply(encodeCommand({ at: Date.now(), actor: { kind: 'system', id: A }, from: null, ...partial } as unknown as ClusterCommand), ++index);
const node = (id: string) => ({ id, name: id.slice(4, 5).toLowerCase(), addresses: [`/ip4/127.0.0.1/tcp/1/p2p/${id}`], site: 's' });
/** Free memory each node reports in its telemetry. */
const freeMiB = new Map<string, number>([[A, 8192], [B, 8192], [C, 600]]);
const view = (): ViewEntry[] =>
  [...freeMiB].map(([nodeId, free]) => ({
    nodeId,
    status: 'reachable',
    ageMs: 0,
    receivedAtMs: Date.now(),
    sample: { cpu: { cores: 4 }, memory: { availableBytes: free * MiB, totalBytes: 16384 * MiB } } as unknown as ViewEntry['sample'],
  }));

let app: Api;

beforeAll(async () => {
  run({ type: 'cluster.init', clusterId: 'c1', node: node(A), adminToken: { id: 'tok', name: 'admin', secretHash: hashSecret('s') } });
  run({ type: 'member.add', node: node(B), role: 'voter' });
  run({ type: 'member.add', node: node(C), role: 'voter' });
  for (const [id, name, mem] of [['11111111-1111-4111-8111-111111111111', 'small', 128], ['22222222-2222-4222-8222-222222222222', 'big', 4096], ['33333333-3333-4333-8333-333333333333', 'other', 4096]] as const) {
    run({ type: 'vm.create', id, name, spec: { vcpus: 1, memoryMiB: mem, disks: [], nics: [] }, desired: 'running', owner: A });
    run({ type: 'vm.setObserved', id, state: 'running', reason: 'test' });
  }
  const { logger } = createLogger({ level: 'silent', stdout: new Writable({ write: (_c, _e, cb) => cb() }) });
  app = await createApi({ logger, bodyLimitBytes: 64 * 1024 });
  registerMigrationRoutes(app, { cluster: { state: sm, propose: async (cmd) => sm.apply(encodeCommand(cmd), ++index) }, telemetry: view });
  await app.ready();
});

afterAll(async () => app?.close());

/** Code and detail of a problem+json answer. */
const problem = (res: { json<T>(): T }): [string, string] => {
  const p = res.json<{ code: string; detail: string }>();
  return [p.code, p.detail];
};

const post = (url: string, payload?: Record<string, unknown>) => app.inject({ method: 'POST', url, ...(payload === undefined ? {} : { payload }) });

describe('POST /v1/vms/{id}/migrate', () => {
  it('records the migration with every option filled in and answers 202', async () => {
    const res = await post('/v1/vms/small/migrate', { target: 'b', options: { downtimeLimitMs: 100 } });
    expect(res.statusCode, res.body).toBe(202);
    const m = res.json<{ migration: MigrationOut }>().migration;
    expect(m).toMatchObject({ vmName: 'small', source: A, target: B, targetName: 'b', phase: 'requested', options: { ...migrationOptionsDefault, downtimeLimitMs: 100 } });
    // One at a time per VM.
    const again = await post('/v1/vms/small/migrate', { target: 'c' });
    expect(again.statusCode).toBe(409);
    expect(problem(again)).toEqual(['conflict', expect.stringMatching(/already migrating/)]);
  });

  it('refuses a target without room before anything starts, counting what already migrates there', async () => {
    const noRoom = await post('/v1/vms/big/migrate', { target: 'c' });
    expect(noRoom.statusCode).toBe(409);
    expect(problem(noRoom)).toEqual(['no_capacity', expect.stringMatching(/c has \d+ MiB free/)]);
    // B has room for one 4 GiB VM besides its reserve: the second is refused while the first is on its way.
    freeMiB.set(B, 4096 + 256 + 1000);
    expect((await post('/v1/vms/big/migrate', { target: 'b' })).statusCode).toBe(202);
    const second = await post('/v1/vms/other/migrate', { target: 'b' });
    expect(second.statusCode).toBe(409);
    expect(second.json()).toMatchObject({ code: 'no_capacity' });
    expect(sm.listMigrations().filter((m) => m.vm === '33333333-3333-4333-8333-333333333333')).toEqual([]);
  });

  it('refuses unknown nodes and VMs, the owner itself, bad options and a VM that is not running', async () => {
    expect((await post('/v1/vms/other/migrate', { target: 'nowhere' })).statusCode).toBe(404);
    expect((await post('/v1/vms/nothing/migrate', { target: 'b' })).statusCode).toBe(404);
    expect(problem(await post('/v1/vms/other/migrate', { target: 'a' }))).toEqual(['conflict', expect.stringMatching(/already runs on a/)]);
    expect((await post('/v1/vms/other/migrate', { target: 'b', options: { compression: 30 } })).statusCode).toBe(400);
    expect((await post('/v1/vms/other/migrate', { target: 'b', options: { surprise: true } })).statusCode).toBe(400);
    expect((await post('/v1/vms/other/migrate', {})).statusCode).toBe(400);
    run({ type: 'vm.setDesired', id: '33333333-3333-4333-8333-333333333333', desired: 'stopped' });
    expect(problem(await post('/v1/vms/other/migrate', { target: 'b' }))).toEqual(['conflict', expect.stringMatching(/not running/)]);
  });
});

describe('migration list, show, cancel', () => {
  it('lists newest first with filters, shows one, and cancels before the switch-over only', async () => {
    const all = (await app.inject({ method: 'GET', url: '/v1/migrations' })).json<{ migrations: MigrationOut[] }>();
    expect(all.migrations.map((m) => m.vmName)).toEqual(['big', 'small']);
    const small = (await app.inject({ method: 'GET', url: '/v1/migrations?vm=small' })).json<{ migrations: MigrationOut[] }>();
    expect(small.migrations).toHaveLength(1);
    const id = small.migrations[0]?.id ?? '';
    expect((await app.inject({ method: 'GET', url: `/v1/migrations/${id}` })).json()).toMatchObject({ migration: { id, phase: 'requested' } });
    expect((await app.inject({ method: 'GET', url: '/v1/migrations/nope' })).statusCode).toBe(404);
    const cancelled = await post(`/v1/migrations/${id}/cancel`);
    expect(cancelled.statusCode, cancelled.body).toBe(200);
    const after = cancelled.json<{ migration: MigrationOut }>().migration;
    expect([after.phase, after.reason]).toEqual(['cancelled', expect.stringMatching(/cancelled by/)]);
    const active = (await app.inject({ method: 'GET', url: '/v1/migrations?active=true' })).json<{ migrations: MigrationOut[] }>();
    expect(active.migrations.map((m) => m.vmName)).toEqual(['big']);
    // Switching over: too late to cancel.
    const big = active.migrations[0]?.id ?? '';
    for (const phase of ['preparing', 'transferring', 'switching']) run({ type: 'migration.advance', id: big, phase });
    const late = await post(`/v1/migrations/${big}/cancel`);
    expect(late.statusCode).toBe(409);
    expect(late.json()).toMatchObject({ code: 'migration_transition_invalid' });
    expect((await post(`/v1/migrations/${id}/cancel`)).statusCode).toBe(409);
  });
});
