/**
 * The documentation's API examples are what the API really answers. Every curl command of the
 * README's "The API (v1)" section and of docs/deployment.md's "Try it" block is run, in order,
 * against a real stack whose scripted model does what the examples describe, and each documented
 * response is compared with the real one (test/support/doc-examples.ts says how strictly). Job ids
 * differ from the documented ones: a documented id stands for the job the latest POST created.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { extractExamples, compareShape, type DocExample } from '../support/doc-examples';
import { codeCall, scriptBySteps, startModelServer, type ModelServer, type Script } from '../support/model-server';
import { startStack, waitForJobEnd, type Stack } from '../support/stack';

const ROOT = join(__dirname, '..', '..');
/** Where the docs say the API listens. */
const DOCUMENTED_ORIGIN = 'http://127.0.0.1:3000';
const JOB_ID = /[0-9a-hjkmnp-tv-z]{26}/g;

/** The jobs the examples submit, as the docs tell them (the usage adds up to the README's 812 in, 64 out). */
const BY_TASK = scriptBySteps({
  'What is the sum of the integers from 1 to 100? Use Python.': [
    codeCall('print(sum(range(101)))', { usage: { inputTokens: 371, outputTokens: 38 } }),
    { text: 'The sum is 5050.', usage: { inputTokens: 441, outputTokens: 26 } },
  ],
  'Summarise /data/report.csv': [
    codeCall(
      [
        'import matplotlib.pyplot as plt',
        "plt.bar(['north', 'south'], [120, 80])",
        "plt.savefig('/output/chart.png')",
        "print('saved')",
      ].join('\n'),
    ),
    { text: 'North sold 120, south 80; the chart is chart.png.' },
  ],
  'Plot the sales in /input/sales.csv by region. Use Python.': [
    codeCall(
      [
        'import pandas as pd, matplotlib.pyplot as plt',
        "pd.read_csv('/input/sales.csv').plot.bar(x='region', y='sales')",
        "plt.savefig('/output/chart.png')",
      ].join('\n'),
    ),
    { text: 'North sold the most; the chart is chart.png.' },
  ],
});
/** A job with input files has their list after its task in the first message; the script keys on the task. */
const SCRIPT: Script = (req) => BY_TASK({ ...req, task: req.task.split('\n\nFiles given with this task')[0] as string });

/** The files the examples upload with `-F file=@…`, as a reader following along would have them. */
const FIXTURES: Record<string, string> = { 'sales.csv': 'region,sales\nnorth,120\nsouth,80\n' };

const SOURCES = [
  { file: 'README.md', heading: '## The API (v1)', minCommands: 5, minResponses: 2 },
  { file: 'docs/deployment.md', heading: '### Try it', minCommands: 2, minResponses: 2 },
];

let model: ModelServer;
let stack: Stack;
beforeAll(async () => {
  model = await startModelServer(SCRIPT);
  stack = await startStack(model);
});
afterAll(async () => {
  await stack?.close();
  await model?.close();
});

/** Runs one example; the differences from its documented response, and the job it created, if any. */
async function run(example: DocExample, latestJob: string | undefined): Promise<{ problems: string[]; created?: string }> {
  const { request: req, expected } = example;
  if (!req.url.startsWith(`${DOCUMENTED_ORIGIN}/`)) return { problems: [`${example.where}: the URL is not on ${DOCUMENTED_ORIGIN}`] };
  const documentedIds = new Set([...req.url.matchAll(JOB_ID), ...(expected?.text ?? '').matchAll(JOB_ID)].map((m) => m[0]));
  let url = stack.api.url + req.url.slice(DOCUMENTED_ORIGIN.length);
  for (const id of documentedIds) {
    if (req.url.includes(id) && latestJob === undefined) return { problems: [`${example.where}: names job ${id}, but no earlier example created one`] };
    if (latestJob !== undefined) url = url.split(id).join(latestJob);
  }

  let payload: string | FormData | undefined = req.body;
  if (req.form !== undefined) {
    const form = new FormData();
    for (const part of req.form) {
      if (part.file === undefined) form.append(part.name, part.value ?? '');
      else if (FIXTURES[part.file] === undefined) return { problems: [`${example.where}: uploads ${part.file}, which the test has no copy of`] };
      else form.append(part.name, new Blob([FIXTURES[part.file] as string]), part.file);
    }
    payload = form;
  }
  const res = await fetch(url, { method: req.method, headers: req.headers, body: payload });
  const bytes = Buffer.from(await res.arrayBuffer());
  const problems: string[] = [];
  const where = `${example.where} (${req.method} ${req.url})`;
  if (expected?.status !== undefined ? res.status !== expected.status : res.status < 200 || res.status > 299) {
    problems.push(`${where}: documented status ${expected?.status ?? '2xx'}, got ${res.status}: ${bytes.toString('utf8').slice(0, 300)}`);
  }
  if (req.outputFile !== undefined && bytes.length === 0) problems.push(`${where}: -o ${req.outputFile} would save an empty file`);

  let body: unknown;
  if (/json/.test(res.headers.get('content-type') ?? '')) body = JSON.parse(bytes.toString('utf8'));
  const created = req.method === 'POST' && /\/v1\/jobs$/.test(req.url) && res.status < 300 ? (body as { id: string }).id : undefined;
  if (expected?.body !== undefined) {
    const job = created ?? latestJob;
    const ids = job === undefined ? {} : Object.fromEntries([...documentedIds].map((id) => [id, job]));
    const differences = compareShape(expected.body, body, { ids });
    if (differences.length > 0) {
      problems.push(`${where}: the response differs from the docs:\n  ${differences.join('\n  ')}\nthe real response:\n${JSON.stringify(body, null, 1)}`);
    }
  }
  return { problems, created };
}

describe.each(SOURCES)('$file, "$heading"', ({ file, heading, minCommands, minResponses }) => {
  test('every curl example runs against the real API and answers what the docs show', async () => {
    const examples = extractExamples(readFileSync(join(ROOT, file), 'utf8'), heading, file);
    // The extraction itself must not silently lose examples.
    expect(examples.length).toBeGreaterThanOrEqual(minCommands);
    expect(examples.filter((e) => e.expected?.body !== undefined).length).toBeGreaterThanOrEqual(minResponses);

    const problems: string[] = [];
    let latestJob: string | undefined;
    for (const example of examples) {
      const result = await run(example, latestJob);
      problems.push(...result.problems);
      if (result.created !== undefined) {
        latestJob = result.created;
        // The examples that follow show the job once it has ended, as a client polling it would.
        await waitForJobEnd(stack, latestJob);
      }
    }
    expect(problems).toEqual([]);
  });
});
