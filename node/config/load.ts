// Loads the node configuration: defaults < config file < NOVACRON_* environment < flags.
// Every issue names the key, the bad value and where it came from, and all issues are reported at once.
import { readFileSync, existsSync } from 'node:fs';
import { resolve } from 'node:path';
import Value from 'typebox/value';
import { LineCounter, parseDocument } from 'yaml';
import { ConfigError, type ConfigIssue, errorMessage } from '../errors.js';
import { NodeConfigSchema, configDefaults, type NodeConfig } from './schema.js';

export const envPrefix = 'NOVACRON_';
/** Environment variables in our namespace that belong to the CLI or select the file, not config keys. */
export const envReserved: ReadonlySet<string> = new Set(['NOVACRON_CONFIG', 'NOVACRON_API', 'NOVACRON_TOKEN']);
export const configFileName = 'config.yaml';
const configFileBytesMax = 1024 * 1024;

type LeafType = 'string' | 'integer' | 'number' | 'boolean' | 'string[]';

export interface ConfigLeaf {
  key: string;
  env: string;
  type: LeafType;
  description: string;
}

interface SchemaNode {
  type?: string;
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
  anyOf?: SchemaNode[];
  description?: string;
}

/** Every settable key with its environment variable, derived from the schema so they never drift. */
export function configLeaves(): ConfigLeaf[] {
  const leaves: ConfigLeaf[] = [];
  const walk = (node: SchemaNode, path: string[]): void => {
    if (node.type === 'object' && node.properties !== undefined) {
      for (const [name, child] of Object.entries(node.properties)) walk(child, [...path, name]);
      return;
    }
    const key = path.join('.');
    const env = envPrefix + path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
    leaves.push({ key, env, type: leafType(node), description: node.description ?? '' });
  };
  walk(NodeConfigSchema, []);
  return leaves;
}

function leafType(node: SchemaNode): LeafType {
  if (node.type === 'integer' || node.type === 'number' || node.type === 'boolean') return node.type;
  if (node.type === 'array') return 'string[]';
  return 'string';
}

/** Turns a string from the environment or a flag into the leaf's type; leaves it as is when it does not parse, so validation reports it. */
export function coerce(raw: string, type: LeafType): unknown {
  switch (type) {
    case 'integer':
      return /^-?\d+$/.test(raw.trim()) ? Number(raw) : raw;
    case 'number':
      return raw.trim() !== '' && Number.isFinite(Number(raw)) ? Number(raw) : raw;
    case 'boolean': {
      const v = raw.trim().toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(v)) return true;
      if (['false', '0', 'no', 'off'].includes(v)) return false;
      return raw;
    }
    case 'string[]':
      return raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
    case 'string':
      return raw;
  }
}

