/**
 * docs/grafana-dashboard.json: it parses, it imports anywhere (its datasource is the DS_PROMETHEUS
 * input, never a uid of some Grafana), its panels fit the grid, and every PromQL expression in it
 * asks only for series the API and the workers expose — Maestro's metrics, with the labels they
 * carry, and Node's default metrics from prom-client — so a renamed metric breaks this test rather
 * than silently emptying a panel.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TERMINAL_STATUSES } from '../../services/shared/src/job-schema';

type MetricType = 'counter' | 'gauge' | 'histogram';
interface MetricDef {
  type: MetricType;
  labels: string[];
  /** The values a label can take, where the set is closed. */
  values?: Record<string, readonly string[]>;
}

/** Maestro's own metrics: what the API and the worker register, with their labels. */
const MAESTRO_METRICS: Record<string, MetricDef> = {
  // API
  maestro_jobs_created_total: { type: 'counter', labels: ['provider'] },
  maestro_http_requests_total: { type: 'counter', labels: ['method', 'route', 'status'] },
  maestro_http_request_duration_seconds: { type: 'histogram', labels: ['method', 'route'] },
  maestro_rate_limited_total: { type: 'counter', labels: ['limit'] },
  maestro_auth_rejections_total: { type: 'counter', labels: ['reason'] },
  maestro_queue_jobs: { type: 'gauge', labels: ['state'], values: { state: ['waiting', 'prioritized', 'delayed', 'active'] } },
  maestro_queue_oldest_waiting_age_seconds: { type: 'gauge', labels: [] },
  // Worker
  maestro_jobs_ended_total: {
    type: 'counter',
    labels: ['status', 'stop_reason', 'provider'],
    values: { status: TERMINAL_STATUSES, stop_reason: ['completed', 'max_steps', 'timeout', 'cancelled', 'error'] },
  },
  maestro_job_duration_seconds: { type: 'histogram', labels: ['status', 'provider'], values: { status: TERMINAL_STATUSES } },
  maestro_model_call_duration_seconds: { type: 'histogram', labels: ['provider', 'model', 'outcome'] },
  maestro_model_tokens_total: { type: 'counter', labels: ['provider', 'model', 'type'], values: { type: ['input', 'output'] } },
  maestro_sandbox_execution_duration_seconds: { type: 'histogram', labels: ['runtime', 'outcome'] },
  maestro_sandbox_pool_size: { type: 'gauge', labels: ['runtime'] },
  maestro_sandbox_pool_requests_total: { type: 'counter', labels: ['runtime', 'result'], values: { result: ['hit', 'miss', 'bypass'] } },
  maestro_sandbox_kills_total: { type: 'counter', labels: ['reason'] },
  maestro_reaper_removals_total: { type: 'counter', labels: ['reason'] },
  maestro_worker_active_jobs: { type: 'gauge', labels: [] },
};

/** prom-client's collectDefaultMetrics() on Linux (prom-client 15), in both processes. */
const NODE_DEFAULT_METRICS: Record<string, MetricDef> = {
  ...Object.fromEntries(
    [
      'process_cpu_user_seconds_total',
      'process_cpu_system_seconds_total',
      'process_cpu_seconds_total',
      'process_start_time_seconds',
      'process_resident_memory_bytes',
      'process_virtual_memory_bytes',
      'process_heap_bytes',
      'process_open_fds',
      'process_max_fds',
      'nodejs_eventloop_lag_seconds',
      'nodejs_eventloop_lag_min_seconds',
      'nodejs_eventloop_lag_max_seconds',
      'nodejs_eventloop_lag_mean_seconds',
      'nodejs_eventloop_lag_stddev_seconds',
      'nodejs_eventloop_lag_p50_seconds',
      'nodejs_eventloop_lag_p90_seconds',
      'nodejs_eventloop_lag_p99_seconds',
      'nodejs_active_resources_total',
      'nodejs_active_handles_total',
      'nodejs_active_requests_total',
      'nodejs_heap_size_total_bytes',
      'nodejs_heap_size_used_bytes',
      'nodejs_external_memory_bytes',
    ].map((name): [string, MetricDef] => [name, { type: 'gauge', labels: [] }]),
  ),
  nodejs_active_resources: { type: 'gauge', labels: ['type'] },
  nodejs_active_handles: { type: 'gauge', labels: ['type'] },
  nodejs_active_requests: { type: 'gauge', labels: ['type'] },
  nodejs_heap_space_size_total_bytes: { type: 'gauge', labels: ['space'] },
  nodejs_heap_space_size_used_bytes: { type: 'gauge', labels: ['space'] },
  nodejs_heap_space_size_available_bytes: { type: 'gauge', labels: ['space'] },
  nodejs_version_info: { type: 'gauge', labels: ['version', 'major', 'minor', 'patch'] },
  nodejs_gc_duration_seconds: { type: 'histogram', labels: ['kind'] },
};

/** Labels Prometheus adds to every scraped series. */
const TARGET_LABELS = ['job', 'instance'];

