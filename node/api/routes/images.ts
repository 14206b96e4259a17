// Images over REST: the replicated list (which nodes hold each image), raw uploads streamed into this node's store
// (hashed while written, never buffered), imports of a file on this node, pre-fetching an image from the peers
// that hold it, and deletes (this node's copy, or cluster-wide for admins).
import type { Readable } from 'node:stream';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Type, { type Static } from 'typebox';
import type { Image } from '../../../consensus/cluster/index.js';
import { ForbiddenError, ValidationError } from '../../errors.js';
import type { LocalImage } from '../../hypervisor/image-types.js';
import { imageBytesMax, imageFormatHints, imageNameCharsMax, ImageNotFoundError, type ImageFormatHint, type ImageStore } from '../../hypervisor/images.js';
import { actorOf, roleSatisfies } from '../auth.js';
import { ReadQuerySchema } from '../consistency.js';
import type { Api } from '../server.js';

const problemRef = { $ref: 'Problem#' } as const;
const authProblems = { 401: problemRef, 403: problemRef } as const;

/** Upload progress goes to the log at most this often. */
export const uploadLogIntervalMs = 5_000;

const Sha256Param = Type.String({ pattern: '^[0-9a-f]{64}$', description: 'Hex SHA-256 of the content (the image id)' });
const FormatSchema = Type.Union(
  imageFormatHints.map((f) => Type.Literal(f)),
  { description: 'raw or qcow2 (checked with qemu-img), or kernel/initrd for boot files (stored as is)' },
);

export const ImageSchema = Type.Object({
  id: Type.String({ description: 'Hex SHA-256 of the content' }),
  name: Type.String(),
  sizeBytes: Type.Integer(),
  nodes: Type.Array(Type.String(), { description: 'Nodes holding a copy' }),
  addedAt: Type.Union([Type.Integer(), Type.Null()], { description: 'ms since the epoch; null when the cluster has no record' }),
  format: Type.Union([Type.String(), Type.Null()], { description: 'Format of the copy on the answering node; null when it holds none' }),
  local: Type.Boolean({ description: 'The answering node holds a copy' }),
});

type ImageOut = Static<typeof ImageSchema>;

const ImageIdParams = Type.Object({ id: Sha256Param });

export interface ImageRouteDeps {
  images: ImageStore;
  cluster: { state: { listImages(): readonly Image[]; getImage(id: string): Image | null } };
}

function imageOut(record: Image | null, local: LocalImage | null, id: string): ImageOut {
  return {
    id,
    name: record?.name ?? local?.name ?? id,
    sizeBytes: record?.sizeBytes ?? local?.sizeBytes ?? 0,
    nodes: [...(record?.nodes ?? [])],
    addedAt: record?.addedAt ?? null,
    format: local?.format ?? null,
    local: local !== null,
  };
}

