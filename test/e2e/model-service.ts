/**
 * The scripted model as a compose service for the end-to-end test (test/e2e/compose.e2e.yml). The
 * script is fixed and keyed on the job's task text, `e2e:<kind> <args…>`, so the test drives it
 * only by what it submits over the API, as a user would.
 *
 * The model server listens on its container's loopback only, so a plain TCP relay on MODEL_PORT
 * makes it reachable on the compose network. CONTROL_PORT serves `GET /requests`: every request
 * the model saw, as `{provider, task, step}`, so the test can tell that a step was asked once.
 */
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createTcpServer } from 'node:net';
import { codeCall, startModelServer, type ScriptedReply, type ScriptedRequest } from '../support/model-server';

const MODEL_PORT = 8080;
const CONTROL_PORT = 8081;

/** The last line the latest tool printed (the worker frames a result with headers such as `stdout:`). */
const lastOutput = (req: ScriptedRequest): string =>
  (req.toolResults.at(-1)?.content ?? '')
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .at(-1) ?? '';

/** The replies of one task: step 0 asks for tools, step 1 ends the job. */
function script(req: ScriptedRequest): ScriptedReply {
  // A job with input files has their list after its task: the task is the first line.
  const [kind, ...args] = (req.task.split('\n')[0] as string).split(' ');
  if (req.step > 0) return { text: kind === 'e2e:square' ? `The answer is ${lastOutput(req)}.` : `done: ${lastOutput(req)}` };
  switch (kind) {
    case 'e2e:interfaces':
      return codeCall("import socket\nprint('interfaces=' + ','.join(sorted(n for _, n in socket.if_nameindex())))");
    case 'e2e:square':
      return codeCall(`print(${Number(args[0])} ** 2)`);
    case 'e2e:inputs':
      return codeCall(
        [
          'import pandas as pd',
          "df = pd.read_csv('/input/data.csv')",
          "df.describe().to_csv('/output/summary.csv')",
          "print(df['n'].sum())",
        ].join('\n'),
      );
    case 'e2e:sleep':
      return codeCall(`import time\ntime.sleep(${Number(args[0])})\nprint('slept')`);
    case 'e2e:files': {
      const [inside, outside] = args as [string, string];
      const probe = [
        `for p in (${JSON.stringify(inside)}, ${JSON.stringify(outside)}):`,
        '    try:',
        "        print('sandbox-read', p, open(p).read().strip())",
        '    except OSError as e:',
        "        print('sandbox-refused', p, type(e).__name__)",
      ].join('\n');
      return {
        toolCalls: [
          { name: 'read_file', arguments: { path: inside } },
          { name: 'read_file', arguments: { path: outside } },
          { name: 'code_executor', arguments: { code: probe } },
        ],
      };
    }
    default:
      throw new Error(`no script for task ${JSON.stringify(req.task)}`);
  }
}

async function main(): Promise<void> {
  const model = await startModelServer(script);
  const target = new URL(model.origin);

  createTcpServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    client.pipe(upstream).pipe(client);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop);
    upstream.on('error', drop);
  }).listen(MODEL_PORT, '0.0.0.0');

  createHttpServer((req, res) => {
    if (req.method === 'GET' && req.url === '/requests') {
      const seen = model.requests.map(({ provider, task, step }) => ({ provider, task, step }));
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(seen));
      return;
    }
    res.writeHead(req.url === '/healthz' ? 200 : 404).end();
  }).listen(CONTROL_PORT, '0.0.0.0');

  console.log(`model-service: model on :${MODEL_PORT}, control on :${CONTROL_PORT}`);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => process.exit(0));
}

main().catch((err: unknown) => {
  console.error(`model-service: ${(err as Error).message}`);
  process.exit(1);
});
