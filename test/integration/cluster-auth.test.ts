// Proves bearer-token auth on a real node process: before `cluster init` loopback callers need no token; after
// it, missing/wrong/revoked tokens get 401 and too weak roles 403 (problem+json; CLI exit 4); an admin creates
// viewer and operator tokens (secret once, no-store), lists (no secrets) and revokes them; the last admin
// token cannot be revoked; /v1/audit records token.create/token.revoke (and the refused revoke) with actor and client address; malformed
// bodies and queries get 400 problem+json.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditRecordOut } from '../../node/cli/commands/token.js';
import { runCli, spawnCli, waitForLog } from '../support/proc.js';

interface TokenOut {
  id: string;
  name: string;
  role: string;
  createdAt: number;
  revokedAt: number | null;
}
type AuditRecord = AuditRecordOut;

let child: ChildProcess;
let dataDir: string;
let url: string;
let admin: string;
let adminId: string;

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'nc-auth-'));
  child = spawnCli(['node', 'start', '--data-dir', dataDir, '--api-host', '127.0.0.1', '--api-port', '0', '--name', 'auth-1']);
  url = (await waitForLog(child, (r) => r.msg === 'node started')).api as string;
}, 30_000);

afterAll(() => {
  if (child.exitCode === null) child.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
});

