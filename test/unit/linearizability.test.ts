// Proves the Porcupine-style checker accepts linearizable kv histories, rejects non-linearizable ones, handles timed-out ops, partitions and timeouts.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  checkOperations,
  HistoryError,
  kvModel,
  type KvInput,
  type KvOutput,
  type Model,
  type Operation,
} from '../../consensus/sim/linearizability.js';

type KvOp = Operation<KvInput, KvOutput>;

function get(clientId: number, key: string, value: string, call: number, ret: number): KvOp {
  return { clientId, input: { op: 'get', key }, call, output: { value }, return: ret };
}
function put(clientId: number, key: string, value: string, call: number, ret: number): KvOp {
  return { clientId, input: { op: 'put', key, value }, call, output: { value: '' }, return: ret };
}
function append(clientId: number, key: string, value: string, call: number, ret: number): KvOp {
  return { clientId, input: { op: 'append', key, value }, call, output: { value: '' }, return: ret };
}

describe('checkOperations with kvModel: classic histories', () => {
  it('accepts concurrent reads that see the old and the new value of an overlapping put', () => {
    // put x=100 over [0,100]; one read inside sees 100, another (also inside) sees the old "".
    const h = [put(0, 'x', '100', 0, 100), get(1, 'x', '100', 25, 75), get(2, 'x', '', 30, 60)];
    expect(checkOperations(kvModel, h)).toBe('ok');
  });

  it('rejects a stale read that starts after another read saw the new value', () => {
    const h = [put(0, 'x', '200', 0, 100), get(1, 'x', '200', 10, 30), get(2, 'x', '', 40, 90)];
    expect(checkOperations(kvModel, h)).toBe('illegal');
  });

  it('rejects a stale read after a completed write', () => {
    const h = [put(0, 'x', 'a', 0, 10), get(1, 'x', '', 20, 30)];
    expect(checkOperations(kvModel, h)).toBe('illegal');
  });

  it('rejects a read of a value never written', () => {
    const h = [put(0, 'x', 'a', 0, 10), put(1, 'x', 'b', 5, 15), get(2, 'x', 'c', 0, 40)];
    expect(checkOperations(kvModel, h)).toBe('illegal');
  });

  it('treats operations touching at the same instant as concurrent', () => {
    const h = [put(0, 'x', 'a', 0, 10), get(1, 'x', '', 10, 20)];
    expect(checkOperations(kvModel, h)).toBe('ok');
  });

  it('checks append ordering: concurrent appends in either order, sequential ones in real-time order', () => {
    const concurrent = [append(0, 'k', 'a', 0, 10), append(1, 'k', 'b', 0, 10), get(2, 'k', 'ba', 20, 30)];
    expect(checkOperations(kvModel, concurrent)).toBe('ok');
    const sequential = [append(0, 'k', 'a', 0, 10), append(1, 'k', 'b', 11, 20), get(2, 'k', 'ba', 21, 30)];
    expect(checkOperations(kvModel, sequential)).toBe('illegal');
    const prefix = [append(0, 'k', 'a', 0, 10), append(1, 'k', 'b', 11, 20), get(2, 'k', 'a', 5, 30)];
    expect(checkOperations(kvModel, prefix)).toBe('ok');
  });

  it('needs backtracking: the first choice that fits is not the right one', () => {
    // Both puts overlap everything; the reads force x=1 then x=2 then x=1 is impossible, x=2 then x=1 is fine.
    const ok = [put(0, 'x', '1', 0, 50), put(1, 'x', '2', 0, 50), get(2, 'x', '2', 10, 20), get(3, 'x', '1', 30, 60)];
    expect(checkOperations(kvModel, ok)).toBe('ok');
    const bad = [...ok, get(4, 'x', '2', 70, 80)];
    expect(checkOperations(kvModel, bad)).toBe('illegal');
  });

  it('accepts the empty history', () => {
    expect(checkOperations(kvModel, [])).toBe('ok');
  });

  it('rejects a malformed history with a typed error', () => {
    expect(() => checkOperations(kvModel, [put(0, 'x', 'a', 10, 5)])).toThrow(HistoryError);
  });
});

