// Rate-limit check: one caller sends faster than its limit; count 200s and 429s and check
// that no more than LIMIT requests were admitted per WINDOW_S seconds (conf/tollgate.toml's
// /secure route: 5 per 10 s per consumer, here the demo API key).
//   k6 run loadtest/ratelimit.js                 (LIMIT=5 WINDOW_S=10 DURATION=20s)
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL } from './lib.js';

const admitted = new Counter('admitted');
const limited = new Counter('limited');
const limit = Number(__ENV.LIMIT || 5);
const windowS = Number(__ENV.WINDOW_S || 10);
const durationS = Number(__ENV.DURATION_S || 20);
const allowed = limit * (Math.ceil(durationS / windowS) + 1);

export const options = {
  scenarios: {
    burst: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 20),
      timeUnit: '1s',
      duration: `${durationS}s`,
      preAllocatedVUs: 5,
      maxVUs: 20,
    },
  },
  thresholds: {
    // Never more than the limit per window (a run can straddle one extra window).
    admitted: [`count<=${allowed}`],
    limited: ['count>0'],
    checks: ['rate==1'],
  },
};

export default function () {
  const res = http.get(`${BASE_URL}${__ENV.LIMITED_PATH || '/secure/echo'}`, {
    headers: { 'X-API-Key': __ENV.API_KEY || 'demo-key-0123456789abcdef' },
  });
  if (res.status === 200) admitted.add(1);
  if (res.status === 429) limited.add(1);
  check(res, {
    'admitted or limited': (r) => r.status === 200 || r.status === 429,
    '429 carries Retry-After': (r) => r.status !== 429 || r.headers['Retry-After'] !== undefined,
    'RateLimit headers present': (r) => r.headers['Ratelimit-Limit'] !== undefined,
  });
}
