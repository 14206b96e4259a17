// VMs over REST, on every node: create (placed on a node by placeVm, or on the one asked for), list/show by id or
// name, power actions that set the desired state through Raft (answered once applied here; the owner's agent then
// acts), restart (a guest reset done by the owner), delete, and the owner-only reads (console tail, stats), which a
// node that is not the owner fetches from it over the mesh (/novacron/vm/1.0.0).
import { randomUUID } from 'node:crypto';
import { isAbsolute } from 'node:path';
import Type, { type Static } from 'typebox';
import { NameSchema, ObservedStateSchema, PowerStateSchema, VmSpecSchema, isImageRef, type ApplyResult, type ClusterCommand, type ClusterStateMachine, type PowerState, type Vm, type VmSpec } from '../../../consensus/cluster/index.js';
import type { ViewEntry } from '../../../mesh/telemetry.js';
import { NotFoundError, NovaError, ValidationError } from '../../errors.js';
import { consoleTailLinesMax } from '../../agent/agent.js';
import type { VmOwnerClient } from '../../agent/vm-protocol.js';
import type { DemoGuestImport } from '../../hypervisor/demo-images.js';
import { placeVm, type NodeFigures } from '../../hypervisor/placement.js';
import { VmNotRunningError } from '../../hypervisor/qemu.js';
import { actorOf } from '../auth.js';
import { ReadQuerySchema } from '../consistency.js';
import type { Api } from '../server.js';

const problemRef = { $ref: 'Problem#' } as const;
const authProblems = { 401: problemRef, 403: problemRef } as const;
/** Answers of calls served by the VM's owner node: it may be unknown (404), not running (409), unreachable or failing (502-504). */
const ownerProblems = { ...authProblems, 404: problemRef, 409: problemRef, 502: problemRef, 503: problemRef, 504: problemRef } as const;

/** Console lines returned when the caller does not say. */
export const consoleTailDefault = 50;
/** The default NIC of a VM created without `nics`: virtio with user-mode networking. */
export const nicDefault = { model: 'virtio-net-pci' } as const;

export class NoCapacityError extends NovaError {
  constructor(message: string) {
    super('no_capacity', message);
  }
}

export const VmSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  spec: VmSpecSchema,
  desired: PowerStateSchema,
  owner: Type.Union([Type.String(), Type.Null()], { description: 'Node id of the node that runs it' }),
  ownerName: Type.Union([Type.String(), Type.Null()]),
  observed: Type.Union([Type.Object({ state: ObservedStateSchema, reason: Type.String(), at: Type.Integer() }), Type.Null()], {
    description: 'What the owner\'s agent last reported (null until it did)',
  }),
  createdAt: Type.Integer(),
  updatedAt: Type.Integer(),
  version: Type.Integer(),
});
export type VmOut = Static<typeof VmSchema>;

const CreateSpecSchema = Type.Object(
  {
    ...VmSpecSchema.properties,
    disks: Type.Optional(VmSpecSchema.properties.disks),
    nics: Type.Optional({ ...VmSpecSchema.properties.nics, description: 'Default: one virtio NIC with user-mode networking' }),
  },
  { additionalProperties: false },
);

export const VmCreateBodySchema = Type.Object(
  {
    name: NameSchema,
    spec: CreateSpecSchema,
    desired: Type.Optional(PowerStateSchema),
    node: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Node id or name to run it on; default: the node with the most free memory that fits' })),
  },
  { additionalProperties: false },
);

const VmRefParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128, description: 'VM id or name' }) });
const VmAnswer = Type.Object({ vm: VmSchema });

export interface VmRouteDeps {
  cluster: { readonly state: ClusterStateMachine; propose(cmd: ClusterCommand): Promise<ApplyResult> };
  /** The latest telemetry of every node (the mesh's cluster view). */
  telemetry: () => readonly ViewEntry[];
  owner: VmOwnerClient;
  /** Builds the demo guest and imports it into this node's image store; absent when the node has no image store. */
  importDemoGuest?: () => Promise<DemoGuestImport>;
}

function vmOut(vm: Vm, state: ClusterStateMachine): VmOut {
  const spec = JSON.parse(JSON.stringify(vm.spec)) as VmSpec;
  return {
    id: vm.id,
    name: vm.name,
    spec,
    desired: vm.desired,
    owner: vm.owner,
    ownerName: vm.owner === null ? null : (state.getMember(vm.owner)?.name ?? null),
    observed: vm.observed === null ? null : { ...vm.observed },
    createdAt: vm.createdAt,
    updatedAt: vm.updatedAt,
    version: vm.version,
  };
}

/** A VM by id or name. */
export function findVm(state: ClusterStateMachine, ref: string): Vm {
  const vm = state.getVm(ref) ?? state.getVmByName(ref);
  if (vm === null) throw new NotFoundError(`no VM ${ref}`);
  return vm;
}

