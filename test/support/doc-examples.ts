/**
 * The documentation's API examples as data: the curl commands of a markdown section and the response
 * each is documented with, and a comparer that tells whether a real response has the documented shape.
 *
 * A documented response is the text after `# →` on the line(s) following a command (`# → 202, {…}`,
 * `# → {…}` or `# → 202`), or a ```json block right after the command's block (for the block's last
 * command). Its JSON may elide, and only where it says so:
 *
 * - `…` (or `...`) as a value: any value; as an object member (`{"id": "x", …}`): any further keys;
 *   as the last array element (`[{…}, …]`, or `[...]`): any further elements;
 * - `"…"`: any string; `"call_…"`: any string starting with `call_`;
 * - an ISO 8601 timestamp: any timestamp.
 *
 * Everything else is literal: an object shown without `…` must have exactly its keys, arrays their
 * length, strings, booleans and null their value; numbers are compared by type only (durations and
 * token counts vary). Job ids are the one exception the caller supplies: see `compareShape`'s `ids`.
 */

// ---- documented JSON ---------------------------------------------------------------------------

/** Marks a value, an object member or a trailing array element elided with `…`. */
export const ELLIPSIS: unique symbol = Symbol('…');
/** Set on an object or array whose `…` allows further keys or elements. */
export const OPEN: unique symbol = Symbol('open');

export type DocValue = typeof ELLIPSIS | null | boolean | number | string | DocValue[] | { [key: string]: DocValue };

const isOpen = (v: object): boolean => (v as { [OPEN]?: boolean })[OPEN] === true;

/** Parses documented JSON: JSON plus the `…` elisions above. Throws, naming the offset, on anything else. */
export function parseDocJson(text: string): DocValue {
  let i = 0;
  const fail = (what: string): never => {
    throw new Error(`documented JSON: ${what} at offset ${i}: ${JSON.stringify(text.slice(Math.max(0, i - 20), i + 20))}`);
  };
  const ws = (): void => {
    while (i < text.length && /\s/.test(text[i] as string)) i++;
  };
  const ellipsis = (): boolean => {
    if (text.startsWith('…', i)) {
      i += 1;
      return true;
    }
    if (text.startsWith('...', i)) {
      i += 3;
      return true;
    }
    return false;
  };
  const string = (): string => {
    let end = i + 1;
    while (end < text.length && text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
    if (end >= text.length) return fail('unterminated string');
    let parsed: string;
    try {
      parsed = JSON.parse(text.slice(i, end + 1)) as string;
    } catch {
      return fail('malformed string');
    }
    i = end + 1;
    return parsed;
  };
  const value = (): DocValue => {
    ws();
    if (ellipsis()) return ELLIPSIS;
    const c = text[i];
    if (c === '{') {
      i++;
      const obj: { [key: string]: DocValue } = {};
      ws();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (ellipsis()) {
          Object.defineProperty(obj, OPEN, { value: true });
        } else {
          if (text[i] !== '"') fail('expected a key');
          const key = string();
          if (Object.hasOwn(obj, key)) fail(`repeated key ${JSON.stringify(key)}`);
          ws();
          if (text[i] !== ':') fail('expected :');
          i++;
          obj[key] = value();
        }
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return obj;
        }
        fail('expected , or }');
      }
    }
    if (c === '[') {
      i++;
      const arr: DocValue[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        const item = value();
        ws();
        if (item === ELLIPSIS && text[i] === ']') {
          // A trailing `…` (or `[...]`): further elements allowed.
          Object.defineProperty(arr, OPEN, { value: true });
          i++;
          return arr;
        }
        arr.push(item);
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail('expected , or ]');
      }
    }
    if (c === '"') return string();
    const lit = /^(?:true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(text.slice(i));
    if (!lit) return fail('expected a value');
    i += lit[0].length;
    return JSON.parse(lit[0]) as DocValue;
  };
  const out = value();
  ws();
  if (i !== text.length) fail('unexpected text after the value');
  return out;
}

// ---- comparing -----------------------------------------------------------------------------------

const TIMESTAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)$/;

const show = (v: unknown): string => {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 120 ? `${s.slice(0, 117)}...` : s;
};
const kind = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

/**
 * How `actual` differs from the documented `doc`: one line per difference, each naming its path
 * (`steps[1].output`); empty when it matches. `ids` maps a job id as documented to the one the
 * real request made, wherever it appears in a string.
 */