export interface LoadOptions {
  /** Explicit config file (flag --config); otherwise NOVACRON_CONFIG, otherwise <dataDir>/config.yaml if present. */
  configFile?: string | undefined;
  /** key=value pairs from flags, with a label naming the flag for error messages. */
  overrides?: Array<{ key: string; value: string; source: string }>;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface LoadedConfig {
  config: NodeConfig;
  configFile: string | null;
  /** Where each leaf's value came from: 'default', a file path, an env var or a flag. */
  origins: Record<string, string>;
}

export function loadConfig(options: LoadOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const leaves = configLeaves();
  const leafByKey = new Map(leaves.map((l) => [l.key, l]));
  const leafByEnv = new Map(leaves.map((l) => [l.env, l]));
  const issues: ConfigIssue[] = [];
  const origins: Record<string, string> = {};

  const merged = configDefaults() as unknown as Record<string, unknown>;
  for (const leaf of leaves) origins[leaf.key] = 'default';

  // Environment and flags are collected first: they can choose the data dir, which locates the default file.
  const envSets: Array<{ key: string; value: unknown; source: string }> = [];
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith(envPrefix) || envReserved.has(name) || raw === undefined) continue;
    const leaf = leafByEnv.get(name);
    if (leaf === undefined) {
      issues.push({ key: name, message: 'unknown environment variable (see `novacron node config-keys`)', source: 'environment' });
      continue;
    }
    envSets.push({ key: leaf.key, value: coerce(raw, leaf.type), source: name });
  }
  const flagSets: Array<{ key: string; value: unknown; source: string }> = [];
  for (const o of options.overrides ?? []) {
    const leaf = leafByKey.get(o.key);
    if (leaf === undefined) {
      issues.push({ key: o.key, message: 'unknown key', value: o.value, source: o.source });
      continue;
    }
    flagSets.push({ key: leaf.key, value: coerce(o.value, leaf.type), source: o.source });
  }

  let configFile: string | null = null;
  const explicitFile = options.configFile ?? env.NOVACRON_CONFIG;
  if (explicitFile !== undefined && explicitFile !== '') {
    configFile = resolve(cwd, explicitFile);
  } else {
    const dataDirSet = [...flagSets, ...envSets].find((s) => s.key === 'dataDir');
    const dataDir = typeof dataDirSet?.value === 'string' ? dataDirSet.value : (merged.dataDir as string);
    const candidate = resolve(cwd, dataDir, configFileName);
    if (existsSync(candidate)) configFile = candidate;
  }

  if (configFile !== null) {
    const fromFile = readConfigFile(configFile, issues);
    if (fromFile !== undefined) {
      mergeFile(merged, fromFile, [], configFile, origins, leafByKey, issues);
    }
  }
  for (const s of [...envSets, ...flagSets]) {
    setPath(merged, s.key.split('.'), s.value);
    origins[s.key] = s.source;
  }

  // Validate even when the file had unknown keys (they were not merged), so that one run reports every problem.
  {
    // A union of literals fails once per member plus once for anyOf: fold them into one "must be one of".
    const allowedByKey = new Map<string, unknown[]>();
    const reported = new Set<string>();
    const schemaErrors = [...Value.Errors(NodeConfigSchema, merged)];
    for (const e of schemaErrors) {
      if (e.keyword === 'const') {
        const key = pointerToKey(e.instancePath);
        const list = allowedByKey.get(key) ?? [];
        list.push((e.params as { allowedValue?: unknown }).allowedValue);
        allowedByKey.set(key, list);
      }
    }
    for (const e of schemaErrors) {
      if (e.keyword === 'boolean') continue; // repeated by the additionalProperties error below
      const key = pointerToKey(e.instancePath);
      if (e.keyword === 'additionalProperties') {
        const extra = (e.params as { additionalProperties?: string[] }).additionalProperties ?? [];
        for (const name of extra) issues.push({ key: key === '' ? name : `${key}.${name}`, message: 'unknown key' });
        continue;
      }
      if (reported.has(key)) continue;
      reported.add(key);
      const allowed = allowedByKey.get(key);
      const message = allowed !== undefined ? `must be one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}` : e.message;
      issues.push({ key, message, value: getPath(merged, key), source: origins[key] ?? 'default' });
    }
  }
  if (issues.length > 0) throw new ConfigError(issues);

  const config = merged as unknown as NodeConfig;
  config.dataDir = resolve(cwd, config.dataDir);
  return { config, configFile, origins };
}

function readConfigFile(path: string, issues: ConfigIssue[]): Record<string, unknown> | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    issues.push({ key: '', message: `cannot read config file: ${errorMessage(err)}`, source: path });
    return undefined;
  }
  if (Buffer.byteLength(text) > configFileBytesMax) {
    issues.push({ key: '', message: `config file is larger than ${configFileBytesMax} bytes`, source: path });
    return undefined;
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true, lineCounter });
  if (doc.errors.length > 0) {
    for (const e of doc.errors) {
      const pos = lineCounter.linePos(e.pos[0]);
      const where = pos === undefined ? '' : ` at line ${pos.line}, column ${pos.col}`;
      issues.push({ key: '', message: `not valid YAML${where}: ${e.message.split('\n')[0] ?? ''}`, source: path });
    }
    return undefined;
  }
  const value: unknown = doc.toJS();
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    issues.push({ key: '', message: 'config file must be a mapping of keys to values', value, source: path });
    return undefined;
  }
  return value as Record<string, unknown>;
}

function mergeFile(
  target: Record<string, unknown>,
  source: Record<string, unknown>,
  path: string[],
  file: string,
  origins: Record<string, string>,
  leafByKey: Map<string, ConfigLeaf>,
  issues: ConfigIssue[],
): void {
  for (const [name, value] of Object.entries(source)) {
    const keyPath = [...path, name];
    const key = keyPath.join('.');
    if (leafByKey.has(key)) {
      target[name] = value;
      origins[key] = file;
      continue;
    }
    const isSection = [...leafByKey.keys()].some((k) => k.startsWith(`${key}.`));
    if (!isSection) {
      issues.push({ key, message: 'unknown key', value, source: file });
      continue;
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      issues.push({ key, message: 'must be a mapping (a section of keys)', value, source: file });
      continue;
    }
    const child = (target[name] ?? {}) as Record<string, unknown>;
    target[name] = child;
    mergeFile(child, value as Record<string, unknown>, keyPath, file, origins, leafByKey, issues);
  }
}

function pointerToKey(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .join('.');
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const part of path.slice(0, -1)) {
    const next = node[part];
    if (next === null || typeof next !== 'object') node[part] = {};
    node = node[part] as Record<string, unknown>;
  }
  node[path[path.length - 1] as string] = value;
}

function getPath(target: Record<string, unknown>, key: string): unknown {
  if (key === '') return undefined;
  let node: unknown = target;
  for (const part of key.split('.')) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}
