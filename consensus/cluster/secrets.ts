// Secrets never enter the log: the proposer hashes a token's secret and commands carry only the hash.
// Pure (no I/O, no randomness): generating the secret is the caller's job.
import { createHash } from 'node:crypto';

/** Hex SHA-256 of a token secret, as stored in `apiTokens`/`joinTokens` and passed to verifyApiToken. */
export function hashSecret(secret: string | Uint8Array): string {
  return createHash('sha256').update(secret).digest('hex');
}
