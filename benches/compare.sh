#!/usr/bin/env bash
# End-to-end comparison: Tollgate (plain route and full policy chain) against nginx, HAProxy,
# the HAProxy gateway peer and a minimal Pingora proxy, in one run of ../shared/perf/compare.sh
# (ratios are measured against REF, nginx by default, within the same run).
#
#   benches/compare.sh                              # everything, 3 reps
#   PROXIES="pingora tollgate" REPS=1 benches/compare.sh
#   WORKERS=2 benches/compare.sh                    # two worker threads each
#   REF=haproxy-gw PROXIES="haproxy-gw tollgate-gw" benches/compare.sh
#   RS256=1 benches/compare.sh                      # RS256 chain, cache on and off (token: conf/bench-rs.jwt;
#                                                   # the HAProxy peer only does HS256, so it is left out)
#
# Every proxied request carries the peers' bench JWT (peers/bench.jwt), which plain proxies
# ignore. Do not run while something else is compiling.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERF_DIR:-$root/../shared/perf}
export TOLLGATE_BIN=${TOLLGATE_BIN:-$root/target/dist/tollgate}
if [ ! -x "$TOLLGATE_BIN" ]; then
  (cd "$root" && cargo build --profile dist --locked)
fi
command -v envsubst >/dev/null || { echo "compare: envsubst missing (apt-get install gettext-base)" >&2; exit 2; }
export PROXY_CMD_tollgate="$root/benches/run-tollgate.sh plain"
export PROXY_CMD_tollgate_gw="$root/benches/run-tollgate.sh gateway"
export PROXY_CMD_tollgate_gw_rs="$root/benches/run-tollgate.sh gateway-rs"
export PROXY_CMD_tollgate_gw_rs_nocache="$root/benches/run-tollgate.sh gateway-rs-nocache"
export PROXY_CMD_haproxy_gw="$perf/peers/run-haproxy-gateway.sh"
if [ -n "${RS256:-}" ]; then
  export REQ_HEADER=${REQ_HEADER:-"Authorization: Bearer $(cat "$root/benches/conf/bench-rs.jwt")"}
  export PROXIES=${PROXIES:-"nginx pingora tollgate tollgate-gw-rs tollgate-gw-rs-nocache"}
else
  export REQ_HEADER=${REQ_HEADER:-"Authorization: Bearer $(cat "$perf/peers/bench.jwt")"}
  export PROXIES=${PROXIES:-"nginx haproxy haproxy-gw pingora tollgate tollgate-gw"}
fi
exec "$perf/compare.sh"