describe('indeterminate (timed-out) operations', () => {
  it('a timed-out put may take effect later', () => {
    const h = [put(0, 'x', 'a', 0, Infinity), get(1, 'x', '', 10, 20), get(2, 'x', 'a', 30, 40)];
    expect(checkOperations(kvModel, h)).toBe('ok');
  });

  it('a timed-out put may never take effect', () => {
    const h = [put(0, 'x', 'a', 0, Infinity), get(1, 'x', '', 10, 20), get(2, 'x', '', 30, 40)];
    expect(checkOperations(kvModel, h)).toBe('ok');
  });

  it('a timed-out put cannot take effect before it was called', () => {
    const h = [get(1, 'x', 'a', 0, 10), put(0, 'x', 'a', 20, Infinity)];
    expect(checkOperations(kvModel, h)).toBe('illegal');
  });

  it('once seen, a timed-out put stays applied', () => {
    const h = [put(0, 'x', 'a', 0, Infinity), get(1, 'x', 'a', 10, 20), get(2, 'x', '', 30, 40)];
    expect(checkOperations(kvModel, h)).toBe('illegal');
  });

  it('a timed-out get constrains nothing, whatever output was recorded', () => {
    const h = [put(0, 'x', 'a', 0, 10), get(1, 'x', 'garbage', 20, Infinity), get(2, 'x', 'a', 30, 40)];
    expect(checkOperations(kvModel, h)).toBe('ok');
  });

  it('a timed-out append orders after its call', () => {
    const h = [append(0, 'k', 'a', 0, 10), append(1, 'k', 'b', 20, Infinity), get(2, 'k', 'ab', 30, 40)];
    expect(checkOperations(kvModel, h)).toBe('ok');
    const h2 = [append(0, 'k', 'a', 0, 10), append(1, 'k', 'b', 20, Infinity), get(2, 'k', 'ba', 30, 40)];
    expect(checkOperations(kvModel, h2)).toBe('illegal');
  });
});

describe('partitioning', () => {
  it('checks keys independently and finds the illegal one', () => {
    const h = [put(0, 'x', 'a', 0, 10), put(1, 'y', 'b', 0, 10), get(2, 'x', 'a', 20, 30), get(3, 'y', '', 20, 30)];
    expect(checkOperations(kvModel, h)).toBe('illegal');
    const fixed = [...h.slice(0, 3), get(3, 'y', 'b', 20, 30)];
    expect(checkOperations(kvModel, fixed)).toBe('ok');
  });

  it('a model without partition checks the whole history as one', () => {
    const whole: Model<string, KvInput, KvOutput> = { ...kvModel, partition: undefined };
    const h = [put(0, 'x', 'a', 0, 10), put(1, 'y', 'b', 0, 10), get(2, 'x', 'a', 20, 30), get(3, 'y', 'b', 20, 30)];
    // Without partition the state is one string for all keys, so this kv history is not valid for it.
    expect(checkOperations(whole, h)).toBe('illegal');
    const h2 = [put(0, 'x', 'a', 0, 10), get(2, 'x', 'a', 20, 30)];
    expect(checkOperations(whole, h2)).toBe('ok');
  });

  it('works with a model that has no key() (falls back to equal())', () => {
    // A register whose state is an object, to exercise the equal() path of the cache.
    const reg: Model<{ v: number }, { w?: number }, number> = {
      init: () => ({ v: 0 }),
      step: (s, input, out) => (input.w !== undefined ? { ok: true, state: { v: input.w } } : { ok: out === s.v, state: s }),
      equal: (a, b) => a.v === b.v,
    };
    const op = (c: number, input: { w?: number }, out: number, call: number, ret: number): Operation<{ w?: number }, number> => ({
      clientId: c,
      input,
      output: out,
      call,
      return: ret,
    });
    expect(checkOperations(reg, [op(0, { w: 1 }, 0, 0, 10), op(1, {}, 1, 5, 15), op(2, {}, 0, 6, 9)])).toBe('ok');
    expect(checkOperations(reg, [op(0, { w: 1 }, 0, 0, 10), op(1, {}, 1, 5, 8), op(2, {}, 0, 9, 12)])).toBe('illegal');
  });
});