/** Every series name a scrape yields, with the metric it belongs to (a histogram's _bucket, _sum and _count). */
const SERIES = new Map<string, { metric: string; def: MetricDef; labels: Set<string> }>();
for (const [metric, def] of Object.entries({ ...MAESTRO_METRICS, ...NODE_DEFAULT_METRICS })) {
  const base = new Set([...def.labels, ...TARGET_LABELS]);
  if (def.type === 'histogram') {
    SERIES.set(`${metric}_bucket`, { metric, def, labels: new Set([...base, 'le']) });
    SERIES.set(`${metric}_sum`, { metric, def, labels: base });
    SERIES.set(`${metric}_count`, { metric, def, labels: base });
  } else {
    SERIES.set(metric, { metric, def, labels: base });
  }
}

/** PromQL's functions and aggregation operators the dashboard may call. */
const PROMQL_FUNCTIONS = new Set([
  'sum', 'min', 'max', 'avg', 'count', 'stddev', 'stdvar', 'topk', 'bottomk', 'quantile', 'count_values', 'group',
  'rate', 'irate', 'increase', 'delta', 'idelta', 'deriv', 'changes', 'resets', 'histogram_quantile',
  'avg_over_time', 'min_over_time', 'max_over_time', 'sum_over_time', 'count_over_time', 'last_over_time', 'quantile_over_time',
  'abs', 'ceil', 'floor', 'round', 'clamp', 'clamp_min', 'clamp_max', 'scalar', 'vector', 'time', 'timestamp', 'absent',
  'label_replace', 'label_join', 'sort', 'sort_desc',
]);
const PROMQL_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);
/** Grafana's variables an expression may use, besides the dashboard's own. */
const GRAFANA_VARIABLES = new Set(['__rate_interval', '__interval', '__range', '__range_s']);

interface Selector {
  name: string | undefined;
  matchers: { label: string; op: string; value: string }[];
}
interface ParsedExpr {
  /** Series names the expression selects. */
  series: string[];
  selectors: Selector[];
  /** Labels named in by/without/on/ignoring/group_* clauses. */
  groupingLabels: string[];
  functions: string[];
  variables: string[];
}

/** Just enough of PromQL to find what an expression selects: names, matchers, grouping labels, calls. */
function parsePromQL(expr: string): ParsedExpr {
  const variables = [...expr.matchAll(/\$\{?(\w+)/g)].map((m) => m[1] as string);
  const selectors: Selector[] = [];
  // A brace in PromQL only ever opens a selector's matchers.
  let rest = expr.replace(/([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}/g, (_all, name: string | undefined, body: string) => {
    const matchers = [...body.matchAll(/\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)/g)].map((m) => ({
      label: m[1] as string,
      op: m[2] as string,
      value: m[3] as string,
    }));
    const cleaned = body.replace(/\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)/g, '').trim();
    if (cleaned !== '') throw new Error(`cannot read the matchers {${body}} in ${expr}`);
    selectors.push({ name, matchers });
    return ` ${name ?? ''} `;
  });
  rest = rest.replace(/"(?:[^"\\]|\\.)*"/g, ' ').replace(/\[[^\]]*\]/g, ' ');
  const groupingLabels: string[] = [];
  rest = rest.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g, (_all, _kw: string, labels: string) => {
    groupingLabels.push(...labels.split(',').map((l) => l.trim()).filter(Boolean));
    return ' ';
  });
  const functions: string[] = [];
  rest = rest.replace(/\b([A-Za-z_][\w]*)\s*\(/g, (_all, fn: string) => {
    functions.push(fn);
    return ' ( ';
  });
  const series = (rest.match(/(?<![\w.$])[A-Za-z_:][\w:]*/g) ?? []).filter((w) => !PROMQL_KEYWORDS.has(w.toLowerCase()) && !/^\d/.test(w));
  for (const s of selectors) if (s.name && !series.includes(s.name)) series.push(s.name);
  return { series: [...new Set(series)], selectors, groupingLabels, functions, variables };
}

interface Panel {
  id?: number;
  type: string;
  title?: string;
  gridPos?: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  targets?: { expr?: string; refId?: string; datasource?: { type?: string; uid?: string } }[];
  panels?: Panel[];
}
interface Dashboard {
  __inputs?: { name: string; type: string; pluginId: string }[];
  schemaVersion: number;
  title: string;
  uid?: string;
  panels: Panel[];
  templating?: { list: { name: string; type: string; query?: unknown; datasource?: { uid?: string } }[] };
}

const text = readFileSync(join(__dirname, '..', '..', 'docs', 'grafana-dashboard.json'), 'utf8');
const dashboard = JSON.parse(text) as Dashboard;
const allPanels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const dataPanels = allPanels.filter((p) => p.type !== 'row');
const exprs = dataPanels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title ?? `#${p.id}`, expr: t.expr ?? '' })));

