// Live migrations over REST, on every node: start one (POST /v1/vms/{id}/migrate, 202: the record is in Raft and the
// source node carries it out), list and show them with their progress, cancel one. Refusals that can be known before
// anything moves (no such node, no room there, the VM not running, one already migrating) are answered here.
import { randomUUID } from 'node:crypto';
import Type, { type Static } from 'typebox';
import {
  isMigrationActive,
  MigrationOptionsSchema,
  MigrationPhaseSchema,
  MigrationProgressSchema,
  migrationOptionsDefault,
  type ApplyResult,
  type ClusterCommand,
  type ClusterStateMachine,
  type Migration,
  type MigrationOptions,
  type Vm,
} from '../../../consensus/cluster/index.js';
import type { ViewEntry } from '../../../mesh/telemetry.js';
import { ConflictError, NotFoundError } from '../../errors.js';
import { placeVm } from '../../hypervisor/placement.js';
import { actorOf } from '../auth.js';
import { ReadQuerySchema } from '../consistency.js';
import type { Api } from '../server.js';
import { NoCapacityError, figuresFrom, findVm } from './vms.js';

const problemRef = { $ref: 'Problem#' } as const;
const authProblems = { 401: problemRef, 403: problemRef } as const;
/** Newest first; a list answer holds at most this many (the state keeps a bounded history anyway). */
export const migrationsListMax = 500;

export const MigrationSchema = Type.Object({
  id: Type.String(),
  vm: Type.String(),
  vmName: Type.Union([Type.String(), Type.Null()]),
  source: Type.String(),
  sourceName: Type.Union([Type.String(), Type.Null()]),
  target: Type.String(),
  targetName: Type.Union([Type.String(), Type.Null()]),
  options: MigrationOptionsSchema,
  phase: MigrationPhaseSchema,
  reason: Type.Union([Type.String(), Type.Null()]),
  progress: MigrationProgressSchema,
  createdAt: Type.Integer(),
  updatedAt: Type.Integer(),
  finishedAt: Type.Union([Type.Integer(), Type.Null()]),
});
export type MigrationOut = Static<typeof MigrationSchema>;

const MigrationAnswer = Type.Object({ migration: MigrationSchema });

export const MigrateBodySchema = Type.Object(
  {
    target: Type.String({ minLength: 1, maxLength: 128, description: 'Node id or name to move the VM to' }),
    options: Type.Optional(Type.Partial(MigrationOptionsSchema, { additionalProperties: false, description: 'Defaults: downtimeLimitMs 300, deadlineMs 600000, autoConverge true, postcopy false, no bandwidth cap, adaptive compression' })),
  },
  { additionalProperties: false },
);

export interface MigrationRouteDeps {
  cluster: { readonly state: ClusterStateMachine; propose(cmd: ClusterCommand): Promise<ApplyResult> };
  telemetry: () => readonly ViewEntry[];
}

export function migrationOut(m: Migration, state: ClusterStateMachine): MigrationOut {
  return {
    id: m.id,
    vm: m.vm,
    vmName: state.getVm(m.vm)?.name ?? null,
    source: m.source,
    sourceName: state.getMember(m.source)?.name ?? null,
    target: m.target,
    targetName: state.getMember(m.target)?.name ?? null,
    options: { ...m.options },
    phase: m.phase,
    reason: m.reason,
    progress: { ...m.progress },
    createdAt: m.createdAt,
    updatedAt: m.updatedAt,
    finishedAt: m.finishedAt,
  };
}

function findMigration(state: ClusterStateMachine, id: string): Migration {
  return state.getMigration(id) ?? (() => {
    throw new NotFoundError(`no migration ${id}`);
  })();
}

/** The VMs as placement should see them for `target`: VMs already migrating there count against its memory as if started. */
function withIncoming(state: ClusterStateMachine, target: string): Vm[] {
  const incoming = new Set(state.listMigrations().filter((m) => isMigrationActive(m) && m.target === target).map((m) => m.vm));
  return state.listVms().map((v) => (incoming.has(v.id) ? { ...v, owner: target, observed: null } : v));
}

