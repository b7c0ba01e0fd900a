#!/usr/bin/env bash
# PROXY_CMD for ../shared/perf/compare.sh: renders benches/conf/MODE.toml.in with the
# variables compare.sh exports (WORKERS, RUN_DIR, PROXY_PORT, BACKEND_PORT) and runs Tollgate
# in the foreground. MODE is `plain` or `gateway`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-plain}
bin=${TOLLGATE_BIN:-$here/../target/release/tollgate}
conf="$RUN_DIR/tollgate-$mode.toml"
envsubst '${WORKERS} ${RUN_DIR} ${PROXY_PORT} ${BACKEND_PORT}' <"$here/conf/$mode.toml.in" >"$conf"
export TOLLGATE_BENCH_JWT_SECRET="bench-secret-0123456789abcdef0123"
export RUST_LOG=${RUST_LOG:-error}
exec "$bin" -c "$conf"