export function compareShape(doc: DocValue, actual: unknown, opts: { ids?: Record<string, string> } = {}, path = '$'): string[] {
  if (doc === ELLIPSIS) return [];
  if (doc === null || typeof doc === 'boolean') {
    return actual === doc ? [] : [`${path}: documented ${show(doc)}, got ${show(actual)}`];
  }
  if (typeof doc === 'number') {
    return typeof actual === 'number' ? [] : [`${path}: documented a number, got ${kind(actual)} ${show(actual)}`];
  }
  if (typeof doc === 'string') {
    if (typeof actual !== 'string') return [`${path}: documented a string, got ${kind(actual)} ${show(actual)}`];
    if (doc.endsWith('…')) {
      const prefix = doc.slice(0, -1);
      return actual.startsWith(prefix) ? [] : [`${path}: documented a string starting ${show(prefix)}, got ${show(actual)}`];
    }
    if (TIMESTAMP.test(doc)) return TIMESTAMP.test(actual) ? [] : [`${path}: documented a timestamp, got ${show(actual)}`];
    let expected = doc;
    for (const [documented, real] of Object.entries(opts.ids ?? {})) expected = expected.split(documented).join(real);
    return actual === expected ? [] : [`${path}: documented ${show(expected)}, got ${show(actual)}`];
  }
  if (Array.isArray(doc)) {
    if (!Array.isArray(actual)) return [`${path}: documented an array, got ${kind(actual)} ${show(actual)}`];
    const out: string[] = [];
    if (isOpen(doc) ? actual.length < doc.length : actual.length !== doc.length) {
      out.push(`${path}: documented ${isOpen(doc) ? 'at least ' : ''}${doc.length} elements, got ${actual.length}`);
    }
    doc.forEach((d, n) => {
      if (n < actual.length) out.push(...compareShape(d, actual[n], opts, `${path}[${n}]`));
    });
    return out;
  }
  if (kind(actual) !== 'object') return [`${path}: documented an object, got ${kind(actual)} ${show(actual)}`];
  const real = actual as Record<string, unknown>;
  const out: string[] = [];
  for (const key of Object.keys(doc)) {
    if (!Object.hasOwn(real, key)) out.push(`${path}.${key}: documented, but missing from the response`);
    else out.push(...compareShape(doc[key] as DocValue, real[key], opts, `${path}.${key}`));
  }
  if (!isOpen(doc)) {
    for (const key of Object.keys(real)) {
      if (!Object.hasOwn(doc, key)) out.push(`${path}.${key}: in the response (${show(real[key])}), but not documented and no … allows it`);
    }
  }
  return out;
}

// ---- curl commands -------------------------------------------------------------------------------

export interface CurlRequest {
  method: string;
  /** As documented, e.g. `http://127.0.0.1:3000/v1/jobs`. */
  url: string;
  headers: Record<string, string>;
  body?: string;
  /** `-o FILE`: the body is saved, not shown. */
  outputFile?: string;
  /** `-F name=value` and `-F name=@file` parts, in order: a multipart/form-data body. */
  form?: { name: string; value?: string; file?: string }[];
}

/** Splits a shell command line into words: quotes, backslash escapes and line continuations. */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string;
    if (c === '\\' && line[i + 1] === '\n') {
      i++;
    } else if (/\s/.test(c)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new Error(`unterminated ' in ${JSON.stringify(line)}`);
      word = (word ?? '') + line.slice(i + 1, end);
      i = end;
    } else if (c === '"') {
      let s = '';
      for (i++; i < line.length && line[i] !== '"'; i++) {
        if (line[i] === '\\' && /["\\$`]/.test(line[i + 1] ?? '')) i++;
        s += line[i];
      }
      if (i >= line.length) throw new Error(`unterminated " in ${JSON.stringify(line)}`);
      word = (word ?? '') + s;
    } else if (c === '\\') {
      word = (word ?? '') + (line[++i] ?? '');
    } else {
      word = (word ?? '') + c;
    }
  }
  if (word !== undefined) words.push(word);
  return words;
}