describe('docs/grafana-dashboard.json', () => {
  test('is a current dashboard whose data source is an input, with no hard-coded uid', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.title).toBeTruthy();
    expect(dashboard.__inputs).toEqual([expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' })]);
    // Every datasource reference anywhere names the input (resolved on import, or by the variable of
    // the same name when the file is provisioned); Grafana's built-in annotation source is the exception.
    const refs: unknown[] = [];
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) node.forEach(walk);
      else if (node && typeof node === 'object') {
        for (const [k, v] of Object.entries(node)) {
          if (k === 'datasource') refs.push(v);
          walk(v);
        }
      }
    };
    walk(dashboard);
    expect(refs.length).toBeGreaterThan(0);
    for (const ref of refs) {
      if ((ref as { type?: string }).type === 'grafana') continue;
      expect(ref).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
    }
    expect(dashboard.templating?.list).toContainEqual(expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', query: 'prometheus' }));
  });

  test('every panel has an id of its own, a query, and a place on the grid that overlaps no other', () => {
    const ids = allPanels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const cells = new Set<string>();
    for (const p of allPanels) {
      const g = p.gridPos;
      expect(g).toBeDefined();
      if (!g) continue;
      expect(g.x + g.w).toBeLessThanOrEqual(24);
      for (let x = g.x; x < g.x + g.w; x++) {
        for (let y = g.y; y < g.y + g.h; y++) {
          const cell = `${x},${y}`;
          if (cells.has(cell)) throw new Error(`panel ${p.title ?? p.id} overlaps another at ${cell}`);
          cells.add(cell);
        }
      }
    }
    for (const p of dataPanels) {
      expect({ panel: p.title, queries: p.targets?.length ?? 0 }).not.toEqual({ panel: p.title, queries: 0 });
      for (const t of p.targets ?? []) expect({ panel: p.title, expr: (t.expr ?? '').trim() }).not.toEqual({ panel: p.title, expr: '' });
      const refIds = (p.targets ?? []).map((t) => t.refId);
      expect(new Set(refIds).size).toBe(refIds.length);
    }
  });

  test('every expression selects only series the API and workers expose, by labels they carry', () => {
    const variables = new Set([...GRAFANA_VARIABLES, ...(dashboard.templating?.list ?? []).map((v) => v.name)]);
    const problems: string[] = [];
    for (const { panel, expr } of exprs) {
      const parsed = parsePromQL(expr);
      if (parsed.series.length === 0) problems.push(`${panel}: no series in ${expr}`);
      const labelsInScope = new Set(TARGET_LABELS);
      for (const name of parsed.series) {
        const known = SERIES.get(name);
        if (!known) problems.push(`${panel}: unknown series ${name} in ${expr}`);
        else known.labels.forEach((l) => labelsInScope.add(l));
      }
      for (const sel of parsed.selectors) {
        const known = sel.name ? SERIES.get(sel.name) : undefined;
        if (!known) {
          problems.push(`${panel}: a selector without a known metric name in ${expr}`);
          continue;
        }
        for (const m of sel.matchers) {
          if (!known.labels.has(m.label)) problems.push(`${panel}: ${sel.name ?? ''} has no label ${m.label}`);
          const closed = known.def.values?.[m.label];
          if (closed && m.op === '=' && !closed.includes(m.value)) problems.push(`${panel}: ${m.label}="${m.value}" is never a value of ${known.metric}`);
        }
      }
      for (const label of parsed.groupingLabels) if (!labelsInScope.has(label)) problems.push(`${panel}: groups by ${label}, which none of its series carries`);
      for (const fn of parsed.functions) if (!PROMQL_FUNCTIONS.has(fn)) problems.push(`${panel}: unknown function ${fn}`);
      for (const v of parsed.variables) if (!variables.has(v)) problems.push(`${panel}: undefined variable $${v}`);
      // A histogram's quantile needs its buckets summed by le.
      if (/histogram_quantile/.test(expr) && !/_bucket\b/.test(expr)) problems.push(`${panel}: histogram_quantile over no _bucket series`);
      if (/histogram_quantile/.test(expr) && !parsed.groupingLabels.includes('le')) problems.push(`${panel}: histogram_quantile without by (le)`);
    }
    expect(problems).toEqual([]);
  });

  test('every Maestro metric is on the dashboard', () => {
    const used = new Set(exprs.flatMap(({ expr }) => parsePromQL(expr).series.map((s) => SERIES.get(s)?.metric)));
    expect(Object.keys(MAESTRO_METRICS).filter((m) => !used.has(m))).toEqual([]);
  });

  test('the expression reader finds what it should', () => {
    expect(parsePromQL('histogram_quantile(0.95, sum by (le, route) (rate(maestro_http_request_duration_seconds_bucket{route!="/x",method=~"GET|POST"}[$__rate_interval])))')).toEqual({
      series: ['maestro_http_request_duration_seconds_bucket'],
      selectors: [
        {
          name: 'maestro_http_request_duration_seconds_bucket',
          matchers: [
            { label: 'route', op: '!=', value: '/x' },
            { label: 'method', op: '=~', value: 'GET|POST' },
          ],
        },
      ],
      groupingLabels: ['le', 'route'],
      functions: ['histogram_quantile', 'sum', 'rate'],
      variables: ['__rate_interval'],
    });
    expect(parsePromQL('sum(a_total) / (sum(b_total offset 5m) > 0) * 60 + on (job) c').series).toEqual(['a_total', 'b_total', 'c']);
  });
});