function req(path: string, init: { method?: string; token?: string; body?: string } = {}): Promise<Response> {
  const headers: Record<string, string> = {};
  if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`;
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  return fetch(`${url}${path}`, { method: init.method ?? 'GET', headers, body: init.body ?? null });
}

async function expectProblem(res: Response, status: number, code: string): Promise<Record<string, unknown>> {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
  const body = (await res.json()) as Record<string, unknown>;
  expect(body).toMatchObject({ status, code, type: `urn:novacron:problem:${code}` });
  return body;
}

async function createToken(token: string, name: string, role: string): Promise<{ token: TokenOut; secret: string }> {
  const res = await req('/v1/tokens', { method: 'POST', token, body: JSON.stringify({ name, role }) });
  expect(res.status).toBe(201);
  expect(res.headers.get('cache-control')).toBe('no-store');
  return (await res.json()) as { token: TokenOut; secret: string };
}

describe('bearer-token auth on a node process', () => {
  it('serves loopback callers without a token while the node has no cluster', async () => {
    const res = await req('/v1/cluster/status');
    expect(res.status).toBe(200);
    expect(((await res.json()) as { initialised: boolean }).initialised).toBe(false);
    expect((await req('/v1/mesh/status')).status).toBe(200);

    const init = await runCli(['cluster', 'init', '--api', url, '--json']);
    expect(init.code, init.stderr).toBe(0);
    ({ adminToken: admin, adminTokenId: adminId } = JSON.parse(init.stdout) as { adminToken: string; adminTokenId: string });
  }, 30_000);

  it('refuses missing and wrong tokens with 401 and keeps public routes open', async () => {
    const missing = await req('/v1/cluster/status');
    expect(missing.headers.get('www-authenticate')).toMatch(/^Bearer/);
    await expectProblem(missing, 401, 'unauthorized');
    await expectProblem(await req('/v1/cluster/status', { token: 'ncapi_wrong' }), 401, 'unauthorized');
    await expectProblem(await req('/v1/mesh/status'), 401, 'unauthorized');
    await expectProblem(await req('/v1/tokens', { method: 'POST', body: '{"name":"x","role":"admin"}' }), 401, 'unauthorized');
    for (const path of ['/healthz', '/v1/version', '/v1/openapi.json', '/metrics']) expect((await req(path)).status, path).toBe(200);
    expect((await req('/v1/cluster/status', { token: admin })).status).toBe(200);

    const cli = await runCli(['cluster', 'status', '--api', url, '--json']);
    expect(cli.code).toBe(4);
    expect(JSON.parse(cli.stderr)).toMatchObject({ error: { code: 'unauthorized', status: 401 } });
    const wrong = await runCli(['token', 'list', '--api', url, '--json'], { env: { NOVACRON_TOKEN: 'ncapi_wrong' } });
    expect(wrong.code).toBe(4);
  });

  it('enforces roles: viewer reads, operator reads the audit, only admin manages tokens', async () => {
    const viewer = await createToken(admin, 'dashboard', 'viewer');
    expect(viewer.secret).toMatch(/^ncapi_[A-Za-z0-9_-]{43}$/);
    expect(viewer.token).toMatchObject({ name: 'dashboard', role: 'viewer', revokedAt: null });

    const op = await runCli(['token', 'create', '--name', 'ops-bot', '--role', 'operator', '--api', url, '--json'], { env: { NOVACRON_TOKEN: admin } });
    expect(op.code, op.stderr).toBe(0);
    const operator = JSON.parse(op.stdout) as { token: TokenOut; secret: string };
    expect(operator.secret).toMatch(/^ncapi_/);

    expect((await req('/v1/cluster/status', { token: viewer.secret })).status).toBe(200);
    expect((await req('/v1/cluster/status', { token: operator.secret })).status).toBe(200);
    const body = JSON.stringify({ name: 'x', role: 'viewer' });
    await expectProblem(await req('/v1/tokens', { method: 'POST', token: viewer.secret, body }), 403, 'forbidden');
    await expectProblem(await req('/v1/tokens', { method: 'POST', token: operator.secret, body }), 403, 'forbidden');
    await expectProblem(await req('/v1/tokens', { token: operator.secret }), 403, 'forbidden');
    await expectProblem(await req('/v1/audit', { token: viewer.secret }), 403, 'forbidden');
    expect((await req('/v1/audit', { token: operator.secret })).status).toBe(200);

    const denied = await runCli(['token', 'create', '--name', 'x', '--role', 'viewer', '--api', url, '--json', '--token', viewer.secret]);
    expect(denied.code).toBe(4);
    expect(JSON.parse(denied.stderr)).toMatchObject({ error: { code: 'forbidden', status: 403 } });

    // Lists never carry secrets or hashes.
    const listRes = await req('/v1/tokens', { token: admin });
    const listText = await listRes.text();
    for (const secret of [admin, viewer.secret, operator.secret]) expect(listText).not.toContain(secret);
    expect(listText).not.toMatch(/secretHash|[0-9a-f]{64}/);
    const list = JSON.parse(listText) as { tokens: TokenOut[] };
    expect(list.tokens.map((t) => [t.name, t.role]).sort()).toEqual([['dashboard', 'viewer'], ['initial-admin', 'admin'], ['ops-bot', 'operator']]);
    const human = await runCli(['token', 'list', '--api', url, '--token', admin]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^ID\s+NAME\s+ROLE/m);
    expect(human.stdout).toMatch(/dashboard\s+viewer/);

    // Revoke the viewer token with the CLI: its next request is refused.
    const revoke = await runCli(['token', 'revoke', viewer.token.id, '--api', url, '--token', admin]);
    expect(revoke.code, revoke.stderr).toBe(0);
    expect(revoke.stdout).toMatch(/revoked token/);
    await expectProblem(await req('/v1/cluster/status', { token: viewer.secret }), 401, 'unauthorized');
    const after = await runCli(['cluster', 'status', '--api', url, '--token', viewer.secret]);
    expect(after.code).toBe(4);

    // The last admin token cannot be revoked; unknown ids are 404.
    const last = await expectProblem(await req(`/v1/tokens/${adminId}`, { method: 'DELETE', token: admin }), 409, 'conflict');
    expect(String(last.detail)).toMatch(/last admin token/);
    await expectProblem(await req('/v1/tokens/no-such-token', { method: 'DELETE', token: admin }), 404, 'not_found');

    // The audit log: who (token id and name), what, when, from which address.
    const audit = await runCli(['audit', '--api', url, '--json', '--token', operator.secret]);
    expect(audit.code, audit.stderr).toBe(0);
    const page = JSON.parse(audit.stdout) as { records: AuditRecord[]; firstSeq: number; nextSeq: number };
    expect(page.records.map((r) => r.action)).toEqual(['cluster.init', 'token.create', 'token.create', 'token.revoke', 'token.revoke']);
    const [, createdViewer, createdOp, revoked, refused] = page.records;
    // The refused revoke of the last admin token reached the log, so it is on record too (unknown ids never do).
    expect(refused).toMatchObject({ action: 'token.revoke', target: adminId, outcome: 'refused', error: 'conflict', actor: { id: adminId } });
    for (const r of [createdViewer, createdOp, revoked]) {
      expect(r).toMatchObject({ actor: { kind: 'token', id: adminId, name: 'initial-admin' }, from: '127.0.0.1', outcome: 'ok' });
      expect(r?.at).toBeGreaterThan(Date.now() - 60_000);
    }
    expect(createdViewer?.target).toBe(viewer.token.id);
    expect(createdOp?.target).toBe(operator.token.id);
    expect(revoked?.target).toBe(viewer.token.id);
    const paged = await runCli(['audit', '--after', '2', '--limit', '1', '--api', url, '--json', '--token', admin]);
    expect((JSON.parse(paged.stdout) as { records: AuditRecord[] }).records.map((r) => r.seq)).toEqual([3]);
    const humanAudit = await runCli(['audit', '--limit', '2', '--api', url, '--token', admin]);
    expect(humanAudit.code).toBe(0);
    expect(humanAudit.stdout).toMatch(/^SEQ\s+WHEN\s+WHO\s+ACTION/m);
    expect(humanAudit.stdout).toMatch(/token\.create/);
    expect(humanAudit.stdout).toMatch(/\(more: --after 2\)/);
  }, 60_000);

  it('refuses malformed bodies and queries with 400 problem+json', async () => {
    for (const body of ['{"name":"x"}', '{"name":"x","role":"root"}', '{"name":"x","role":"viewer","extra":1}', '{"name":"","role":"viewer"}', '{"name":"x","role":"viewer"', '[]']) {
      const res = await req('/v1/tokens', { method: 'POST', token: admin, body });
      expect(res.status, body).toBe(400);
      expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
    }
    for (const q of ['limit=0', 'limit=100000', 'after=-1', 'bogus=1', 'limit=abc']) {
      expect((await req(`/v1/audit?${q}`, { token: admin })).status, q).toBe(400);
    }
    const usage = await runCli(['token', 'create', '--name', 'x', '--role', 'root', '--api', url, '--token', admin]);
    expect(usage.code).toBe(2);
  });
});
