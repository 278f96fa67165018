import { z } from 'zod';
import type { ToolSpec } from '../providers/model-provider';
import { codeExecutorTool } from './code-executor';
import { listFilesTool } from './list-files';
import { readFileTool } from './read-file';
import { ToolInputError, type Tool, type ToolContext, type ToolOutcome } from './tool';

/** Every tool Maestro offers, by its contract name; a job enables a subset. */
export const ALL_TOOLS: readonly Tool[] = [codeExecutorTool, listFilesTool, readFileTool];

/**
 * The specs the model is given for `tools`, with JSON Schemas derived from the tools' zod inputs;
 * each is an object schema with `properties` and `required`, which OpenAI `function.parameters` and
 * Anthropic `input_schema` both accept.
 */
export function toolSpecs(tools: readonly Tool[]): ToolSpec[] {
  return tools.map((tool) => {
    // io 'input': the schema describes what the model may send (optional fields stay optional).
    const schema = z.toJSONSchema(tool.input, { io: 'input' }) as Record<string, unknown>;
    // Providers validate against their own dialect; a `$schema` key only risks a rejected request.
    delete schema.$schema;
    if (schema.type !== 'object') throw new Error(`Tool ${tool.name} must take an object as input.`);
    return {
      name: tool.name,
      description: tool.description,
      inputSchema: { ...schema, properties: schema.properties ?? {}, required: schema.required ?? [] },
    };
  });
}

/**
 * Runs one tool call from the model. Anything the model got wrong (unknown tool, malformed or invalid
 * arguments, a refused path) becomes an error result it sees and can correct; every other error is
 * an infrastructure fault or a cancellation and propagates.
 */
export async function runToolCall(
  tools: readonly Tool[],
  call: { name: string; arguments: string },
  ctx: ToolContext,
): Promise<ToolOutcome> {
  const tool = tools.find((t) => t.name === call.name);
  if (tool === undefined) {
    const available = tools.length === 0 ? 'none' : tools.map((t) => t.name).join(', ');
    return refused(`Unknown tool ${JSON.stringify(call.name)}. Available tools: ${available}.`);
  }

  let args: unknown;
  try {
    // Some models send an empty string for a call without arguments.
    args = JSON.parse(call.arguments.trim() === '' ? '{}' : call.arguments);
  } catch (err) {
    const reason = err instanceof Error ? err.message : 'parse error';
    return refused(`The arguments for ${tool.name} are not valid JSON (${reason}). Send a JSON object.`);
  }
  if (typeof args !== 'object' || args === null || Array.isArray(args)) {
    const got = args === null ? 'null' : Array.isArray(args) ? 'an array' : `a ${typeof args}`;
    return refused(`The arguments for ${tool.name} must be a JSON object, got ${got}.`);
  }

  const parsed = tool.input.safeParse(args);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => describeIssue(issue, args));
    return refused(`Invalid arguments for ${tool.name}: ${problems.join('; ')}.`);
  }

  try {
    return await tool.run(parsed.data, ctx);
  } catch (err) {
    if (err instanceof ToolInputError) return refused(err.message);
    throw err;
  }
}

function refused(output: string): ToolOutcome {
  return { output, isError: true };
}

function describeIssue(issue: z.core.$ZodIssue, args: object): string {
  const field = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys') {
    return `unknown field${issue.keys.length === 1 ? '' : 's'} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
  }
  // zod reports a missing field as "expected string, received undefined"; say what the model must do.
  if (issue.code === 'invalid_type' && valueAt(args, issue.path) === undefined) {
    return `field "${field}" is required (${issue.expected})`;
  }
  return field === '' ? issue.message : `field "${field}": ${issue.message}`;
}

function valueAt(root: unknown, keys: readonly PropertyKey[]): unknown {
  let value = root;
  for (const key of keys) {
    if (typeof value !== 'object' || value === null) return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}
