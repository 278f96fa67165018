/**
 * The worker's side of the runner protocol, for the output lines a running cell sends: everything
 * from the sandbox is hostile, so each line is checked before its text goes anywhere, and a line a
 * real runner would never send is a ProtocolViolation (the container is then thrown away).
 */
import { CellAnswer, ProtocolViolation } from '../../services/worker/src/sandbox/runner-protocol';
import type { OutputStream } from '../../services/worker/src/sandbox/types';

const CAP = 16;
const LIMITS = { files: 2, totalBytes: 1024, fileBytes: 512 };
const ID = 7;

function answer(): { cell: CellAnswer; seen: [OutputStream, string][] } {
  const seen: [OutputStream, string][] = [];
  const cell = new CellAnswer(ID, CAP, LIMITS, (stream, text) => seen.push([stream, text]));
  return { cell, seen };
}

const result = (extra: Record<string, unknown> = {}) => ({
  id: ID,
  stdout: 'ab\n',
  stderr: 'e',
  exitCode: 0,
  truncated: { stdout: false, stderr: false },
  files: [],
  skipped: [],
  stopped: 0,
  ...extra,
});

test('output lines reach onOutput in the order they came, and the result then completes the answer as before', () => {
  const { cell, seen } = answer();
  expect(cell.accept({ id: ID, stream: 'stdout', text: 'a' })).toBeUndefined();
  expect(cell.accept({ id: ID, stream: 'stderr', text: 'e' })).toBeUndefined();
  expect(cell.accept({ id: ID, stream: 'stdout', text: 'b\n' })).toBeUndefined();
  // An empty text is harmless and not handed on.
  expect(cell.accept({ id: ID, stream: 'stdout', text: '' })).toBeUndefined();
  const outcome = cell.accept(result());
  expect(seen).toEqual([
    ['stdout', 'a'],
    ['stderr', 'e'],
    ['stdout', 'b\n'],
  ]);
  expect(outcome).toMatchObject({ stdout: 'ab\n', stderr: 'e', exitCode: 0, truncated: { stdout: false, stderr: false }, artifacts: [] });
});

test('each stream may bring the whole cap, and the caps are per stream', () => {
  const { cell, seen } = answer();
  cell.accept({ id: ID, stream: 'stdout', text: 'x'.repeat(CAP - 1) });
  cell.accept({ id: ID, stream: 'stdout', text: 'y' });
  cell.accept({ id: ID, stream: 'stderr', text: 'z'.repeat(CAP) });
  expect(seen.map(([stream, text]) => [stream, text.length])).toEqual([
    ['stdout', CAP - 1],
    ['stdout', 1],
    ['stderr', CAP],
  ]);
  expect(cell.accept(result({ stdout: 'x'.repeat(CAP) }))).toBeDefined();
});

test('output lines may come before a result whose files follow, and the files still arrive whole', () => {
  const { cell, seen } = answer();
  cell.accept({ id: ID, stream: 'stdout', text: 'saved\n' });
  expect(cell.accept(result({ files: [{ name: 'a.txt', size: 3 }] }))).toBeUndefined();
  const outcome = cell.accept({ id: ID, data: Buffer.from('abc').toString('base64') });
  expect(seen).toEqual([['stdout', 'saved\n']]);
  expect(outcome?.artifacts.map((a) => [a.name, a.data.toString()])).toEqual([['a.txt', 'abc']]);
});

describe('a ProtocolViolation, and nothing handed on, for', () => {
  test.each<[string, Record<string, unknown>[]]>([
    ['an output line of another request', [{ id: ID + 1, stream: 'stdout', text: 'a' }]],
    ['an output line without an id', [{ stream: 'stdout', text: 'a' }]],
    ['an unknown stream', [{ id: ID, stream: 'stdin', text: 'a' }]],
    ['a stream that is not a string', [{ id: ID, stream: 1, text: 'a' }]],
    ['a null stream', [{ id: ID, stream: null, text: 'a' }]],
    ['a text that is a number', [{ id: ID, stream: 'stdout', text: 5 }]],
    ['a text that is an array', [{ id: ID, stream: 'stdout', text: ['a'] }]],
    ['a missing text', [{ id: ID, stream: 'stderr' }]],
    ['one line over the cap', [{ id: ID, stream: 'stdout', text: 'x'.repeat(CAP + 1) }]],
  ])('%s', (_what, lines) => {
    const { cell, seen } = answer();
    expect(() => lines.forEach((line) => cell.accept(line))).toThrow(ProtocolViolation);
    expect(seen).toEqual([]);
  });

  test('lines that together pass the cap of their stream: those within it were handed on, the one past it not', () => {
    const { cell, seen } = answer();
    cell.accept({ id: ID, stream: 'stderr', text: 'x'.repeat(CAP) });
    cell.accept({ id: ID, stream: 'stdout', text: 'y'.repeat(CAP - 2) });
    expect(() => cell.accept({ id: ID, stream: 'stdout', text: 'yyy' })).toThrow(ProtocolViolation);
    expect(seen.map(([stream, text]) => [stream, text.length])).toEqual([
      ['stderr', CAP],
      ['stdout', CAP - 2],
    ]);
  });

  test('an output line after the result', () => {
    const { cell, seen } = answer();
    cell.accept(result({ files: [{ name: 'a.txt', size: 3 }] }));
    expect(() => cell.accept({ id: ID, stream: 'stdout', text: 'late' })).toThrow(ProtocolViolation);
    expect(seen).toEqual([]);
  });
});
