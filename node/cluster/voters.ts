// Which Raft membership change the leader makes next: a pure function of the member list, the Raft
// configuration, replication progress, health, RTT and the time, so placement can be tested deterministically.
// One change per call: Raft changes membership one server at a time, and the leader calls again once it applied.
import type { Member, Settings } from '../../consensus/cluster/index.js';

/** A learner counts as caught up when its match index is within this many entries of the leader's last index. */
export const learnerCatchUpMaxLag = 16;
/** Voters kept in a cluster of fewer than `largeClusterMembersMin` members. */
export const smallClusterVoters = 3;
/** Members from which the leader keeps five voters (if settings.desiredVoters allows). */
export const largeClusterMembersMin = 5;
export const largeClusterVoters = 5;

export interface VoterInputs {
  /** The leader's own id: it never demotes or removes itself here (leadership transfer comes first). */
  self: string;
  members: readonly Member[];
  conf: { voters: readonly string[]; learners: readonly string[]; votersOutgoing: readonly string[] };
  lastIndex: number;
  /** The leader's match index per peer. */
  match: ReadonlyMap<string, number>;
  /** Members the leader can reach now (itself included). */
  healthy: ReadonlySet<string>;
  /** Since when each unhealthy member has been unhealthy (ms). */
  unhealthySinceMs: ReadonlyMap<string, number>;
  /** Smoothed RTT from the leader, ms (missing: unknown). */
  rttMs: ReadonlyMap<string, number>;
  nowMs: number;
  settings: Readonly<Settings>;
}

export type VoterAction =
  | { kind: 'removeFromConf'; id: string; reason: string }
  | { kind: 'addLearner'; id: string; reason: string }
  | { kind: 'setRole'; id: string; role: 'voter' | 'learner'; reason: string }
  | { kind: 'promote'; id: string; reason: string }
  | { kind: 'demote'; id: string; reason: string };

/** Voters the leader aims for: 3, or 5 once there are at least 5 members, capped by settings.desiredVoters. */
export function targetVoters(memberCount: number, desiredVoters: number): number {
  const byCount = memberCount >= largeClusterMembersMin ? largeClusterVoters : smallClusterVoters;
  return Math.max(1, Math.min(desiredVoters, byCount, memberCount));
}

export function nextVoterAction(inp: VoterInputs): VoterAction | null {
  const { conf, self } = inp;
  const members = new Map(inp.members.map((m) => [m.id, m]));
  const inConf = new Set([...conf.voters, ...conf.learners]);
  // 1. The configuration follows the member list: removed members leave it, new members enter it as learners.
  for (const id of [...conf.voters, ...conf.learners]) {
    if (id !== self && !members.has(id)) return { kind: 'removeFromConf', id, reason: 'no longer a member' };
  }
  for (const m of inp.members) {
    if (!inConf.has(m.id)) return { kind: 'addLearner', id: m.id, reason: 'new member' };
  }
  // 2. Member records say what the configuration is.
  for (const id of conf.voters) {
    if (members.get(id)?.role === 'learner') return { kind: 'setRole', id, role: 'voter', reason: 'is a voter in the Raft configuration' };
  }
  for (const id of conf.learners) {
    if (members.get(id)?.role === 'voter') return { kind: 'setRole', id, role: 'learner', reason: 'is a learner in the Raft configuration' };
  }
  if (conf.votersOutgoing.length > 0) return null; // a joint configuration is still settling
  // 3. Voter count, placement and replacement.
  const target = targetVoters(inp.members.length, inp.settings.desiredVoters);
  const dead = (id: string): boolean => id !== self && !inp.healthy.has(id) && inp.nowMs - (inp.unhealthySinceMs.get(id) ?? inp.nowMs) >= inp.settings.voterReplaceAfterMs;
  const voters = conf.voters;
  const deadVoters = voters.filter(dead);
  const candidate = bestCandidate(inp);
  if (voters.length > target) {
    const victim = demotionOrder(inp).find((id) => id !== self);
    if (victim !== undefined) return { kind: 'demote', id: victim, reason: dead(victim) ? 'unreachable beyond voterReplaceAfterMs' : `more voters than ${target}` };
  }
  if (voters.length < target && candidate !== undefined) return { kind: 'promote', id: candidate, reason: `fewer voters than ${target}` };
  // A voter gone beyond the timeout is replaced: promote first (quorum never shrinks), demote it on the next call.
  if (deadVoters.length > 0 && candidate !== undefined) return { kind: 'promote', id: candidate, reason: `replaces unreachable voter ${deadVoters[0] ?? ''}` };
  // Rebalance: two voters share a site while a learner could cover a site no voter has. Promoting it makes one
  // voter too many, and the next call demotes one of the pair (site duplicates go first), so this converges.
  if (candidate !== undefined && coversNewSite(inp, candidate) && hasSharedVoterSite(inp)) {
    return { kind: 'promote', id: candidate, reason: 'spreads voters over more sites' };
  }
  return null;
}

