// Spike: a sudden jump to many times the base rate and back; the gateway must keep answering.
//   k6 run loadtest/spike.js                     (BASE=200 req/s, PEAK=4000 req/s)
import http from 'k6/http';
import { check } from 'k6';
import { pick } from './lib.js';

const base = Number(__ENV.BASE || 200);
const peak = Number(__ENV.PEAK || 4000);

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: base,
      timeUnit: '1s',
      preAllocatedVUs: 50,
      maxVUs: 800,
      stages: [
        { target: base, duration: '10s' },
        { target: peak, duration: '5s' },
        { target: peak, duration: '20s' },
        { target: base, duration: '5s' },
        { target: base, duration: '10s' },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(99)<250'],
  },
};

export default function () {
  check(http.get(pick(__ITER)), { 'status is 200': (r) => r.status === 200 });
}
