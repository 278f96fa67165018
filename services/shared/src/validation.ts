import type { z } from 'zod';
import { ValidationError } from './errors';

/** Parses `input` with `schema` or throws a ValidationError naming every offending field. */
export function parseOrThrow<T>(schema: z.ZodType<T>, input: unknown, what: string): T {
  const proto = findProtoKey(input);
  if (proto !== null) {
    // JSON.parse makes `__proto__` an own key; some schemas (records) skip it silently, so refuse it here.
    throw new ValidationError(`Invalid ${what}: ${proto}: "__proto__" is not allowed as a key`, [
      { field: proto, message: '"__proto__" is not allowed as a key' },
    ]);
  }
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const errors = result.error.issues.map((issue) => {
    const field = issue.path.map(String).join('.');
    if (issue.code === 'unrecognized_keys') {
      const keys = issue.keys.map((k) => (field ? `${field}.${k}` : k));
      return { field: keys.join(','), message: `unknown field${keys.length > 1 ? 's' : ''}: ${keys.join(', ')}` };
    }
    return { field, message: issue.message };
  });
  const first = errors[0];
  const detail = first ? `Invalid ${what}: ${first.field ? `${first.field}: ` : ''}${first.message}` : `Invalid ${what}.`;
  throw new ValidationError(detail, errors);
}

/**
 * Dotted path of the first own `__proto__` key anywhere in `value`, or null. Iterative, so a body
 * nested thousands of levels deep cannot exhaust the stack.
 */
function findProtoKey(value: unknown): string | null {
  const pending: [unknown, string[]][] = [[value, []]];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const [node, path] = next;
    if (node === null || typeof node !== 'object') continue;
    if (!Array.isArray(node) && Object.prototype.hasOwnProperty.call(node, '__proto__')) return [...path, '__proto__'].join('.');
    for (const [key, child] of Object.entries(node)) {
      if (child !== null && typeof child === 'object') pending.push([child, path.length < MAX_REPORTED_DEPTH ? [...path, key] : path]);
    }
  }
  return null;
}

/** Paths deeper than this are reported cut short: the field names are for people, not for parsers. */
const MAX_REPORTED_DEPTH = 16;
