#!/usr/bin/env bash
# The conformance scorecard (docs/conformance.md): each suite written by others that the
# gateway is checked with, its result and its figures, as one table. The README's test
# command runs it after the suite; it builds nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
# suite, module of the integration test crate (tests/it), test name, a pattern for the line
# carrying the figures (or ""); the test runs as `MODULE::NAME`, matched exactly.
row() {
  local out status figures=""
  if out=$(cargo test -q --locked --test it "$2::$3" -- --exact --nocapture 2>&1); then
    status=pass
  else
    status=FAIL
    failed=1
  fi
  if [ -n "$4" ]; then
    figures=$(grep -E "$4" <<<"$out" | tail -1 | tr '|' '/' || true)
  fi
  printf '| %s | %s | %s |\n' "$1" "$status" "$figures"
}

echo "| suite | result | figures |"
echo "|---|---|---|"
row "gRPC interop cases, grpcio client and server (direct, h2c, TLS)" grpc grpc_interop_cases_give_the_same_result_through_the_gateway ""
row "gateway-made gRPC errors read by grpcio" grpc gateway_made_grpc_errors_reached_grpcio_as_unknown ""
row "Autobahn WebSocket cases (kosoku)" websocket autobahn_cases_give_the_same_result_through_the_gateway "^Autobahn:"
row "http_desync_guardian corpus (159 requests)" framing http_desync_guardian_corpus "corpus through the gateway"
row "httplint on every gateway answer" hardening every_gateway_answer_passes_httplint ""
row "RFC 7515/7520/8037 JWS examples" jwt rfc_jose_examples_verify_and_their_tampered_forms_fail ""
row "Wycheproof signature vectors" jwt wycheproof_signature_vectors "^Wycheproof vectors"
row "HTTP/2 rapid reset" hardening h2_rapid_reset_is_ended_with_goaway ""
row "HTTP/2 CONTINUATION flood" hardening h2_continuation_flood_is_cut ""
row "HTTP/2 HPACK bomb" hardening h2_hpack_bomb_is_refused ""
row "HTTP/2 connection-specific fields" hardening h2_connection_nominated_headers_are_refused ""
row "aioquic HTTP/3 client: 100 streams on one connection" http3 hundred_concurrent_streams_on_one_connection_all_answer_200 ""
row "aioquic HTTP/3 client moving to a new port" http3 client_moving_to_another_port_keeps_its_connection ""
row "niquests (qh3) over HTTP/3, learned from Alt-Svc" http3 niquests_speaks_http3_to_the_gateway ""
row "headless Chromium reads the gateway's 401" access a_browser_app_reads_the_gateways_401 ""
if [ "$failed" -ne 0 ]; then
  echo "conformance: a suite failed (rerun its test for the details)" >&2
fi
exit "$failed"
