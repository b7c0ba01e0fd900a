// Load: ramping arrival rate with thresholds on p99 latency and the error rate.
//   k6 run loadtest/load.js                      (RATE=2000 peak req/s, STAGE=30s per stage)
import http from 'k6/http';
import { check } from 'k6';
import { pick } from './lib.js';

const rate = Number(__ENV.RATE || 2000);
const stage = __ENV.STAGE || '30s';

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: Math.max(1, Math.floor(rate / 10)),
      timeUnit: '1s',
      preAllocatedVUs: 50,
      maxVUs: 400,
      stages: [
        { target: rate, duration: stage },
        { target: rate, duration: stage },
        { target: 0, duration: stage },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<50'],
    dropped_iterations: ['count<100'],
  },
};

export default function () {
  check(http.get(pick(__ITER)), { 'status is 200': (r) => r.status === 200 });
}
