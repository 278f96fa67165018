/** Names of files a job takes in (inputs) or hands back (artifacts), as clients and the model see them. */

/** Longest name, in UTF-8 bytes: what common file systems allow for one path component. */
export const MAX_FILE_NAME_BYTES = 255;

/**
 * Why `name` cannot name an input file, or null when it can. Inputs appear as `/input/<name>` in the
 * sandbox and on disk under their own names, so a name is one plain path component: printable UTF-8,
 * no `/` or `\`, not `.` or `..`, not hidden (a leading `.`), at most 255 bytes. Refused, never
 * rewritten: a client must know the name its file will have.
 */
export function inputNameProblem(name: string): string | null {
  if (name.length === 0) return 'must not be empty';
  if (Buffer.byteLength(name, 'utf8') > MAX_FILE_NAME_BYTES) return `must be at most ${MAX_FILE_NAME_BYTES} bytes`;
  // A lone surrogate has no UTF-8 form: it would reach the disk as U+FFFD, another name.
  if (/\p{Surrogate}/u.test(name)) return 'must be valid UTF-8';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return 'must not contain control characters (NUL, newline, …)';
  if (name.includes('/') || name.includes('\\')) return 'must be a plain file name, without / or \\';
  if (name.startsWith('.')) return 'must not start with a dot';
  if (name.trim() !== name) return 'must not start or end with a space';
  return null;
}
