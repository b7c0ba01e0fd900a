// Shared settings for the Tollgate k6 scripts. BASE_URL points at the gateway; the defaults
// match conf/tollgate.toml (routes / and /api/... answered by the built-in demo backends).
export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
export const PATHS = (__ENV.PATHS || '/,/api/echo').split(',');

export function pick(i) {
  return `${BASE_URL}${PATHS[i % PATHS.length]}`;
}