/** A curl command as the request it makes. Only the options the docs use are understood; any other is an error. */
export function parseCurl(command: string): CurlRequest {
  const words = shellWords(command);
  if (words[0] !== 'curl') throw new Error(`not a curl command: ${command}`);
  const req: CurlRequest = { method: '', url: '', headers: {} };
  for (let n = 1; n < words.length; n++) {
    const w = words[n] as string;
    const arg = (): string => {
      const v = words[++n];
      if (v === undefined) throw new Error(`${w} needs a value in: ${command}`);
      return v;
    };
    if (/^-[sN]+$/.test(w)) continue; // silent, unbuffered: no effect on the request
    if (w === '-X') req.method = arg();
    else if (w === '-H') {
      const h = arg();
      const colon = h.indexOf(':');
      if (colon <= 0) throw new Error(`malformed header ${JSON.stringify(h)} in: ${command}`);
      req.headers[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim();
    } else if (w === '-d') req.body = arg();
    else if (w === '-o') req.outputFile = arg();
    else if (w === '-F') {
      // `name=value` or `name=@file`, with an optional `;type=…` that sets the part's content type.
      const [part] = arg().split(/;type=[^;]*$/) as [string];
      const eq = part.indexOf('=');
      if (eq <= 0) throw new Error(`malformed form part ${JSON.stringify(part)} in: ${command}`);
      const [name, value] = [part.slice(0, eq), part.slice(eq + 1)];
      (req.form ??= []).push(value.startsWith('@') ? { name, file: value.slice(1) } : { name, value });
    }
    else if (!w.startsWith('-') && req.url === '') req.url = w;
    else throw new Error(`curl option ${JSON.stringify(w)} is not understood by the docs test, in: ${command}`);
  }
  if (req.url === '') throw new Error(`no URL in: ${command}`);
  req.method ||= req.body === undefined && req.form === undefined ? 'GET' : 'POST';
  return req;
}

// ---- markdown -------------------------------------------------------------------------------------

export interface DocExample {
  /** `README.md:97`: where the command starts. */
  where: string;
  command: string;
  request: CurlRequest;
  /** The documented response, when the docs show one. */
  expected?: { status?: number; body?: DocValue; text: string };
}

/**
 * The lines of `markdown` under `heading` (an exact heading line), up to the next heading of its
 * level or above; a `#` line inside a code block is no heading.
 */
export function section(markdown: string, heading: string): { lines: string[]; firstLine: number } {
  const lines = markdown.split('\n');
  const start = lines.indexOf(heading);
  if (start < 0) throw new Error(`no heading ${JSON.stringify(heading)}`);
  const level = (/^#+/.exec(heading) as RegExpExecArray)[0].length;
  let end = start + 1;
  for (let inCode = false; end < lines.length; end++) {
    const line = lines[end] as string;
    if (line.startsWith('```')) inCode = !inCode;
    const h = /^(#+) /.exec(line);
    if (!inCode && h && (h[1] as string).length <= level) break;
  }
  return { lines: lines.slice(start + 1, end), firstLine: start + 2 };
}

/** The bodies of the ```lang code blocks of a markdown section, in order. */
export function codeBlocks(markdown: string, heading: string, lang: string): string[] {
  const blocks: string[] = [];
  let body: string[] | undefined;
  for (const line of section(markdown, heading).lines) {
    if (body === undefined) {
      if (line.trim() === '```' + lang) body = [];
    } else if (line.trim() === '```') {
      blocks.push(body.join('\n'));
      body = undefined;
    } else {
      body.push(line);
    }
  }
  return blocks;
}

function parseExpected(text: string): NonNullable<DocExample['expected']> {
  const m = /^(\d{3})\b,?\s*(.*)$/s.exec(text);
  const status = m ? Number(m[1]) : undefined;
  const rest = (m ? (m[2] as string) : text).trim();
  return { ...(status === undefined ? {} : { status }), ...(rest === '' ? {} : { body: parseDocJson(rest) }), text };
}

/**
 * Every curl command in the code blocks of a markdown section, with its documented response. A
 * ```json block counts as the response of the command just before it when only blank lines lie
 * between the two blocks.
 */
export function extractExamples(markdown: string, heading: string, file: string): DocExample[] {
  const { lines, firstLine } = section(markdown, heading);
  const examples: DocExample[] = [];
  let lastBlockEnd = -1;
  let lastBlockHadCurl = false;
  for (let n = 0; n < lines.length; n++) {
    const fence = /^```(\w*)\s*$/.exec(lines[n] as string);
    if (!fence) continue;
    const lang = fence[1];
    const start = n + 1;
    let end = start;
    while (end < lines.length && !/^```\s*$/.test(lines[end] as string)) end++;
    if (end >= lines.length) throw new Error(`${file}:${firstLine + n}: unterminated code block`);
    const body = lines.slice(start, end);
    const adjacent = lastBlockHadCurl && lines.slice(lastBlockEnd + 1, n).every((l) => l.trim() === '');
    const before = examples.length;
    if (lang === 'json' && adjacent) {
      const previous = examples.at(-1) as DocExample;
      if (previous.expected !== undefined) throw new Error(`${file}:${firstLine + n}: ${previous.where} already has a # → response`);
      previous.expected = parseExpected(body.join('\n'));
    } else if (lang === 'sh' || lang === 'bash' || lang === '') {
      for (let k = 0; k < body.length; k++) {
        const line = body[k] as string;
        if (/^\s*curl\s/.test(line)) {
          const at = k;
          let command = line;
          while (command.endsWith('\\') && k + 1 < body.length) command += `\n${body[++k] as string}`;
          const example: DocExample = { where: `${file}:${firstLine + start + at}`, command, request: parseCurl(command) };
          const answer: string[] = [];
          while (k + 1 < body.length && /^\s*# →/.test(body[k + 1] as string)) answer.push((body[++k] as string).replace(/^\s*# →\s*/, ''));
          if (answer.length > 0) example.expected = parseExpected(answer.join(' '));
          examples.push(example);
        }
      }
    }
    lastBlockHadCurl = examples.length > before;
    lastBlockEnd = end;
    n = end;
  }
  return examples;
}
