/** A resumed job's conversation is rebuilt from its recorded steps, the only checkpoint there is. */
import type { Step } from '../../services/shared/src/job-schema';
import { firstMessage, resumeFrom } from '../../services/worker/src/agent-loop';

const at = { startedAt: '2026-01-01T00:00:00.000Z', durationMs: 1 };
const usage = { inputTokens: 1, outputTokens: 1 };
const calls = [
  { id: 'c1', name: 'list_files', arguments: '{"path":"/data"}' },
  { id: 'c2', name: 'code_executor', arguments: '{"code":"print(2)"}' },
];

test('the conversation rebuilt from the steps is the one the model was having', () => {
  const spec = { task: 'count the rows', inputs: [{ name: 'data.csv', size: 8, contentType: 'text/csv', sha256: 'x' }] };
  const steps: Step[] = [
    { ...at, index: 0, type: 'model', text: 'looking', toolCalls: calls, usage, stopReason: 'tool_use' },
    { ...at, index: 1, type: 'tool', callId: 'c1', name: 'list_files', input: { path: '/data' }, output: 'refused', isError: true },
    { ...at, index: 2, type: 'tool', callId: 'c2', name: 'code_executor', input: { code: 'print(2)' }, output: '2\n', isError: false, exitCode: 0 },
    { ...at, index: 3, type: 'model', text: 'two rows', toolCalls: [], usage, stopReason: 'end' },
  ];
  expect(resumeFrom(spec, steps)).toEqual({
    messages: [
      { role: 'user', content: firstMessage(spec) },
      { role: 'assistant', content: 'looking', toolCalls: calls },
      {
        role: 'tool',
        results: [
          { callId: 'c1', name: 'list_files', content: 'refused', isError: true },
          { callId: 'c2', name: 'code_executor', content: '2\n', isError: false },
        ],
      },
      { role: 'assistant', content: 'two rows', toolCalls: [] },
    ],
    nextStepIndex: 4,
    modelCalls: 2,
  });
});

test('a job with no recorded step starts from its task', () => {
  expect(resumeFrom({ task: 'hello', inputs: [] }, [])).toEqual({ messages: [{ role: 'user', content: 'hello' }], nextStepIndex: 0, modelCalls: 0 });
});
