// Linearizability checker: Porcupine's algorithm (Wing & Gong search with Lowe's memoisation), written from the papers.
//
// The history becomes a doubly linked list of call and return events ordered by time. The search walks the
// list: at a call it tries to linearize that operation now (model step ok, and the pair (set of linearized
// operations, model state) not seen before), removing ("lifting") its call and return from the list and
// restarting from the head; at a return whose call has not been linearized it backtracks, because that
// operation finished before anything left could take its place. The history is linearizable when the list
// empties. The cache of (linearized bitset, state) pairs is what keeps the search from being exponential on
// the usual histories: two paths that linearized the same operations into the same state are equivalent.
//
// Indeterminate operations (return = Infinity, a client timed out) may take effect at any point after their
// call or never. Their return event sorts after every real event, so the search may linearize them at the
// very end, which is the same as never for every observer. Their output is unknown: when the model defines
// `stepIndeterminate` the checker uses it for them instead of `step` (kvModel accepts any value for a get and
// applies a put/append), otherwise `step` sees the recorded output as if it were real.

export interface Operation<I, O> {
  clientId: number;
  input: I;
  call: number;
  output: O;
  /** Infinity for an indeterminate (timed-out) operation. */
  return: number;
}

export interface Model<S, I, O> {
  init(): S;
  step(state: S, input: I, output: O): { ok: boolean; state: S };
  /** Splits a history into independent sub-histories (e.g. per key); each is checked alone. */
  partition?(ops: Operation<I, O>[]): Operation<I, O>[][];
  equal(a: S, b: S): boolean;
  /** A string that identifies a state (equal states, equal keys); makes the memoisation cache cheaper. */
  key?(state: S): string;
  /** Step for an indeterminate operation whose output is unknown. Defaults to `step` with the recorded output. */
  stepIndeterminate?(state: S, input: I): { ok: boolean; state: S };
}

export type CheckResult = 'ok' | 'illegal' | 'unknown';

export interface CheckOptions {
  /** Give up with 'unknown' after this long (across all partitions). */
  timeoutMs?: number;
  /** Clock in milliseconds; injectable so tests can drive the timeout deterministically. Defaults to performance.now. */
  now?: () => number;
}

/** A malformed history (an operation that returns before it is called, or a NaN time): a bug in the recorder. */
export class HistoryError extends Error {
  override readonly name = 'HistoryError';
  readonly code = 'history_invalid';
}

/** How many search steps run between clock reads; reading the clock every step would dominate small searches. */
const CLOCK_CHECK_INTERVAL_STEPS = 1024;

export function checkOperations<S, I, O>(model: Model<S, I, O>, history: Operation<I, O>[], options: CheckOptions = {}): CheckResult {
  const now = options.now ?? (() => performance.now());
  const deadline = options.timeoutMs === undefined ? Infinity : now() + options.timeoutMs;
  for (const op of history) {
    if (!(op.call <= op.return) || Number.isNaN(op.call) || op.call === Infinity) {
      throw new HistoryError(`operation of client ${op.clientId} has call ${op.call} and return ${op.return}`);
    }
  }
  const partitions = model.partition ? model.partition(history) : [history];
  let timedOut = false;
  for (const part of partitions) {
    const result = checkPartition(model, part, deadline, now);
    if (result === 'illegal') return 'illegal';
    if (result === 'unknown') {
      timedOut = true;
      // Keep going only while there is time left: a later partition may still prove the history illegal.
      if (now() >= deadline) return 'unknown';
    }
  }
  return timedOut ? 'unknown' : 'ok';
}

/** A node of the event list. A call node points at its return node (`match`); a return node has none. */
interface EventNode<I, O> {
  id: number;
  op: Operation<I, O>;
  match: EventNode<I, O> | null;
  prev: EventNode<I, O> | null;
  next: EventNode<I, O> | null;
}

interface RawEvent<I, O> {
  time: number;
  isCall: boolean;
  id: number;
  op: Operation<I, O>;
}

function buildList<I, O>(ops: readonly Operation<I, O>[]): EventNode<I, O> {
  const events: RawEvent<I, O>[] = [];
  ops.forEach((op, id) => {
    events.push({ time: op.call, isCall: true, id, op });
    events.push({ time: op.return, isCall: false, id, op });
  });
  // At equal times calls sort before returns: the two operations are then treated as concurrent, which is
  // the conservative choice when a clock cannot tell them apart.
  events.sort((a, b) => (a.time !== b.time ? (a.time < b.time ? -1 : 1) : a.isCall === b.isCall ? 0 : a.isCall ? -1 : 1));
  const head: EventNode<I, O> = { id: -1, op: undefined as unknown as Operation<I, O>, match: null, prev: null, next: null };
  const returns = new Map<number, EventNode<I, O>>();
  // Walk backwards so each call can link to its (later) return node.
  const nodes: EventNode<I, O>[] = new Array<EventNode<I, O>>(events.length);
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i]!;
    const node: EventNode<I, O> = { id: e.id, op: e.op, match: null, prev: null, next: null };
    if (e.isCall) node.match = returns.get(e.id) ?? null;
    else returns.set(e.id, node);
    nodes[i] = node;
  }
  let prev = head;
  for (const node of nodes) {
    prev.next = node;
    node.prev = prev;
    prev = node;
  }
  return head;
}