describe('timeout', () => {
  it("returns 'unknown' when the search runs past timeoutMs (driven by an injected clock)", () => {
    // 14 fully concurrent appends of distinct values then a read of an impossible value: every order is a
    // distinct state, so the search would enumerate ~14! orders before answering 'illegal'.
    const h: KvOp[] = [];
    for (let i = 0; i < 14; i++) h.push(append(i, 'k', String.fromCharCode(97 + i), 0, 100));
    h.push(get(99, 'k', 'impossible', 200, 300));
    let t = 0;
    const now = (): number => (t += 1);
    expect(checkOperations(kvModel, h, { timeoutMs: 50, now })).toBe('unknown');
  });

  it('answers normally when the search fits in the time', () => {
    const h = [put(0, 'x', 'a', 0, 10), get(1, 'x', 'a', 20, 30)];
    expect(checkOperations(kvModel, h, { timeoutMs: 10_000 })).toBe('ok');
  });
});

// A sequential execution of random ops, each given an interval that contains its linearization point.
interface GenOp {
  key: string;
  kind: 'get' | 'put' | 'append';
  before: number;
  after: number;
  timedOut: boolean;
}
const genOp = fc.record({
  key: fc.constantFrom('a', 'b', 'c'),
  kind: fc.constantFrom<'get' | 'put' | 'append'>('get', 'put', 'append'),
  // How far the interval reaches around the linearization point (points are 10 apart, so intervals overlap).
  before: fc.integer({ min: 0, max: 35 }),
  after: fc.integer({ min: 0, max: 35 }),
  timedOut: fc.boolean(),
});

function execute(gen: GenOp[]): KvOp[] {
  const store = new Map<string, string>();
  return gen.map((g, i) => {
    const point = (i + 1) * 10;
    const current = store.get(g.key) ?? '';
    const value = `v${i};`;
    let input: KvInput;
    let output: KvOutput = { value: '' };
    if (g.kind === 'get') {
      input = { op: 'get', key: g.key };
      output = { value: current };
    } else {
      input = g.kind === 'put' ? { op: 'put', key: g.key, value } : { op: 'append', key: g.key, value };
      store.set(g.key, g.kind === 'put' ? value : current + value);
    }
    // Only writes time out here (their effect happened; the client just never heard back).
    const ret = g.timedOut && g.kind !== 'get' ? Infinity : point + g.after;
    return { clientId: i, input, call: point - g.before, output, return: ret };
  });
}

describe('property: histories from a real sequential execution', () => {
  it("are always 'ok'", () => {
    fc.assert(
      fc.property(fc.array(genOp, { minLength: 0, maxLength: 40 }), (gen) => {
        expect(checkOperations(kvModel, execute(gen))).toBe('ok');
      }),
      { numRuns: 300 },
    );
  });

  it("become 'illegal' when one completed read returns a value never written", () => {
    fc.assert(
      fc.property(fc.array(genOp, { minLength: 1, maxLength: 40 }), fc.nat(), (gen, pick) => {
        const history = execute(gen);
        const reads = history.filter((op) => op.input.op === 'get');
        fc.pre(reads.length > 0);
        const victim = reads[pick % reads.length]!;
        victim.output = { value: 'never-written' };
        expect(checkOperations(kvModel, history)).toBe('illegal');
      }),
      { numRuns: 300 },
    );
  });
});
