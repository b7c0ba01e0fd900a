// Smoke: a few virtual users for a short time; every request must succeed.
//   k6 run loadtest/smoke.js                     (DURATION=10s VUS=2 by default)
import http from 'k6/http';
import { check } from 'k6';
import { pick } from './lib.js';

export const options = {
  vus: Number(__ENV.VUS || 2),
  duration: __ENV.DURATION || '10s',
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
  },
};

export default function () {
  const res = http.get(pick(__ITER));
  check(res, {
    'status is 200': (r) => r.status === 200,
    'has a request id': (r) => (r.headers['X-Request-Id'] || '').length > 0,
  });
}