export function registerImageRoutes(app: Api, { images, cluster }: ImageRouteDeps): void {
  const describe = async (id: string): Promise<ImageOut> => {
    const record = cluster.state.getImage(id);
    const local = await images.get(id);
    if (record === null && local === null) throw new ImageNotFoundError(id, 'in the cluster or on this node');
    return imageOut(record, local, id);
  };

  app.get(
    '/v1/images',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['images'],
        summary: 'Every image the cluster knows, with the nodes that hold it (and copies only this node has)',
        querystring: ReadQuerySchema,
        response: { 200: Type.Object({ images: Type.Array(ImageSchema) }), 400: problemRef, ...authProblems, 503: problemRef },
      },
    },
    async () => {
      const locals = new Map((await images.list()).map((i) => [i.id, i]));
      const out = cluster.state.listImages().map((r) => imageOut(r, locals.get(r.id) ?? null, r.id));
      for (const l of locals.values()) if (cluster.state.getImage(l.id) === null) out.push(imageOut(null, l, l.id));
      return { images: out };
    },
  );

  app.get(
    '/v1/images/:id',
    {
      config: { auth: 'viewer', read: true },
      schema: {
        tags: ['images'],
        summary: 'One image by id',
        params: ImageIdParams,
        querystring: ReadQuerySchema,
        response: { 200: Type.Object({ image: ImageSchema }), 400: problemRef, ...authProblems, 404: problemRef, 503: problemRef },
      },
    },
    async (request) => ({ image: await describe(request.params.id) }),
  );

  // Uploads get the raw request stream: a scope of their own, so no other route accepts octet-stream bodies.
  void app.register(async (plain) => {
    const scope = plain.withTypeProvider<TypeBoxTypeProvider>();
    scope.addContentTypeParser('application/octet-stream', (_request, payload, done) => done(null, payload));
    scope.post(
      '/v1/images',
      {
        config: { auth: 'operator' },
        bodyLimit: imageBytesMax,
        schema: {
          tags: ['images'],
          summary: 'Upload an image: the body is its bytes (application/octet-stream), hashed while stored; with sha256 a mismatch keeps nothing',
          querystring: Type.Object(
            {
              name: Type.String({ minLength: 1, maxLength: imageNameCharsMax }),
              sha256: Type.Optional(Sha256Param),
              format: Type.Optional(FormatSchema),
            },
            { additionalProperties: false },
          ),
          response: { 201: Type.Object({ image: ImageSchema }), 400: problemRef, ...authProblems, 409: problemRef, 413: problemRef, 415: problemRef, 503: problemRef, 507: problemRef },
        },
      },
      async (request, reply) => {
        const body = request.body as Readable | undefined; // set by the octet-stream parser above
        if (body === undefined || typeof (body as Partial<Readable>).pipe !== 'function') throw new ValidationError('send the image bytes as application/octet-stream');
        const declared = Number(request.headers['content-length']);
        const sizeHint = Number.isSafeInteger(declared) && declared > 0 ? declared : undefined;
        const { name, sha256, format } = request.query;
        request.log.info({ name, sizeBytes: sizeHint ?? null }, 'image upload started');
        let lastLog = Date.now();
        const image = await images.importStream(body, {
          name,
          ...(sha256 === undefined ? {} : { sha256 }),
          ...(format === undefined ? {} : { format }),
          ...(sizeHint === undefined ? {} : { sizeBytesHint: sizeHint }),
          origin: { actor: actorOf(request), from: request.ip },
          onProgress: (p) => {
            if (Date.now() - lastLog < uploadLogIntervalMs) return;
            lastLog = Date.now();
            request.log.info({ name, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal }, 'image upload progress');
          },
        });
        void reply.code(201);
        return { image: await describe(image.id) };
      },
    );
  });

  app.post(
    '/v1/images/import',
    {
      config: { auth: 'admin' },
      schema: {
        tags: ['images'],
        summary: 'Import a file from the answering node\'s own file system (copied into the store)',
        body: Type.Object(
          {
            path: Type.String({ minLength: 1, maxLength: 4096, description: 'Absolute path on the answering node' }),
            name: Type.Optional(Type.String({ minLength: 1, maxLength: imageNameCharsMax, description: 'Default: the file name' })),
            format: Type.Optional(FormatSchema),
          },
          { additionalProperties: false },
        ),
        response: { 201: Type.Object({ image: ImageSchema }), 400: problemRef, ...authProblems, 409: problemRef, 413: problemRef, 503: problemRef, 507: problemRef },
      },
    },
    async (request, reply) => {
      const { path, name, format } = request.body;
      const image = await images.importFile(path, {
        ...(name === undefined ? {} : { name }),
        ...(format === undefined ? {} : { format: format as ImageFormatHint }),
        origin: { actor: actorOf(request), from: request.ip },
      });
      void reply.code(201);
      return { image: await describe(image.id) };
    },
  );

  app.post(
    '/v1/images/:id/fetch',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['images'],
        summary: 'Make sure the answering node holds the image: fetched from a node that holds it (hash verified) when it lacks it',
        params: ImageIdParams,
        response: { 200: Type.Object({ image: ImageSchema }), 400: problemRef, ...authProblems, 404: problemRef, 409: problemRef, 502: problemRef, 503: problemRef, 507: problemRef },
      },
    },
    async (request) => {
      const { id } = request.params;
      let lastLog = Date.now();
      await images.ensure(id, (p) => {
        if (Date.now() - lastLog < uploadLogIntervalMs) return;
        lastLog = Date.now();
        request.log.info({ image: id, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal }, 'image fetch progress');
      });
      return { image: await describe(id) };
    },
  );

  app.delete(
    '/v1/images/:id',
    {
      config: { auth: 'operator' },
      schema: {
        tags: ['images'],
        summary: 'Delete the answering node\'s copy; with everywhere=true (admin) the cluster forgets the image (refused while a VM uses it)',
        params: ImageIdParams,
        querystring: Type.Object(
          { everywhere: Type.Optional(Type.Boolean({ default: false, description: 'Forget the image cluster-wide (admin)' })) },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ image: ImageSchema }), 400: problemRef, ...authProblems, 404: problemRef, 409: problemRef, 503: problemRef },
      },
    },
    async (request) => {
      const { id } = request.params;
      const everywhere = request.query.everywhere === true;
      const p = request.principal;
      if (everywhere && p?.kind === 'token' && !roleSatisfies(p.role, 'admin')) {
        throw new ForbiddenError(`token "${p.name}" has role ${p.role}; deleting an image everywhere needs admin`, { details: { role: p.role, required: 'admin' } });
      }
      const before = await describe(id);
      await images.delete(id, { everywhere, origin: { actor: actorOf(request), from: request.ip } });
      const after = cluster.state.getImage(id);
      return { image: { ...before, nodes: [...(after?.nodes ?? [])], local: false, format: null } };
    },
  );
}