/** Removes a call node and its return node from the list. */
function lift<I, O>(call: EventNode<I, O>): void {
  call.prev!.next = call.next;
  if (call.next) call.next.prev = call.prev;
  const ret = call.match!;
  ret.prev!.next = ret.next;
  if (ret.next) ret.next.prev = ret.prev;
}

/** Puts back what lift removed; nodes keep their own prev/next, so undoing in reverse order restores the list. */
function unlift<I, O>(call: EventNode<I, O>): void {
  const ret = call.match!;
  ret.prev!.next = ret;
  if (ret.next) ret.next.prev = ret;
  call.prev!.next = call;
  if (call.next) call.next.prev = call;
}

class Bitset {
  readonly words: Uint32Array;
  constructor(bits: number, words?: Uint32Array) {
    this.words = words ?? new Uint32Array(Math.ceil(bits / 32) || 1);
  }
  set(i: number): void {
    this.words[i >>> 5]! |= 1 << (i & 31);
  }
  clear(i: number): void {
    this.words[i >>> 5]! &= ~(1 << (i & 31));
  }
  clone(): Bitset {
    return new Bitset(0, this.words.slice());
  }
  equals(other: Bitset): boolean {
    const a = this.words;
    const b = other.words;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  /** FNV-1a over the words; collisions are resolved by `equals`. */
  hash(): number {
    let h = 0x811c9dc5;
    for (const w of this.words) h = Math.imul(h ^ w, 0x01000193) >>> 0;
    return h;
  }
}

interface CacheEntry<S> {
  bits: Bitset;
  state: S;
  stateKey: string | undefined;
}

function hashString(s: string, seed: number): number {
  let h = seed;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

function checkPartition<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  deadline: number,
  now: () => number,
): CheckResult {
  if (ops.length === 0) return 'ok';
  const head = buildList(ops);
  const linearized = new Bitset(ops.length);
  const cache = new Map<number, CacheEntry<S>[]>();
  const calls: { node: EventNode<I, O>; state: S }[] = [];
  const stepOf = (state: S, op: Operation<I, O>): { ok: boolean; state: S } =>
    op.return === Infinity && model.stepIndeterminate ? model.stepIndeterminate(state, op.input) : model.step(state, op.input, op.output);

  let state = model.init();
  let entry = head.next;
  let steps = 0;
  while (head.next !== null) {
    if (++steps % CLOCK_CHECK_INTERVAL_STEPS === 0 && now() >= deadline) return 'unknown';
    if (entry === null) {
      // Cannot happen: the list always ends with a return event while non-empty. Guarded for the type checker.
      return 'illegal';
    }
    if (entry.match !== null) {
      const result = stepOf(state, entry.op);
      if (result.ok) {
        const bits = linearized.clone();
        bits.set(entry.id);
        const stateKey = model.key?.(result.state);
        const h = stateKey === undefined ? bits.hash() : hashString(stateKey, bits.hash());
        const bucket = cache.get(h);
        const seen =
          bucket?.some(
            (c) => c.bits.equals(bits) && (stateKey !== undefined ? c.stateKey === stateKey : model.equal(c.state, result.state)),
          ) ?? false;
        if (!seen) {
          const fresh: CacheEntry<S> = { bits, state: result.state, stateKey };
          if (bucket) bucket.push(fresh);
          else cache.set(h, [fresh]);
          calls.push({ node: entry, state });
          state = result.state;
          linearized.set(entry.id);
          lift(entry);
          entry = head.next;
          continue;
        }
      }
      entry = entry.next;
    } else {
      // A return whose call is still in the list: that operation must have taken effect before this point,
      // and no choice made so far allows it. Undo the most recent linearization and try its next alternative.
      const top = calls.pop();
      if (top === undefined) return 'illegal';
      state = top.state;
      linearized.clear(top.node.id);
      unlift(top.node);
      entry = top.node.next;
    }
  }
  return 'ok';
}

// ---------------------------------------------------------------------------------------------------------
// Key-value model: get / put / append on string keys, partitioned per key (operations on different keys
// commute, so the history is linearizable iff each key's sub-history is).

export type KvInput = { op: 'get'; key: string } | { op: 'put'; key: string; value: string } | { op: 'append'; key: string; value: string };
/** The value read for get ("" when absent); ignored for put/append. */
export type KvOutput = { value: string };

function kvApply(state: string, input: KvInput): string {
  switch (input.op) {
    case 'get':
      return state;
    case 'put':
      return input.value;
    case 'append':
      return state + input.value;
  }
}

export const kvModel: Model<string, KvInput, KvOutput> = {
  init: () => '',
  step(state, input, output) {
    if (input.op === 'get') return { ok: output.value === state, state };
    return { ok: true, state: kvApply(state, input) };
  },
  // A timed-out get may have read anything: accept it without constraint. A timed-out put/append applies.
  stepIndeterminate(state, input) {
    return { ok: true, state: kvApply(state, input) };
  },
  partition(ops) {
    const byKey = new Map<string, Operation<KvInput, KvOutput>[]>();
    for (const op of ops) {
      // A timed-out get changes nothing and may have read anything: it constrains nothing, and leaving it in
      // would only multiply the places the search can put it.
      if (op.return === Infinity && op.input.op === 'get') continue;
      const list = byKey.get(op.input.key);
      if (list) list.push(op);
      else byKey.set(op.input.key, [op]);
    }
    return [...byKey.values()];
  },
  equal: (a, b) => a === b,
  key: (s) => s,
};
