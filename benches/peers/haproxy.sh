#!/usr/bin/env bash
# PROXY_CMD for ../shared/perf/compare.sh: plain HAProxy in the foreground with WORKERS
# threads, so one compare.sh run can hold several worker counts under different names
# (benches/workers-compare.sh: PROXY_CMD_haproxy_w2="env WORKERS=2 benches/peers/haproxy.sh").
# The config is a copy of compare.sh's start_haproxy, identical except that `nbthread` comes
# from this process's WORKERS (and the file name carries it); keep the two in step.
# compare.sh exports WORKERS, PROXY_PORT, BACKEND_PORT and RUN_DIR.
set -eu
: "${WORKERS:?}" "${PROXY_PORT:?}" "${BACKEND_PORT:?}" "${RUN_DIR:?}"
cfg="$RUN_DIR/haproxy-w$WORKERS.cfg"
cat >"$cfg" <<CFG
global
  nbthread $WORKERS
  maxconn 8000
  pidfile $RUN_DIR/haproxy.pid
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend fe
  bind 127.0.0.1:$PROXY_PORT
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND_PORT
CFG
exec haproxy -db -f "$cfg"
