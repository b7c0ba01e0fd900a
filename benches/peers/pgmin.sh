#!/usr/bin/env bash
# PROXY_CMD for ../shared/perf/compare.sh: the minimal Pingora proxy (pgmin, the "raw Pingora
# floor") in the foreground with WORKERS threads, so one compare.sh run can hold several
# worker counts under different names
# (benches/workers-compare.sh: PROXY_CMD_pingora_w2="env WORKERS=2 benches/peers/pgmin.sh").
# Same environment as compare.sh's start_pingora (PG_LISTEN, PG_UPSTREAM, PG_THREADS=WORKERS,
# PG_RUN_DIR; PG_NOSTEAL passes through from the environment as there, unset = work-stealing
# on); only the thread count differs between names. Keep the two in step. The binary is
# built by compare.sh (or workers-compare.sh) into $BUILD_TARGET/release/pgmin; PINGORA_BIN
# overrides it.
set -eu
: "${WORKERS:?}" "${PROXY_PORT:?}" "${BACKEND_PORT:?}" "${RUN_DIR:?}"
bin=${PINGORA_BIN:-${BUILD_TARGET:-/tmp/perf-target}/release/pgmin}
export PG_LISTEN="127.0.0.1:$PROXY_PORT" PG_UPSTREAM="127.0.0.1:$BACKEND_PORT" PG_THREADS="$WORKERS" \
  PG_RUN_DIR="$RUN_DIR"
exec "$bin"
