// Proves configuration loading: precedence of file < env < flags, and that every bad input is reported with its key, value and source.
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { coerce, configLeaves, loadConfig } from '../../node/config/load.js';
import { ConfigError, type ConfigIssue } from '../../node/errors.js';
import { removeTempDirs, tempDir } from '../support/tmp.js';

afterAll(removeTempDirs);

function tmp(): string {
  return tempDir('nc-config-');
}

function issuesOf(fn: () => unknown): ConfigIssue[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).name).toBe('ConfigError');
    expect((err as ConfigError).code).toBe('config_invalid');
    return (err as ConfigError).issues;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('applies defaults when nothing is set', () => {
    const dir = tmp();
    const { config, configFile } = loadConfig({ env: { NOVACRON_DATA_DIR: dir } });
    expect(configFile).toBeNull();
    expect(config.dataDir).toBe(dir);
    expect(config.api.port).toBe(8780);
    expect(config.log.level).toBe('info');
  });

  it('layers file < environment < flags and records where each value came from', () => {
    const dir = tmp();
    const file = join(dir, 'novacron.yaml');
    writeFileSync(file, 'api:\n  port: 9001\n  host: 127.0.0.1\nlog:\n  level: debug\n');
    const { config, origins } = loadConfig({
      configFile: file,
      env: { NOVACRON_API_PORT: '9002', NOVACRON_DATA_DIR: dir },
      overrides: [{ key: 'log.level', value: 'warn', source: '--log-level' }],
    });
    expect(config.api.host).toBe('127.0.0.1');
    expect(config.api.port).toBe(9002);
    expect(config.log.level).toBe('warn');
    expect(origins['api.host']).toBe(file);
    expect(origins['api.port']).toBe('NOVACRON_API_PORT');
    expect(origins['log.level']).toBe('--log-level');
    expect(origins['shutdown.timeoutMs']).toBe('default');
  });

  it('finds config.yaml in the data dir chosen by a flag', () => {
    const dir = tmp();
    writeFileSync(join(dir, 'config.yaml'), 'node:\n  name: edge-7\n');
    const { config, configFile } = loadConfig({ env: {}, overrides: [{ key: 'dataDir', value: dir, source: '--data-dir' }] });
    expect(configFile).toBe(join(dir, 'config.yaml'));
    expect(config.node.name).toBe('edge-7');
  });

  it('reads JSON as well as YAML', () => {
    const dir = tmp();
    const file = join(dir, 'c.json');
    writeFileSync(file, JSON.stringify({ dataDir: dir, api: { port: 7000 } }));
    expect(loadConfig({ configFile: file, env: {} }).config.api.port).toBe(7000);
  });

  it('refuses an unknown key in the file, naming the key and the file', () => {
    const dir = tmp();
    const file = join(dir, 'c.yaml');
    writeFileSync(file, `dataDir: ${dir}\napi:\n  prot: 80\nbogus: true\n`);
    const issues = issuesOf(() => loadConfig({ configFile: file, env: {} }));
    expect(issues).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ key: 'api.prot', message: 'unknown key', value: 80, source: file }),
        expect.objectContaining({ key: 'bogus', message: 'unknown key', source: file }),
      ]),
    );
  });

  it('refuses a value of the wrong type, naming key, value and source', () => {
    const dir = tmp();
    const issues = issuesOf(() => loadConfig({ env: { NOVACRON_DATA_DIR: dir, NOVACRON_API_PORT: 'eighty' } }));
    expect(issues).toEqual([expect.objectContaining({ key: 'api.port', value: 'eighty', source: 'NOVACRON_API_PORT' })]);
    const issues2 = issuesOf(() => loadConfig({ env: { NOVACRON_DATA_DIR: dir }, overrides: [{ key: 'api.port', value: '70000', source: '--api-port' }] }));
    expect(issues2).toEqual([expect.objectContaining({ key: 'api.port', value: 70000, source: '--api-port' })]);
    expect(issues2[0]?.message).toMatch(/65535/);
  });

  it('refuses a wrong type in the file and an invalid enum value', () => {
    const dir = tmp();
    const file = join(dir, 'c.yaml');
    writeFileSync(file, `dataDir: ${dir}\nlog:\n  level: loud\n  file: "yes please"\napi: 5\n`);
    const issues = issuesOf(() => loadConfig({ configFile: file, env: {} }));
    const keys = issues.map((i) => i.key).sort();
    expect(keys).toEqual(['api', 'log.file', 'log.level']);
    expect(issues.find((i) => i.key === 'log.level')?.value).toBe('loud');
  });

  it('refuses unknown NOVACRON_ environment variables but ignores the CLI ones', () => {
    const dir = tmp();
    const issues = issuesOf(() => loadConfig({ env: { NOVACRON_DATA_DIR: dir, NOVACRON_API_PROT: '1' } }));
    expect(issues).toEqual([expect.objectContaining({ key: 'NOVACRON_API_PROT' })]);
    expect(() => loadConfig({ env: { NOVACRON_DATA_DIR: dir, NOVACRON_API: 'http://x', NOVACRON_TOKEN: 't' } })).not.toThrow();
  });

  it('refuses unknown flag keys', () => {
    const issues = issuesOf(() => loadConfig({ env: {}, overrides: [{ key: 'api.nope', value: '1', source: '--set api.nope' }] }));
    expect(issues).toEqual([expect.objectContaining({ key: 'api.nope', source: '--set api.nope' })]);
  });

  it('reports an unreadable file', () => {
    const dir = tmp();
    const missing = join(dir, 'missing.yaml');
    const issues = issuesOf(() => loadConfig({ configFile: missing, env: {} }));
    expect(issues[0]?.message).toMatch(/cannot read config file: .*ENOENT/);
    expect(issues[0]?.source).toBe(missing);
    // A directory given as the file is unreadable too (EISDIR), and works even as root, unlike chmod 000.
    const issuesDir = issuesOf(() => loadConfig({ configFile: dir, env: {} }));
    expect(issuesDir[0]?.message).toMatch(/EISDIR/);
  });

  it('reports a file that is not valid YAML with its line', () => {
    const dir = tmp();
    const file = join(dir, 'c.yaml');
    writeFileSync(file, 'api:\n  port: [1, 2\n');
    const issues = issuesOf(() => loadConfig({ configFile: file, env: {} }));
    expect(issues[0]?.message).toMatch(/not valid YAML at line \d+/);
  });

  it('reports a file whose root is not a mapping', () => {
    const dir = tmp();
    const file = join(dir, 'c.yaml');
    writeFileSync(file, '- a\n- b\n');
    expect(issuesOf(() => loadConfig({ configFile: file, env: {} }))[0]?.message).toMatch(/must be a mapping/);
  });

  it('reports a section given as a scalar', () => {
    const dir = tmp();
    const file = join(dir, 'c.yaml');
    writeFileSync(file, `dataDir: ${dir}\nlog: verbose\n`);
    expect(issuesOf(() => loadConfig({ configFile: file, env: {} }))).toEqual([
      expect.objectContaining({ key: 'log', message: 'must be a mapping (a section of keys)', value: 'verbose' }),
    ]);
  });

  it('reports every problem at once', () => {
    const dir = tmp();
    chmodSync(dir, 0o700);
    const issues = issuesOf(() =>
      loadConfig({ env: { NOVACRON_DATA_DIR: dir, NOVACRON_BOGUS: 'x' }, overrides: [{ key: 'x.y', value: '1', source: '--set x.y' }] }),
    );
    expect(issues).toHaveLength(2);
  });
});

describe('config keys', () => {
  it('derives environment names from the schema', () => {
    const byKey = new Map(configLeaves().map((l) => [l.key, l]));
    expect(byKey.get('dataDir')?.env).toBe('NOVACRON_DATA_DIR');
    expect(byKey.get('api.bodyLimitBytes')?.env).toBe('NOVACRON_API_BODY_LIMIT_BYTES');
    expect(byKey.get('shutdown.timeoutMs')?.type).toBe('integer');
  });

  it('coerces strings by type and leaves bad ones for validation to report', () => {
    expect(coerce('42', 'integer')).toBe(42);
    expect(coerce('4.2', 'integer')).toBe('4.2');
    expect(coerce('off', 'boolean')).toBe(false);
    expect(coerce('maybe', 'boolean')).toBe('maybe');
    expect(coerce('a, b,,c', 'string[]')).toEqual(['a', 'b', 'c']);
  });
});
