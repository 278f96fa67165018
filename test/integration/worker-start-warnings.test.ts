/** What a worker says at start about its model providers: one warning when it could run no job at all. */
import { scriptBySteps, startModelServer, type ModelServer } from '../support/model-server';
import { startStack, submitJob, waitForJobEnd } from '../support/stack';

let model: ModelServer;
beforeAll(async () => {
  model = await startModelServer(scriptBySteps({}));
});
afterAll(async () => {
  await model?.close();
});

interface LogLine {
  event?: string;
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** No provider variable at all ('' is unset to loadConfig; stackEnv sets both keys and both base URLs). */
const NO_PROVIDER = { OPENAI_API_KEY: '', OPENAI_BASE_URL: '', ANTHROPIC_API_KEY: '', ANTHROPIC_BASE_URL: '' };

describe('the provider warning at worker start', () => {
  test.each([
    ['warns once when no provider is configured', NO_PROVIDER, true],
    ['warns when Anthropic has a base URL but no key', { ...NO_PROVIDER, ANTHROPIC_BASE_URL: 'http://127.0.0.1:9' }, true],
    ['stays quiet with OPENAI_API_KEY', { ...NO_PROVIDER, OPENAI_API_KEY: 'sk-test-openai-key-0000' }, false],
    ['stays quiet with only OPENAI_BASE_URL (a keyless OpenAI-compatible server)', { ...NO_PROVIDER, OPENAI_BASE_URL: 'http://127.0.0.1:9/v1' }, false],
    ['stays quiet with ANTHROPIC_API_KEY', { ...NO_PROVIDER, ANTHROPIC_API_KEY: 'sk-ant-test-key-0000' }, false],
  ])('%s', async (_name, env, warns) => {
    const stack = await startStack(model, { env: { ...env, SANDBOX_POOL_SIZE: '0' } });
    try {
      const lines = stack.logs.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogLine);
      expect(lines.some((l) => l.event === 'worker.started')).toBe(true);
      const warnings = lines.filter((l) => l.event === 'worker.no_provider');
      if (!warns) {
        expect(warnings).toEqual([]);
        return;
      }
      expect(warnings).toHaveLength(1);
      const [warning] = warnings as [LogLine];
      expect(warning.level).toBe(40);
      for (const variable of ['OPENAI_API_KEY', 'OPENAI_BASE_URL', 'ANTHROPIC_API_KEY', 'ANTHROPIC_BASE_URL', 'provider_not_configured']) {
        expect(warning.msg).toContain(variable);
      }
      // What the warning announces.
      const job = await waitForJobEnd(stack, (await submitJob(stack, { task: 'no provider' })).id);
      expect(job).toMatchObject({ status: 'failed', error: { code: 'provider_not_configured' } });
    } finally {
      await stack.close();
    }
  });
});
