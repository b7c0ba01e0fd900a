// Upgrade under load: steady traffic (keep-alive and new connections) while the operator
// performs a zero-downtime upgrade (`tollgate -u` then SIGQUIT to the old process, or
// `systemctl reload tollgate`); zero failed requests are allowed.
//   k6 run loadtest/upgrade.js &  sleep 5;  <upgrade>;  wait      (RATE=500 DURATION=30s)
import http from 'k6/http';
import { check } from 'k6';
import { pick } from './lib.js';

export const options = {
  scenarios: {
    keepalive: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 500),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 20,
      maxVUs: 100,
    },
    fresh_connections: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.NEW_CONN_RATE || 50),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 5,
      maxVUs: 50,
      exec: 'fresh',
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
  },
};

export default function () {
  check(http.get(pick(__ITER)), { 'status is 200': (r) => r.status === 200 });
}

export function fresh() {
  const res = http.get(pick(__ITER), { headers: { Connection: 'close' } });
  check(res, { 'status is 200 (new connection)': (r) => r.status === 200 });
}
