import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz'; // Crockford base32, lower case

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
  const bytes = randomBytes(16);
  let rand = '';
  for (const b of bytes) rand += ALPHABET[b % 32];
  return time + rand;
}

/** What a job id looks like; anything else in a URL is not a job (404 without touching Redis). */
export const JOB_ID_PATTERN = /^[0-9a-hjkmnp-tv-z]{26}$/;
