/**
 * The client (client/) and the API's OpenAPI document cannot drift apart: every route the client
 * calls is an operation of the document, with the query parameters and headers it sends; every /v1
 * operation of the document has a client method; and the field names the client's types declare
 * (compile-time-checked lists beside each interface) are exactly the schemas' properties. The checks
 * are proved to fail on mutated copies of the document and of the client's tables.
 */
import { buildOpenApi } from '../../services/api/src/openapi';
import { loadConfig } from '../../services/shared/src/config';
import {
  ARTIFACT_FIELDS,
  INPUT_FIELDS,
  JOB_FIELDS,
  JOB_LIST_FIELDS,
  JOB_REQUEST_FIELDS,
  JOB_REQUEST_REQUIRED,
  JOB_REQUIRED,
  JOB_STATUSES,
  JOB_SUMMARY_FIELDS,
  MaestroClient,
  MODEL_STEP_FIELDS,
  PROBLEM_FIELDS,
  PROVIDERS,
  ROUTES,
  STOP_REASONS,
  TOOL_NAMES,
  TOOL_STEP_FIELDS,
  WEBHOOK_DELIVERY_FIELDS,
  type Route,
} from '../../client/src';

type Schema = Record<string, unknown> & { properties?: Record<string, Schema>; required?: string[]; items?: Schema; anyOf?: Schema[]; oneOf?: Schema[]; enum?: unknown[]; const?: unknown; $ref?: string };
interface Operation {
  parameters?: { name: string; in: string }[];
}
interface Doc {
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, Schema> };
}

/** What the client declares it relies on. */
interface ClientSurface {
  routes: Record<string, Route>;
  /** The client's method names. */
  methods: ReadonlySet<string>;
  fields: Record<FieldTable, readonly string[]>;
  required: { jobRequest: readonly string[]; job: readonly string[] };
  enums: { status: readonly string[]; provider: readonly string[]; tool: readonly string[]; stopReason: readonly string[] };
}
type FieldTable = 'jobRequest' | 'job' | 'jobSummary' | 'jobList' | 'modelStep' | 'toolStep' | 'input' | 'artifact' | 'webhookDelivery' | 'problem';

const clientMethods = (): Set<string> =>
  new Set(Object.getOwnPropertyNames(MaestroClient.prototype).filter((name) => name !== 'constructor' && typeof Reflect.get(MaestroClient.prototype, name) === 'function'));

const CLIENT: ClientSurface = {
  routes: ROUTES,
  methods: clientMethods(),
  fields: {
    jobRequest: JOB_REQUEST_FIELDS,
    job: JOB_FIELDS,
    jobSummary: JOB_SUMMARY_FIELDS,
    jobList: JOB_LIST_FIELDS,
    modelStep: MODEL_STEP_FIELDS,
    toolStep: TOOL_STEP_FIELDS,
    input: INPUT_FIELDS,
    artifact: ARTIFACT_FIELDS,
    webhookDelivery: WEBHOOK_DELIVERY_FIELDS,
    problem: PROBLEM_FIELDS,
  },
  required: { jobRequest: JOB_REQUEST_REQUIRED, job: JOB_REQUIRED },
  enums: { status: JOB_STATUSES, provider: PROVIDERS, tool: TOOL_NAMES, stopReason: STOP_REASONS },
};

const METHODS = ['get', 'post', 'put', 'patch', 'delete'];

/** A schema with `$ref`s followed and a nullable wrapper (`anyOf: [X, {type: null}]`) taken off. */
function resolve(doc: Doc, schema: Schema | undefined): Schema | undefined {
  if (schema === undefined) return undefined;
  if (typeof schema.$ref === 'string') {
    const name = /^#\/components\/schemas\/(.+)$/.exec(schema.$ref)?.[1];
    return resolve(doc, name === undefined ? undefined : doc.components.schemas[name]);
  }
  const variants = schema.anyOf ?? schema.oneOf;
  if (variants && variants.length === 2) {
    const other = variants.filter((v) => v.type !== 'null');
    if (other.length === 1) return resolve(doc, other[0]);
  }
  return schema;
}

const sameSet = (what: string, client: readonly unknown[], api: readonly unknown[] | undefined): string[] => {
  if (api === undefined) return [`${what}: not in the OpenAPI document`];
  const problems: string[] = [];
  for (const x of client) if (!api.includes(x)) problems.push(`${what}: the client has ${JSON.stringify(x)}, the API does not`);
  for (const x of api) if (!client.includes(x)) problems.push(`${what}: the API has ${JSON.stringify(x)}, the client does not`);
  const dupes = client.filter((x, i) => client.indexOf(x) !== i);
  if (dupes.length > 0) problems.push(`${what}: the client lists ${dupes.map((d) => JSON.stringify(d)).join(', ')} twice`);
  return problems;
};

