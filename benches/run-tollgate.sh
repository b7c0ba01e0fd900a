#!/usr/bin/env bash
# PROXY_CMD for ../shared/perf/compare.sh: renders a benches/conf/*.toml.in with the variables
# compare.sh exports (WORKERS, RUN_DIR, PROXY_PORT, BACKEND_PORT) and runs Tollgate in the
# foreground. MODE: plain | gateway (HS256 chain) | gateway-rs (RS256 chain, verification
# cache on) | gateway-rs-nocache (RS256 chain, cache off) | traced (plain with [tracing] at
# SAMPLE_RATIO, default 1.0) | validate (a JSON order route; VALIDATE='validate="request"' or
# empty, benches/validate-icount.sh).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-plain}
bin=${TOLLGATE_BIN:-$here/../target/dist/tollgate}
export BENCH_CONF="$here/conf" CACHE_ENTRIES=10000 SAMPLE_RATIO=${SAMPLE_RATIO:-1.0} VALIDATE=${VALIDATE:-}
template=$mode
case "$mode" in
  gateway-rs-nocache) template=gateway-rs; CACHE_ENTRIES=0 ;;
esac
conf="$RUN_DIR/tollgate-$mode.toml"
envsubst '${WORKERS} ${RUN_DIR} ${PROXY_PORT} ${BACKEND_PORT} ${BENCH_CONF} ${CACHE_ENTRIES} ${SAMPLE_RATIO} ${VALIDATE}' \
  <"$here/conf/$template.toml.in" >"$conf"
export TOLLGATE_BENCH_JWT_SECRET="bench-secret-0123456789abcdef0123"
export RUST_LOG=${RUST_LOG:-error}
exec "$bin" -c "$conf"
