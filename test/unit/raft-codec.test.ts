// Proves the Raft message codec round-trips every message type and rejects malformed bytes with a CodecError, never a crash.
import { describe, expect, test } from 'vitest';
import { decodeMessage, encodeMessage } from '../../consensus/core/codec.js';
import { CodecError } from '../../consensus/core/errors.js';
import type { Message } from '../../consensus/core/messages.js';

const conf = { voters: ['a', 'b', 'c'], learners: ['l'], votersOutgoing: [] };
const base = { from: 'a', to: 'b', term: 7 };
const samples: Message[] = [
  { ...base, type: 'vote', lastIndex: 10, lastTerm: 6, transfer: false },
  { ...base, type: 'preVote', lastIndex: 10, lastTerm: 6, transfer: true },
  { ...base, type: 'voteResp', reject: true },
  { ...base, type: 'preVoteResp', reject: false },
  {
    ...base,
    type: 'app',
    index: 4,
    logTerm: 6,
    commit: 3,
    entries: [
      { index: 5, term: 6, type: 'normal', data: new Uint8Array([1, 2, 3]) },
      { index: 6, term: 7, type: 'empty', data: new Uint8Array(0) },
      { index: 7, term: 7, type: 'conf', data: new TextEncoder().encode('{}') },
    ],
  },
  { ...base, type: 'appResp', index: 2 ** 40, reject: true, rejectHint: 3, logTerm: 2 },
  { ...base, type: 'heartbeat', commit: 9, ctx: 'read-1' },
  { ...base, type: 'heartbeat', commit: 9, ctx: null },
  { ...base, type: 'heartbeatResp', ctx: 'réad-✓' },
  { ...base, type: 'snap', meta: { index: 100, term: 5, conf }, offset: 16, totalBytes: 40, data: new Uint8Array(16).fill(9) },
  { ...base, type: 'snapResp', index: 100, offset: 32 },
  { ...base, type: 'timeoutNow' },
  { ...base, type: 'readIndex', ctx: 'c1' },
  { ...base, type: 'readIndexResp', ctx: 'c1', index: 12 },
];

function rejects(bytes: Uint8Array, pattern: RegExp): void {
  let caught: unknown;
  try {
    decodeMessage(bytes);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(CodecError);
  expect(caught).toMatchObject({ name: 'CodecError', code: 'message_malformed' });
  expect((caught as Error).message).toMatch(pattern);
}

describe('raft codec', () => {
  test.each(samples.map((m) => [m.type, m] as const))('round-trips %s', (_type, m) => {
    expect(decodeMessage(encodeMessage(m))).toEqual(m);
  });

  test('rejects empty, truncated and trailing bytes', () => {
    rejects(new Uint8Array(0), /truncated/);
    const good = encodeMessage(samples[4] as Message);
    for (const cut of [1, 5, good.length - 1]) rejects(good.subarray(0, cut), /truncated|past the end/);
    rejects(new Uint8Array([...good, 0]), /trailing/);
  });

  test('rejects unknown versions and message types', () => {
    const good = encodeMessage(samples[0] as Message);
    rejects(new Uint8Array([2, ...good.subarray(1)]), /version/);
    rejects(new Uint8Array([1, 99, ...good.subarray(2)]), /unknown message type/);
  });

  test('rejects fields that break what the core relies on', () => {
    const mk = (m: Record<string, unknown>): Uint8Array => encodeMessage(m as unknown as Message);
    // Entries that are not contiguous after the probe point would corrupt the follower's log.
    rejects(mk({ ...samples[4], entries: [{ index: 9, term: 6, type: 'normal', data: new Uint8Array(0) }] }), /expected 5/);
    rejects(mk({ ...samples[4], entries: [{ index: 5, term: 8, type: 'normal', data: new Uint8Array(0) }] }), /outside/);
    rejects(mk({ ...samples[9], offset: 30 }), /runs past totalBytes/);
    rejects(mk({ ...samples[9], meta: { index: 1, term: 1, conf: { voters: [], learners: [], votersOutgoing: [] } } }), /no voters/);
    rejects(mk({ ...samples[0], lastTerm: 8 }), /exceeds term/);
    rejects(mk({ ...samples[0], to: 'a' }), /itself/);
    rejects(mk({ ...samples[0], from: '' }), /from is empty/);
  });

  test('rejects bad booleans, bad UTF-8 and oversized varints', () => {
    const vote = encodeMessage(samples[2] as Message);
    const badBool = vote.slice();
    badBool[badBool.length - 1] = 2;
    rejects(badBool, /must be 0 or 1/);
    // version, tag, from = 1 byte 0xff (invalid UTF-8)
    rejects(new Uint8Array([1, 2, 1, 0xff, 1, 0x62, 1, 0]), /UTF-8/);
    rejects(new Uint8Array([1, 2, 1, 0x61, 1, 0x62, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0]), /out of range/);
    rejects(new Uint8Array([1, 2, 0x80, 0x80, 0x80, 0x04, 0x61]), /length|past the end|more than/);
  });

  test('fuzzed bytes never crash the decoder with anything but CodecError', () => {
    let state = 12345;
    const next = (): number => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
    const good = samples.map((m) => encodeMessage(m));
    for (let i = 0; i < 3000; i++) {
      const src = good[next() % good.length] ?? new Uint8Array(0);
      const bytes = src.slice();
      const flips = 1 + (next() % 3);
      for (let f = 0; f < flips && bytes.length > 0; f++) bytes[next() % bytes.length] = next() & 0xff;
      try {
        decodeMessage(bytes);
      } catch (err) {
        expect(err).toBeInstanceOf(CodecError);
      }
    }
  });
});