/** Sites of the voters that count: an unreachable voter's site is not covered (it is the one being replaced). */
function liveVoterSites(inp: VoterInputs): Set<string> {
  const members = new Map(inp.members.map((m) => [m.id, m]));
  return new Set(inp.conf.voters.filter((id) => inp.healthy.has(id)).map((id) => members.get(id)?.site ?? ''));
}

function coversNewSite(inp: VoterInputs, id: string): boolean {
  const site = inp.members.find((m) => m.id === id)?.site ?? '';
  return site !== '' && !liveVoterSites(inp).has(site);
}

function hasSharedVoterSite(inp: VoterInputs): boolean {
  const members = new Map(inp.members.map((m) => [m.id, m]));
  const seen = new Set<string>();
  for (const id of inp.conf.voters) {
    const site = members.get(id)?.site ?? '';
    if (site === '') continue;
    if (seen.has(site)) return true;
    seen.add(site);
  }
  return false;
}

/** The healthy, caught-up learner to promote: a site no live voter has first, then the lowest RTT, then id. */
function bestCandidate(inp: VoterInputs): string | undefined {
  const members = new Map(inp.members.map((m) => [m.id, m]));
  const voterSites = liveVoterSites(inp);
  const candidates = inp.conf.learners.filter(
    (id) => members.has(id) && inp.healthy.has(id) && (id === inp.self || (inp.match.get(id) ?? 0) >= inp.lastIndex - learnerCatchUpMaxLag),
  );
  const key = (id: string): [number, number, string] => {
    const site = members.get(id)?.site ?? '';
    return [site !== '' && !voterSites.has(site) ? 0 : 1, inp.rttMs.get(id) ?? Number.POSITIVE_INFINITY, id];
  };
  return candidates.sort((a, b) => compareKeys(key(a), key(b)))[0];
}

/** Voters in the order they should step down: unreachable first, then those sharing a site, then the highest RTT. */
function demotionOrder(inp: VoterInputs): string[] {
  const members = new Map(inp.members.map((m) => [m.id, m]));
  const siteCount = new Map<string, number>();
  for (const id of inp.conf.voters) {
    const site = members.get(id)?.site ?? '';
    siteCount.set(site, (siteCount.get(site) ?? 0) + 1);
  }
  const key = (id: string): [number, number, number, string] => {
    const site = members.get(id)?.site ?? '';
    const unhealthyFor = inp.healthy.has(id) ? 0 : inp.nowMs - (inp.unhealthySinceMs.get(id) ?? inp.nowMs);
    return [-unhealthyFor, (siteCount.get(site) ?? 0) > 1 || site === '' ? 0 : 1, -(inp.rttMs.get(id) ?? 0), id];
  };
  return [...inp.conf.voters].sort((a, b) => compareKeys(key(a), key(b)));
}

function compareKeys(a: readonly (number | string)[], b: readonly (number | string)[]): number {
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (x === y || x === undefined || y === undefined) continue;
    return x < y ? -1 : 1;
  }
  return 0;
}