export function figuresFrom(view: readonly ViewEntry[]): Map<string, NodeFigures> {
  return new Map(
    view.map((e) => [
      e.nodeId,
      { cores: e.sample.cpu.cores, memoryAvailableBytes: e.sample.memory.availableBytes, memoryTotalBytes: e.sample.memory.totalBytes, reachable: e.status === 'reachable' },
    ]),
  );
}

/** Everything about a spec that the schema cannot say: images must exist, boot files are image ids or absolute paths. */
function checkSpecRefs(spec: VmSpec, state: ClusterStateMachine): void {
  for (const [i, d] of spec.disks.entries()) {
    if (d.imageId !== undefined && state.getImage(d.imageId) === null) throw new NotFoundError(`unknown image ${d.imageId} (disk ${i})`);
  }
  for (const [what, ref] of [['kernel', spec.kernel], ['initrd', spec.initrd]] as const) {
    if (ref === undefined) continue;
    if (isImageRef(ref)) {
      if (state.getImage(ref) === null) throw new NotFoundError(`unknown image ${ref} (${what})`);
    } else if (!isAbsolute(ref)) {
      throw new ValidationError(`${what} must be an image id (hex SHA-256) or an absolute path on the owner node, got ${JSON.stringify(ref)}`);
    }
  }
  if (spec.initrd !== undefined && spec.kernel === undefined) throw new ValidationError('an initrd needs a kernel');
  if (spec.cmdline !== undefined && spec.kernel === undefined) throw new ValidationError('a kernel command line needs a kernel');
}

