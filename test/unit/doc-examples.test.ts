/**
 * The docs-examples harness (test/support/doc-examples.ts) that readme-examples.test.ts runs: it must
 * catch a documented response drifting from the real one, and must not lose examples on the way.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { compareShape, ELLIPSIS, extractExamples, parseCurl, parseDocJson, shellWords } from '../support/doc-examples';

const DOC_ID = '01m8b1gydeygx5jbeyqk9wz5y2';
const REAL_ID = '01m8vk1er81wgh532pdy055xx5';

/** A tool step as the API returns it. */
const realStep = () => ({
  index: 1,
  type: 'tool',
  startedAt: '2026-12-02T14:37:50.287Z',
  durationMs: 15,
  callId: 'call_00000001',
  name: 'code_executor',
  input: { code: 'print(1)' },
  output: 'stdout:\n1',
  isError: false,
  exitCode: 0,
});
const documentedStep =
  '{ "index": 1, "type": "tool", "startedAt": "2026-11-26T09:14:04.771Z", "durationMs": 4, "callId": "call_…", "name": "code_executor",' +
  ' "input": { "code": "print(1)" }, "output": "stdout:\\n1", "isError": false, "exitCode": 0 }';

describe('compareShape', () => {
  test('a documented object matching the real one exactly, bar numbers, timestamps and call_… ids, has no differences', () => {
    expect(compareShape(parseDocJson(documentedStep), realStep())).toEqual([]);
  });

  test('catches a key the docs show but the response lacks', () => {
    const real: Record<string, unknown> = realStep();
    delete real.exitCode;
    expect(compareShape(parseDocJson(documentedStep), real)).toEqual(['$.exitCode: documented, but missing from the response']);
  });

  test('catches a key the response has but the docs do not show, unless a … allows more', () => {
    const real = { ...realStep(), reset: false };
    expect(compareShape(parseDocJson(documentedStep), real)).toEqual([
      '$.reset: in the response (false), but not documented and no … allows it',
    ]);
    expect(compareShape(parseDocJson(documentedStep.replace(/ }$/, ', … }')), real)).toEqual([]);
  });

  test('catches a changed fixed string, a changed boolean or null, and a value of another type', () => {
    expect(compareShape(parseDocJson(documentedStep), { ...realStep(), output: '1\n' })).toEqual([
      '$.output: documented "stdout:\\n1", got "1\\n"',
    ]);
    expect(compareShape(parseDocJson('{"isError": false, "error": null}'), { isError: true, error: {} })).toEqual([
      '$.isError: documented false, got true',
      '$.error: documented null, got {}',
    ]);
    expect(compareShape(parseDocJson('{"n": 4, "s": "…", "o": {}, "a": []}'), { n: '4', s: 5, o: [], a: {} })).toEqual([
      '$.n: documented a number, got string "4"',
      '$.s: documented a string, got number 5',
      '$.o: documented an object, got array []',
      '$.a: documented an array, got object {}',
    ]);
  });

  test('compares numbers by type only, and reads timestamps and "prefix…" strings as patterns', () => {
    expect(compareShape(parseDocJson('{"n": 812, "t": "2026-11-26T09:14:03.512Z", "id": "call_…"}'), { n: 3.5, t: '2027-01-01T00:00:00.000Z', id: 'call_x' })).toEqual([]);
    expect(compareShape(parseDocJson('{"t": "2026-11-26T09:14:03.512Z", "id": "call_…"}'), { t: 'yesterday', id: 'toolu_x' })).toEqual([
      '$.t: documented a timestamp, got "yesterday"',
      '$.id: documented a string starting "call_", got "toolu_x"',
    ]);
  });

  test('a documented job id stands for the real one, in any string', () => {
    const doc = parseDocJson(`{"id": "${DOC_ID}", "location": "/v1/jobs/${DOC_ID}"}`);
    expect(compareShape(doc, { id: REAL_ID, location: `/v1/jobs/${REAL_ID}` }, { ids: { [DOC_ID]: REAL_ID } })).toEqual([]);
    expect(compareShape(doc, { id: DOC_ID, location: `/v1/jobs/${DOC_ID}` }, { ids: { [DOC_ID]: REAL_ID } })).toHaveLength(2);
  });

  test('arrays: exact length and element by element, unless a trailing … allows more', () => {
    expect(compareShape(parseDocJson('[1, "a"]'), [1, 'a', true])).toEqual(['$: documented 2 elements, got 3']);
    expect(compareShape(parseDocJson('[1, "a"]'), [1, 'b'])).toEqual(['$[1]: documented "a", got "b"']);
    expect(compareShape(parseDocJson('[1, …]'), [1, 'a', true])).toEqual([]);
    expect(compareShape(parseDocJson('[1, …]'), [])).toEqual(['$: documented at least 1 elements, got 0']);
    expect(compareShape(parseDocJson('[...]'), [{ any: 'thing' }])).toEqual([]);
    expect(compareShape(parseDocJson('{"usage": {…}}'), { usage: { inputTokens: 1 } })).toEqual([]);
    expect(compareShape(parseDocJson('{"steps": [{"type": "model"}]}'), { steps: [{ type: 'model', text: '' }] })).toEqual([
      '$.steps[0].text: in the response (""), but not documented and no … allows it',
    ]);
  });
});

