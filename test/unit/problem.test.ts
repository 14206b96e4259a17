// Proves the single error mapper: typed errors map to their status and problem+json, unknown errors become opaque 500s.
import { describe, expect, it } from 'vitest';
import { problemKinds, toProblem } from '../../node/api/problem.js';
import {
  ConflictError,
  ForbiddenError,
  InternalError,
  NotFoundError,
  NotReadyError,
  NovaError,
  QemuUnsupportedError,
  UnauthorizedError,
  ValidationError,
} from '../../node/errors.js';

describe('toProblem', () => {
  it.each([
    [new ValidationError('bad'), 400, 'validation_failed'],
    [new UnauthorizedError('who'), 401, 'unauthorized'],
    [new ForbiddenError('no'), 403, 'forbidden'],
    [new NotFoundError('gone'), 404, 'not_found'],
    [new ConflictError('taken'), 409, 'conflict'],
    [new NotReadyError('starting'), 503, 'not_ready'],
    [new QemuUnsupportedError('old'), 503, 'qemu_unsupported'],
    [new InternalError('oops'), 500, 'internal'],
  ])('maps %s', (err, status, code) => {
    const { problem } = toProblem(err, '/v1/x');
    expect(problem).toMatchObject({ status, code, type: `urn:novacron:problem:${code}`, detail: err.message, instance: '/v1/x' });
    expect(problem.title).toBe(problemKinds[code]?.title);
  });

  it('gives every error class its own name', () => {
    expect(new NotFoundError('x').name).toBe('NotFoundError');
    expect(new QemuUnsupportedError('x').name).toBe('QemuUnsupportedError');
  });

  it('maps coded errors from other modules by their code', () => {
    const err = Object.assign(new Error('term moved on'), { code: 'conflict' });
    expect(toProblem(err).problem.status).toBe(409);
  });

  it('carries error details as extension members without letting them override the standard ones', () => {
    const err = new NovaError('conflict', 'name taken', { details: { name: 'web', status: 200, code: 'x' } });
    const { problem } = toProblem(err);
    expect(problem.name).toBe('web');
    expect(problem.status).toBe(409);
    expect(problem.code).toBe('conflict');
  });

  it('turns Fastify validation errors into field errors', () => {
    const err = Object.assign(new Error('body/x must be integer'), {
      validationContext: 'body',
      validation: [
        { instancePath: '/memoryMiB', keyword: 'type', message: 'must be integer', params: {} },
        { instancePath: '', keyword: 'additionalProperties', message: 'must NOT have additional properties', params: { additionalProperty: 'colour' } },
        { instancePath: '', keyword: 'required', message: "must have required property 'name'", params: { missingProperty: 'name' } },
      ],
    });
    const { problem, unexpected } = toProblem(err);
    expect(unexpected).toBe(false);
    expect(problem.status).toBe(400);
    expect(problem.errors).toEqual([
      { path: 'body/memoryMiB', message: 'must be integer' },
      { path: 'body/colour', message: 'unknown field' },
      { path: 'body/name', message: 'is required' },
    ]);
  });

  it('keeps Fastify client errors as 4xx', () => {
    const tooLarge = Object.assign(new Error('Request body is too large'), { statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' });
    expect(toProblem(tooLarge).problem).toMatchObject({ status: 413, code: 'payload_too_large' });
    const badJson = Object.assign(new Error('Unexpected token'), { statusCode: 400, code: 'FST_ERR_CTP_INVALID_JSON_BODY' });
    expect(toProblem(badJson).problem).toMatchObject({ status: 400, code: 'bad_request' });
  });

  it('hides the message of unexpected errors and flags them for logging', () => {
    const { problem, unexpected } = toProblem(new TypeError('secret path /etc/shadow'));
    expect(unexpected).toBe(true);
    expect(problem.status).toBe(500);
    expect(problem.detail).not.toMatch(/shadow/);
    const sys = Object.assign(new Error('ENOENT: /data/x'), { code: 'ENOENT' });
    expect(toProblem(sys).problem.status).toBe(500);
  });
});
