/*
 * Every route the client calls, by the name of the MaestroClient method that calls it. The client
 * builds its URLs from this table only, so it is the whole of what the client relies on; the
 * OpenAPI test (test/unit/client-openapi.test.ts) checks it against the server's document both
 * ways: each route here is an operation there, and each /v1 operation there is a method here.
 */

export interface Route {
  method: 'GET' | 'POST' | 'DELETE';
  /** An OpenAPI path template: `{id}` and `{name}` are filled in, percent-encoded. */
  path: string;
  /** The query parameters the client sends. */
  query?: readonly string[];
  /** The request headers of the API's own the client sends (not Authorization or Accept). */
  headers?: readonly string[];
}

export const ROUTES = {
  createJob: { method: 'POST', path: '/v1/jobs', headers: ['Idempotency-Key'] },
  listJobs: { method: 'GET', path: '/v1/jobs', query: ['status', 'limit', 'cursor'] },
  getJob: { method: 'GET', path: '/v1/jobs/{id}' },
  deleteJob: { method: 'DELETE', path: '/v1/jobs/{id}' },
  cancelJob: { method: 'POST', path: '/v1/jobs/{id}/cancel' },
  followEvents: { method: 'GET', path: '/v1/jobs/{id}/events', headers: ['Last-Event-ID'] },
  downloadArtifact: { method: 'GET', path: '/v1/jobs/{id}/artifacts/{name}' },
  downloadInput: { method: 'GET', path: '/v1/jobs/{id}/inputs/{name}' },
} as const satisfies Record<string, Route>;

export type RouteName = keyof typeof ROUTES;

/**
 * A route's path with its parameters filled in. `name` may hold `/` (an artifact in a
 * subdirectory): each of its segments is encoded on its own.
 */
export function fillPath(route: Route, params: { id?: string; name?: string }): string {
  return route.path.replace(/\{(\w+)\}/g, (_m, key: string) => {
    const value = key === 'id' ? params.id : key === 'name' ? params.name : undefined;
    if (value === undefined) throw new TypeError(`${route.path}: no value for {${key}}`);
    return key === 'name' ? value.split('/').map(encodeURIComponent).join('/') : encodeURIComponent(value);
  });
}
