import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz'; // Crockford base32, lower case

// Random bytes come from the system in blocks, one call per 256 ids: a call per id showed up in
// profiles of POST /v1/jobs under load.
const pool = Buffer.alloc(16 * 256);
let poolOffset = pool.length;

function randomBytes16(): Buffer {
  if (poolOffset === pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  poolOffset += 16;
  return pool.subarray(poolOffset - 16, poolOffset);
}

/**
 * A job id: 10 characters of millisecond time then 16 random ones (like a ULID), so ids sort by
 * creation time as plain strings, which the job list relies on.
 */
export function newJobId(now = Date.now()): string {
  let time = '';
  let t = now;
  for (let i = 0; i < 10; i++) {
    time = ALPHABET[t % 32] + time;
    t = Math.floor(t / 32);
  }
  const bytes = randomBytes16();
  let rand = '';
  for (const b of bytes) rand += ALPHABET[b % 32];
  return time + rand;
}

/** The creation time (ms since the epoch) a job id carries in its first 10 characters. */
export function timeOfJobId(id: string): number {
  let t = 0;
  for (const c of id.slice(0, 10)) t = t * 32 + ALPHABET.indexOf(c);
  return t;
}

/** What a job id looks like; anything else in a URL is not a job (404 without touching Redis). */
export const JOB_ID_PATTERN = /^[0-9a-hjkmnp-tv-z]{26}$/;