export function registerMigrationRoutes(app: Api, deps: MigrationRouteDeps): void {
  const { cluster } = deps;
  const state = cluster.state;

  app.post(
    '/v1/vms/:id/migrate',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['migrations'],
        summary: 'Live-migrate a running VM, disks included, to another node; answered 202 once the migration record is applied (follow it at /v1/migrations/{id})',
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 128, description: 'VM id or name' }) }),
        body: MigrateBodySchema,
        response: { 202: MigrationAnswer, 400: problemRef, ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef, 504: problemRef },
      },
    },
    async (request, reply) => {
      const vm = findVm(state, request.params.id);
      const members = state.listMembers();
      const target = members.find((m) => m.id === request.body.target) ?? members.find((m) => m.name === request.body.target);
      if (target === undefined) throw new NotFoundError(`no member node ${request.body.target}`);
      if (vm.owner === null) throw new ConflictError(`VM ${vm.name} is not placed on any node`);
      if (vm.owner === target.id) throw new ConflictError(`VM ${vm.name} already runs on ${target.name}`);
      const observed = vm.observed?.state;
      // `migrating` lingers for a moment after an earlier migration ended; the source checks its QEMU again anyway.
      if (vm.desired === 'stopped' || (observed !== 'running' && observed !== 'paused' && observed !== 'migrating')) {
        throw new ConflictError(`VM ${vm.name} is not running (desired ${vm.desired}, observed ${observed ?? 'nothing yet'}): live migration moves running VMs`);
      }
      const active = state.listMigrations().find((m) => m.vm === vm.id && isMigrationActive(m));
      if (active !== undefined) throw new ConflictError(`VM ${vm.name} is already migrating (${active.id}, ${active.phase})`);
      const placed = placeVm({ members, figures: figuresFrom(deps.telemetry()), vms: withIncoming(state, target.id), spec: vm.spec, pinned: target.id });
      if (!placed.ok) throw placed.code === 'not_found' ? new NotFoundError(placed.reason) : new NoCapacityError(placed.reason);
      const options: MigrationOptions = { ...migrationOptionsDefault, ...request.body.options };
      const id = randomUUID();
      await cluster.propose({ type: 'migration.create', at: Date.now(), actor: actorOf(request), from: request.ip, id, vm: vm.id, target: target.id, options });
      request.log.info({ migrationId: id, vmId: vm.id, source: vm.owner, target: target.id, options }, 'migration requested');
      void reply.code(202);
      return { migration: migrationOut(findMigration(state, id), state) };
    },
  );

  app.get(
    '/v1/migrations',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['migrations'],
        summary: 'Migrations, newest first, with phase and progress',
        querystring: Type.Object(
          {
            ...ReadQuerySchema.properties,
            vm: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Only this VM (id or name)' })),
            active: Type.Optional(Type.Boolean({ description: 'Only migrations still in progress' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ migrations: Type.Array(MigrationSchema) }), 400: problemRef, ...authProblems, 404: problemRef, 503: problemRef },
      },
    },
    async (request) => {
      const vmId = request.query.vm === undefined ? null : findVm(state, request.query.vm).id;
      const list = state
        .listMigrations()
        .filter((m) => (vmId === null || m.vm === vmId) && (request.query.active !== true || isMigrationActive(m)))
        .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? -1 : 1))
        .slice(0, migrationsListMax);
      return { migrations: list.map((m) => migrationOut(m, state)) };
    },
  );

  app.get(
    '/v1/migrations/:id',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['migrations'],
        summary: 'One migration: phase, reason, and progress (bytes raw and on the wire, ratio, rates, dirty rate, remaining, expected and final downtime)',
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) }),
        querystring: ReadQuerySchema,
        response: { 200: MigrationAnswer, 400: problemRef, ...authProblems, 404: problemRef, 503: problemRef },
      },
    },
    async (request) => ({ migration: migrationOut(findMigration(state, request.params.id), state) }),
  );

  app.post(
    '/v1/migrations/:id/cancel',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['migrations'],
        summary: 'Cancel a migration before its switch-over; the VM keeps running on the source. 409 once it is switching over or finished',
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) }),
        response: { 200: MigrationAnswer, ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef, 504: problemRef },
      },
    },
    async (request) => {
      const m = findMigration(state, request.params.id);
      const actor = actorOf(request);
      await cluster.propose({ type: 'migration.advance', at: Date.now(), actor, from: request.ip, id: m.id, phase: 'cancelled', reason: `cancelled by ${actor.kind} ${actor.id}` });
      request.log.info({ migrationId: m.id, actor }, 'migration cancelled');
      return { migration: migrationOut(findMigration(state, m.id), state) };
    },
  );
}