const propertyNames = (schema: Schema | undefined): string[] | undefined => (schema?.properties ? Object.keys(schema.properties) : undefined);

/** Every way the client and the document disagree, one line each; empty when they agree. */
function driftProblems(doc: Doc, client: ClientSurface): string[] {
  const problems: string[] = [];

  // Routes, both ways.
  const known = new Set<string>();
  for (const [name, route] of Object.entries(client.routes)) {
    const at = `${route.method} ${route.path} (${name})`;
    known.add(`${route.method} ${route.path}`);
    if (!client.methods.has(name)) problems.push(`${at}: the client has no method ${name}`);
    const op = doc.paths[route.path]?.[route.method.toLowerCase()];
    if (!op) {
      problems.push(`${at}: the client calls it, the API has no such operation`);
      continue;
    }
    const params = op.parameters ?? [];
    const query = params.filter((p) => p.in === 'query').map((p) => p.name);
    problems.push(...sameSet(`${at} query parameters`, route.query ?? [], query));
    const headers = new Set(params.filter((p) => p.in === 'header').map((p) => p.name.toLowerCase()));
    for (const header of route.headers ?? []) if (!headers.has(header.toLowerCase())) problems.push(`${at}: the client sends ${header}, the API does not take it`);
  }
  for (const [path, ops] of Object.entries(doc.paths)) {
    if (!path.startsWith('/v1/')) continue;
    for (const method of Object.keys(ops).filter((m) => METHODS.includes(m))) {
      if (!known.has(`${method.toUpperCase()} ${path}`)) problems.push(`${method.toUpperCase()} ${path}: an API operation with no client method`);
    }
  }

  // Schemas: the client's field lists are their properties, exactly.
  const schemas = doc.components.schemas;
  const jobRequest = resolve(doc, schemas.JobRequest);
  const job = resolve(doc, schemas.Job);
  const jobList = resolve(doc, schemas.JobList);
  const summary = resolve(doc, jobList?.properties?.jobs?.items);
  const steps = resolve(doc, job?.properties?.steps?.items);
  const stepOf = (type: string): Schema | undefined =>
    (steps?.oneOf ?? steps?.anyOf ?? []).map((s) => resolve(doc, s)).find((s) => s?.properties?.type?.const === type);
  const itemsOf = (s: Schema | undefined, field: string): Schema | undefined => resolve(doc, resolve(doc, s?.properties?.[field])?.items);
  const tables: [string, FieldTable, Schema | undefined][] = [
    ['JobRequest', 'jobRequest', jobRequest],
    ['Job', 'job', job],
    ['JobList', 'jobList', jobList],
    ['JobList.jobs[]', 'jobSummary', summary],
    ['Job.steps[] (model)', 'modelStep', stepOf('model')],
    ['Job.steps[] (tool)', 'toolStep', stepOf('tool')],
    ['Job.inputs[]', 'input', itemsOf(job, 'inputs')],
    ['Job.artifacts[]', 'artifact', itemsOf(job, 'artifacts')],
    ['Job.webhookDeliveries[]', 'webhookDelivery', itemsOf(job, 'webhookDeliveries')],
    ['Problem', 'problem', resolve(doc, schemas.Problem)],
  ];
  for (const [what, table, schema] of tables) problems.push(...sameSet(`${what} fields`, client.fields[table], propertyNames(schema)));

  // Required fields: the API requires what a request must hold, and promises what the client counts on.
  problems.push(...sameSet('JobRequest required fields', client.required.jobRequest, jobRequest?.required ?? []));
  for (const field of client.required.job) {
    if (!(job?.required ?? []).includes(field)) problems.push(`Job required fields: the client counts on ${JSON.stringify(field)}, the API does not promise it`);
  }

  // Enumerations the client spells out.
  problems.push(...sameSet('Job.status values', client.enums.status, resolve(doc, job?.properties?.status)?.enum));
  problems.push(...sameSet('Job.stopReason values', client.enums.stopReason, resolve(doc, job?.properties?.stopReason)?.enum));
  problems.push(...sameSet('JobRequest.provider values', client.enums.provider, resolve(doc, jobRequest?.properties?.provider)?.enum));
  problems.push(...sameSet('JobRequest.tools values', client.enums.tool, itemsOf(jobRequest, 'tools')?.enum));
  return problems;
}

const realDoc = (): Doc => buildOpenApi(loadConfig({})) as unknown as Doc;

describe('the client and the OpenAPI document', () => {
  test('agree: every client route is an API operation, every /v1 operation a client method, every field list the schema\'s properties', () => {
    expect(driftProblems(realDoc(), CLIENT)).toEqual([]);
  });

  test('the route table names only methods the client has, and the client has none calling an unlisted route', () => {
    const methods = [...CLIENT.methods].filter((m) => !['run', 'listJobsPage'].includes(m));
    expect(methods.sort()).toEqual(Object.keys(ROUTES).sort());
  });
});

