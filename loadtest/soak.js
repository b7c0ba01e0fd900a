// Soak: a steady moderate rate for a long time; look for creeping latency, errors or memory
// (watch RSS and /metrics while it runs).
//   k6 run loadtest/soak.js                      (RATE=500 req/s for DURATION=30m)
import http from 'k6/http';
import { check } from 'k6';
import { pick } from './lib.js';

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 500),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30m',
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<50'],
  },
};

export default function () {
  check(http.get(pick(__ITER)), { 'status is 200': (r) => r.status === 200 });
}
