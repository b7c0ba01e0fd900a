#!/usr/bin/env bash
# Instructions per request of request validation (`validate = "request"`), by
# ../shared/perf/icount.sh: the same POST of a typical JSON order (benches/conf/order.json)
# through the same route, validated against benches/conf/orders.yaml (`tgvalidate`) and not
# (`tgnovalidate`). icount.sh sends GETs; an `h2load` first on PATH (made here) adds the body
# and its headers to every request it sends. Usage, after `cargo build --profile dist`:
#   benches/validate-icount.sh            # N, C, WARM as icount.sh takes them
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shim=$(mktemp -d /tmp/validate-shim.XXXXXX)
trap 'rm -rf "$shim"' EXIT
real=$(command -v h2load)
cat >"$shim/h2load" <<SHIM
#!/bin/sh
exec "$real" -d "$here/conf/order.json" -H 'Content-Type: application/json' -H 'X-Tenant: t-1' "\$@"
SHIM
chmod +x "$shim/h2load"
export PATH="$shim:$PATH"
bin=${TOLLGATE_BIN:-$here/../target/dist/tollgate}
export PROXIES="tgnovalidate tgvalidate"
export PROXY_CMD_tgnovalidate="env TOLLGATE_BIN=$bin VALIDATE= $here/run-tollgate.sh validate"
export PROXY_CMD_tgvalidate="env TOLLGATE_BIN=$bin VALIDATE=validate=\"request\" $here/run-tollgate.sh validate"
exec "$here/../../shared/perf/icount.sh"