describe('the drift check fails', () => {
  const problemsWith = (mutate: (doc: Doc) => void, client: ClientSurface = CLIENT): string[] => {
    const doc = structuredClone(realDoc());
    mutate(doc);
    return driftProblems(doc, client);
  };
  const schema = (doc: Doc, name: string): Schema => doc.components.schemas[name] as Schema;
  const rename = (s: Schema, from: string, to: string): void => {
    const props = s.properties as Record<string, Schema>;
    props[to] = props[from] as Schema;
    Reflect.deleteProperty(props, from);
    if (s.required) s.required = s.required.map((r) => (r === from ? to : r));
  };

  test('when a Job field is renamed in the API', () => {
    expect(problemsWith((doc) => {
        rename(schema(doc, 'Job'), 'result', 'outcome');
      })).toEqual(
      expect.arrayContaining([
        'Job fields: the client has "result", the API does not',
        'Job fields: the API has "outcome", the client does not',
        'Job required fields: the client counts on "result", the API does not promise it',
      ]),
    );
  });

  test('when a JobRequest field is renamed or added in the API', () => {
    expect(problemsWith((doc) => {
        rename(schema(doc, 'JobRequest'), 'maxSteps', 'max_steps');
      })).toEqual([
      'JobRequest fields: the client has "maxSteps", the API does not',
      'JobRequest fields: the API has "max_steps", the client does not',
    ]);
    const added = problemsWith((doc) => {
      (schema(doc, 'JobRequest').properties as Record<string, Schema>).priority = { type: 'integer' };
    });
    expect(added).toEqual(['JobRequest fields: the API has "priority", the client does not']);
  });

  test('when a field of a nested schema (a tool step, an artifact, a listed job) changes', () => {
    const problems = problemsWith((doc) => {
      const job = schema(doc, 'Job');
      const steps = (job.properties?.steps?.items?.oneOf ?? job.properties?.steps?.items?.anyOf) as Schema[];
      rename(steps.find((s) => s.properties?.type?.const === 'tool') as Schema, 'exitCode', 'exit_code');
      rename(job.properties?.artifacts?.items as Schema, 'sha256', 'digest');
      rename(schema(doc, 'JobList').properties?.jobs?.items as Schema, 'createdAt', 'created');
    });
    expect(problems).toEqual(
      expect.arrayContaining([
        'Job.steps[] (tool) fields: the client has "exitCode", the API does not',
        'Job.artifacts[] fields: the API has "digest", the client does not',
        'JobList.jobs[] fields: the client has "createdAt", the API does not',
      ]),
    );
  });

  test('when a status is added to the API', () => {
    expect(
      problemsWith((doc) => {
        (schema(doc, 'Job').properties?.status?.enum as unknown[]).push('paused');
      }),
    ).toEqual(['Job.status values: the API has "paused", the client does not']);
  });

  test('when a route the client calls is dropped, or a parameter or header it sends is', () => {
    expect(problemsWith((doc) => delete doc.paths['/v1/jobs/{id}/cancel'])).toEqual([
      'POST /v1/jobs/{id}/cancel (cancelJob): the client calls it, the API has no such operation',
    ]);
    expect(
      problemsWith((doc) => {
        const list = doc.paths['/v1/jobs']?.get as Operation;
        list.parameters = (list.parameters ?? []).filter((p) => p.name !== 'cursor');
        const events = doc.paths['/v1/jobs/{id}/events']?.get as Operation;
        events.parameters = (events.parameters ?? []).filter((p) => p.name !== 'Last-Event-ID');
      }),
    ).toEqual([
      'GET /v1/jobs (listJobs) query parameters: the client has "cursor", the API does not',
      'GET /v1/jobs/{id}/events (followEvents): the client sends Last-Event-ID, the API does not take it',
    ]);
  });

  test('when the API gains a /v1 operation the client has no method for', () => {
    expect(
      problemsWith((doc) => {
        doc.paths['/v1/jobs/{id}/retry'] = { post: { parameters: [] } };
      }),
    ).toEqual(['POST /v1/jobs/{id}/retry: an API operation with no client method']);
  });

  test('when the client calls a path the API does not have, or lists a field the API does not', () => {
    const typo: ClientSurface = { ...CLIENT, routes: { ...ROUTES, getJob: { method: 'GET', path: '/v1/job/{id}' } } };
    expect(problemsWith(() => undefined, typo)).toEqual([
      'GET /v1/job/{id} (getJob): the client calls it, the API has no such operation',
      'GET /v1/jobs/{id}: an API operation with no client method',
    ]);
    const extraField: ClientSurface = { ...CLIENT, fields: { ...CLIENT.fields, jobRequest: [...JOB_REQUEST_FIELDS, 'priority'] } };
    expect(problemsWith(() => undefined, extraField)).toEqual(['JobRequest fields: the client has "priority", the API does not']);
  });
});