describe('parseDocJson', () => {
  test('reads JSON with … and ... elisions', () => {
    expect(parseDocJson('…')).toBe(ELLIPSIS);
    expect(parseDocJson('{"a": [1, {"b": null}], "c": "d\\n…"}')).toEqual({ a: [1, { b: null }], c: 'd\n…' });
  });

  test.each(['{"a": 1,}', '{"a" 1}', '{a: 1}', '[1 2]', '{"a": 1} trailing', '"unterminated', '{"a": 1, "a": 2}', "{'a': 1}"])(
    'refuses %s',
    (text) => {
      expect(() => parseDocJson(text)).toThrow(/documented JSON/);
    },
  );
});

describe('curl commands', () => {
  test('shell words: quotes, escapes and line continuations', () => {
    expect(shellWords(`curl -s \\\n  -H 'A: b c' -d "{\\"x\\": 1}" a\\ b`)).toEqual(['curl', '-s', '-H', 'A: b c', '-d', '{"x": 1}', 'a b']);
  });

  test('parseCurl reads method, headers, body and -o; an option it does not know is an error', () => {
    expect(parseCurl(`curl -s -X POST http://h/v1/jobs -H 'Content-Type: application/json' -d '{"task": "t"}'`)).toEqual({
      method: 'POST',
      url: 'http://h/v1/jobs',
      headers: { 'content-type': 'application/json' },
      body: '{"task": "t"}',
    });
    expect(parseCurl('curl -sN http://h/e')).toEqual({ method: 'GET', url: 'http://h/e', headers: {} });
    expect(parseCurl('curl -s -o chart.png http://h/a')).toMatchObject({ method: 'GET', outputFile: 'chart.png' });
    expect(() => parseCurl('curl -k http://h/')).toThrow(/not understood/);
  });
});

describe('extractExamples', () => {
  const md = [
    '# Doc',
    '## API',
    '```sh',
    'curl -s -X POST http://h/v1/jobs \\',
    `  -d '{"task": "t"}'`,
    `# → 202, {"id": "${DOC_ID}", …}`,
    '',
    '# a comment, not a heading',
    `curl -s http://h/v1/jobs/${DOC_ID}`,
    '```',
    '',
    '```json',
    '{"status": "succeeded", "steps": [...]}',
    '```',
    '',
    'Prose between.',
    '',
    '```sh',
    'curl -sN http://h/e',
    '```',
    'More prose.',
    '```json',
    '{"not": "a response: prose lies between"}',
    '```',
    '## Next',
    '```sh',
    'curl -s http://h/outside',
    '```',
  ].join('\n');

  test('finds each command of the section, with its # → response or the ```json block right after its block', () => {
    const examples = extractExamples(md, '## API', 'doc.md');
    expect(examples.map((e) => [e.where, e.request.method, e.request.url])).toEqual([
      ['doc.md:4', 'POST', 'http://h/v1/jobs'],
      ['doc.md:9', 'GET', `http://h/v1/jobs/${DOC_ID}`],
      ['doc.md:19', 'GET', 'http://h/e'],
    ]);
    expect(examples[0]?.expected).toMatchObject({ status: 202, body: { id: DOC_ID } });
    expect(examples[1]?.expected).toMatchObject({ body: { status: 'succeeded', steps: [] } });
    expect(examples[2]?.expected).toBeUndefined();
  });

  test("the README's and the deployment guide's examples are all found, with their documented responses", () => {
    const root = join(__dirname, '..', '..');
    const readme = extractExamples(readFileSync(join(root, 'README.md'), 'utf8'), '## The API (v1)', 'README.md');
    expect(readme.length).toBeGreaterThanOrEqual(5);
    const poll = readme.find((e) => e.request.method === 'GET' && /\/v1\/jobs\/\w{26}$/.test(e.request.url));
    expect(poll?.expected?.body).toMatchObject({ status: 'succeeded', steps: expect.any(Array) });
    const tryIt = extractExamples(readFileSync(join(root, 'docs', 'deployment.md'), 'utf8'), '### Try it', 'docs/deployment.md');
    expect(tryIt.map((e) => e.request.method)).toEqual(['POST', 'GET']);
    expect(tryIt.every((e) => e.expected?.body !== undefined)).toBe(true);
  });
});
