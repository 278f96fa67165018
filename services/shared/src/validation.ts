import type { z } from 'zod';
import { ValidationError } from './errors';

/** Parses `input` with `schema` or throws a ValidationError naming every offending field. */
export function parseOrThrow<T>(schema: z.ZodType<T>, input: unknown, what: string): T {
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
