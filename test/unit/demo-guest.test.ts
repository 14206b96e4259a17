// Proves the demo guest's console protocol parser, line splitter, cmdline builder, manifest checks and build errors.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ConsoleLineSplitter,
  DemoGuestBuildError,
  DemoGuestInvalidError,
  consoleLineMaxBytes,
  demoGuestCmdline,
  ensureDemoGuest,
  findDemoGuestBuildScript,
  loadDemoGuest,
  parseConsoleLine,
} from '../../node/hypervisor/demo-guest.js';
import { problemKinds } from '../../node/api/problem.js';

describe('parseConsoleLine', () => {
  it('reads each kind of line the guest prints', () => {
    expect(parseConsoleLine('NOVACRON-BOOT-ID 239eb896-c49e-43da-818b-60e569412fd1')).toEqual({
      kind: 'boot-id',
      bootId: '239eb896-c49e-43da-818b-60e569412fd1',
    });
    expect(parseConsoleLine('NOVACRON-HEARTBEAT 17')).toEqual({ kind: 'heartbeat', count: 17 });
    expect(parseConsoleLine('NOVACRON-MEMTOUCH pass=32122 ok')).toEqual({ kind: 'memtouch-ok', pass: 32122 });
    expect(parseConsoleLine('NOVACRON-MEMTOUCH CORRUPT page=12 expected=4 got=250')).toEqual({
      kind: 'memtouch-corrupt',
      page: 12,
      expected: 4,
      got: 250,
    });
    expect(parseConsoleLine('NOVACRON-MEMTOUCH start mib=32 pages=8192 pagesPerSecond=0 locked=1')).toEqual({
      kind: 'memtouch-start',
      mib: 32,
      pages: 8192,
      pagesPerSecond: 0,
      locked: true,
    });
  });

  it('finds a marker after console noise on the same line, and tolerates a trailing CR', () => {
    // Seen for real: the shell's cursor-position query shares a line with memtouch's first line.
    expect(parseConsoleLine('novacron# \x1b[6nNOVACRON-MEMTOUCH start mib=8 pages=2048 pagesPerSecond=2000 locked=0')).toMatchObject({
      kind: 'memtouch-start',
      locked: false,
    });
    expect(parseConsoleLine('echo hiNOVACRON-HEARTBEAT 3\r')).toEqual({ kind: 'heartbeat', count: 3 });
  });

  it('ignores kernel messages, shell output, malformed and oversized lines', () => {
    expect(parseConsoleLine('[    0.000000] Linux version 6.1.0-56-amd64')).toBeNull();
    expect(parseConsoleLine('novacron# echo NOVACRON-HEARTBEAT')).toBeNull();
    expect(parseConsoleLine('NOVACRON-HEARTBEAT 3 extra')).toBeNull();
    expect(parseConsoleLine('NOVACRON-BOOT-ID not-a-uuid')).toBeNull();
    expect(parseConsoleLine('NOVACRON-MEMTOUCH pass=x ok')).toBeNull();
    expect(parseConsoleLine('NOVACRON-MEMTOUCH CORRUPT page=1 expected=1000 got=2')).toBeNull();
    expect(parseConsoleLine(`${'x'.repeat(consoleLineMaxBytes)}NOVACRON-HEARTBEAT 1`)).toBeNull();
  });
});

describe('ConsoleLineSplitter', () => {
  it('joins lines split across chunks and strips CR', () => {
    const s = new ConsoleLineSplitter();
    expect(s.push('NOVACRON-HEART')).toEqual([]);
    expect(s.push(Buffer.from('BEAT 1\r\nNOVACRON-HEARTBEAT 2\r\nnovacron# '))).toEqual(['NOVACRON-HEARTBEAT 1', 'NOVACRON-HEARTBEAT 2']);
    expect(s.rest()).toBe('novacron# ');
  });

  it('bounds a line that never ends', () => {
    const s = new ConsoleLineSplitter();
    const lines = s.push('y'.repeat(consoleLineMaxBytes * 2 + 5));
    expect(lines).toHaveLength(2);
    expect(s.rest()).toHaveLength(5);
  });
});

describe('demoGuestCmdline', () => {
  it('adds the memtouch option, unpaced by default', () => {
    expect(demoGuestCmdline('console=ttyS0')).toBe('console=ttyS0');
    expect(demoGuestCmdline('console=ttyS0', { memtouch: { mib: 32 } })).toBe('console=ttyS0 novacron.memtouch=32,0');
    expect(demoGuestCmdline('console=ttyS0', { memtouch: { mib: 48, pagesPerSecond: 5000 } })).toBe('console=ttyS0 novacron.memtouch=48,5000');
  });

  it('refuses sizes and rates the guest could not parse', () => {
    expect(() => demoGuestCmdline('c', { memtouch: { mib: 0 } })).toThrow(DemoGuestInvalidError);
    expect(() => demoGuestCmdline('c', { memtouch: { mib: 1.5 } })).toThrow(DemoGuestInvalidError);
    expect(() => demoGuestCmdline('c', { memtouch: { mib: 8, pagesPerSecond: -1 } })).toThrow(DemoGuestInvalidError);
  });
});

describe('demo guest build plumbing', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'novacron-demo-guest-unit-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('finds the build script of this checkout', () => {
    expect(findDemoGuestBuildScript()).toMatch(/packaging\/guest\/build\.sh$/);
  });

  it('turns a failing build into a typed error carrying its output', async () => {
    const script = join(dir, 'fail.sh');
    await writeFile(script, 'echo "demo-guest: busybox is missing" >&2\nexit 1\n');
    const err = await ensureDemoGuest({ buildScript: script, outDir: join(dir, 'out') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DemoGuestBuildError);
    expect((err as DemoGuestBuildError).code).toBe('demo_guest_build_failed');
    expect((err as DemoGuestBuildError).message).toMatch(/exited with 1: demo-guest: busybox is missing/);
    expect((err as DemoGuestBuildError).details?.output).toContain('busybox is missing');
  });

  it('kills a build that outlives its timeout', async () => {
    const script = join(dir, 'hang.sh');
    await writeFile(script, 'sleep 30\n');
    const err = await ensureDemoGuest({ buildScript: script, outDir: join(dir, 'out2'), timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DemoGuestBuildError);
    expect((err as DemoGuestBuildError).details?.timedOut).toBe(true);
  });

  it('refuses a manifest it cannot trust', async () => {
    const out = join(dir, 'bad');
    await rm(out, { recursive: true, force: true });
    await expect(loadDemoGuest(out)).rejects.toBeInstanceOf(DemoGuestInvalidError);
    await mkdir(out, { recursive: true });
    await writeFile(join(out, 'manifest.json'), JSON.stringify({ format: 1, inputHash: 'x', files: {} }));
    await expect(loadDemoGuest(out)).rejects.toThrow(/manifest\.json: .* must be/);
  });

  it('has problem kinds for its error codes', () => {
    expect(problemKinds.demo_guest_build_failed?.status).toBe(500);
    expect(problemKinds.demo_guest_invalid?.status).toBe(500);
  });
});