export function registerVmRoutes(app: Api, deps: VmRouteDeps): void {
  const { cluster } = deps;
  const state = cluster.state;

  const setDesired = async (ref: string, desired: PowerState, origin: { actor: ReturnType<typeof actorOf>; from: string }): Promise<VmOut> => {
    const vm = findVm(state, ref);
    await cluster.propose({ type: 'vm.setDesired', at: Date.now(), actor: origin.actor, from: origin.from, id: vm.id, desired });
    return vmOut(findVm(state, vm.id), state);
  };

  const owned = (ref: string): Vm & { owner: string } => {
    const vm = findVm(state, ref);
    if (vm.owner === null) throw new VmNotRunningError(`VM ${vm.name} is not placed on any node`);
    return vm as Vm & { owner: string };
  };

  app.post(
    '/v1/vms',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['vms'],
        summary: 'Create a VM: placed on the node asked for, or on the member with the most free memory that fits; answered once applied',
        body: VmCreateBodySchema,
        response: { 201: VmAnswer, 400: problemRef, ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef, 504: problemRef },
      },
    },
    async (request, reply) => {
      const body = request.body;
      const spec: VmSpec = { ...body.spec, disks: body.spec.disks ?? [], nics: body.spec.nics ?? [{ ...nicDefault }] };
      // Checked here, before placement, so the client hears the real problem (the state machine checks again at apply).
      if (state.getVmByName(body.name) !== null) throw new NovaError('already_exists', `a VM is already named ${body.name}`);
      checkSpecRefs(spec, state);
      const placed = placeVm({ members: state.listMembers(), figures: figuresFrom(deps.telemetry()), vms: state.listVms(), spec, pinned: body.node });
      if (!placed.ok) throw placed.code === 'not_found' ? new NotFoundError(placed.reason) : new NoCapacityError(placed.reason);
      const id = randomUUID();
      await cluster.propose({
        type: 'vm.create',
        at: Date.now(),
        actor: actorOf(request),
        from: request.ip,
        id,
        name: body.name,
        spec,
        desired: body.desired ?? 'running',
        owner: placed.node,
      });
      void reply.code(201);
      return { vm: vmOut(findVm(state, id), state) };
    },
  );

  app.get(
    '/v1/vms',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['vms'],
        summary: 'Every VM with its desired and observed state and its owner node',
        querystring: ReadQuerySchema,
        response: { 200: Type.Object({ vms: Type.Array(VmSchema) }), 400: problemRef, ...authProblems, 503: problemRef },
      },
    },
    async () => ({ vms: state.listVms().map((v) => vmOut(v, state)) }),
  );

  app.get(
    '/v1/vms/:id',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['vms'],
        summary: 'One VM, by id or name',
        params: VmRefParams,
        querystring: ReadQuerySchema,
        response: { 200: VmAnswer, 400: problemRef, ...authProblems, 404: problemRef, 503: problemRef },
      },
    },
    async (request) => ({ vm: vmOut(findVm(state, request.params.id), state) }),
  );

  const actions: Array<[string, PowerState, string]> = [
    ['start', 'running', 'Start the VM (desired running; also resumes a paused one and retries one in error)'],
    ['stop', 'stopped', 'Stop the VM (desired stopped: ACPI shutdown, then forced after a deadline)'],
    ['pause', 'paused', 'Pause the VM\'s vCPUs (desired paused)'],
    ['resume', 'running', 'Resume a paused VM (desired running)'],
  ];
  for (const [action, desired, summary] of actions) {
    app.post(
      `/v1/vms/:id/${action}`,
      {
        config: { auth: 'operator' },
        schema: {
          tags: ['vms'],
          summary: `${summary}; answered once the desired state is applied on this node, the owner's agent then acts`,
          params: VmRefParams,
          response: { 200: VmAnswer, ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef, 504: problemRef },
        },
      },
      async (request) => ({ vm: await setDesired(request.params.id, desired, { actor: actorOf(request), from: request.ip }) }),
    );
  }

  app.post(
    '/v1/vms/:id/restart',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['vms'],
        summary: 'Reset the guest (like the reset button) on its owner node; the VM keeps its QEMU process. Refused unless it runs',
        params: VmRefParams,
        response: { 200: VmAnswer, ...ownerProblems },
      },
    },
    async (request) => {
      const vm = owned(request.params.id);
      if (vm.desired === 'stopped') throw new VmNotRunningError(`VM ${vm.name} is stopped: start it instead`);
      await deps.owner.restart(vm.owner, vm.id);
      request.log.info({ vmId: vm.id, owner: vm.owner, actor: actorOf(request) }, 'VM restarted');
      return { vm: vmOut(findVm(state, vm.id), state) };
    },
  );

  app.delete(
    '/v1/vms/:id',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['vms'],
        summary: 'Delete a VM: desired stopped, then removed from the cluster state; its owner kills QEMU and deletes its disks',
        params: VmRefParams,
        response: { 200: VmAnswer, ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef, 504: problemRef },
      },
    },
    async (request) => {
      const origin = { actor: actorOf(request), from: request.ip };
      const vm = findVm(state, request.params.id);
      if (vm.desired !== 'stopped') await cluster.propose({ type: 'vm.setDesired', at: Date.now(), ...origin, id: vm.id, desired: 'stopped' });
      const last = findVm(state, vm.id);
      await cluster.propose({ type: 'vm.delete', at: Date.now(), ...origin, id: vm.id });
      return { vm: vmOut(last, state) };
    },
  );

  app.get(
    '/v1/vms/:id/console',
    {
      config: { auth: 'viewer' },
      schema: {
        tags: ['vms'],
        summary: 'The last lines of the VM\'s serial console log, served by its owner node (fetched over the mesh when that is another node)',
        params: VmRefParams,
        querystring: Type.Object(
          { tail: Type.Optional(Type.Integer({ minimum: 1, maximum: consoleTailLinesMax, default: consoleTailDefault })) },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ vmId: Type.String(), node: Type.String(), lines: Type.Array(Type.String()) }),
          400: problemRef,
          ...ownerProblems,
        },
      },
    },
    async (request) => {
      const vm = owned(request.params.id);
      const lines = await deps.owner.console(vm.owner, vm.id, request.query.tail ?? consoleTailDefault);
      return { vmId: vm.id, node: vm.owner, lines };
    },
  );

  app.get(
    '/v1/vms/:id/stats',
    {
      config: { auth: 'viewer' },
      schema: {
        tags: ['vms'],
        summary: 'CPU time, memory, block and network counters of a running VM, from its owner node',
        params: VmRefParams,
        response: {
          200: Type.Object({
            vmId: Type.String(),
            node: Type.String(),
            stats: Type.Object({
              atMs: Type.Integer(),
              cpuTimeMs: Type.Number(),
              memory: Type.Object({ configuredBytes: Type.Number(), rssBytes: Type.Number() }),
              block: Type.Array(Type.Object({ device: Type.String(), rdBytes: Type.Number(), wrBytes: Type.Number(), rdOps: Type.Number(), wrOps: Type.Number() })),
              net: Type.Array(
                Type.Object({
                  nic: Type.String(),
                  mode: Type.String(),
                  ifname: Type.Optional(Type.String()),
                  rxBytes: Type.Union([Type.Number(), Type.Null()]),
                  txBytes: Type.Union([Type.Number(), Type.Null()]),
                  rxPackets: Type.Union([Type.Number(), Type.Null()]),
                  txPackets: Type.Union([Type.Number(), Type.Null()]),
                }),
              ),
            }),
          }),
          ...ownerProblems,
        },
      },
    },
    async (request) => {
      const vm = owned(request.params.id);
      const stats = await deps.owner.stats(vm.owner, vm.id);
      return { vmId: vm.id, node: vm.owner, stats };
    },
  );

  app.post(
    '/v1/demo-guest/import',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['vms'],
        summary: 'Build the demo guest if needed, import its kernel, initrd and data disk as images on this node, and return a VM spec that boots it',
        response: {
          200: Type.Object({
            spec: VmSpecSchema,
            images: Type.Object({ kernel: Type.String(), initrd: Type.String(), dataDisk: Type.String() }),
            kernelVersion: Type.String(),
          }),
          ...authProblems,
          500: problemRef,
          503: problemRef,
        },
      },
    },
    async () => {
      if (deps.importDemoGuest === undefined) throw new NovaError('not_ready', 'this node has no image store to import the demo guest into');
      return deps.importDemoGuest();
    },
  );
}
