#!/usr/bin/env bash
# Build Portcullis and start it on the shipped conf/portcullis.yaml together with the two demo
# echo upstreams it points at (127.0.0.1:9001 and :9002). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --bin portcullis
BIN=${CARGO_TARGET_DIR:-target}/release/portcullis
$BIN check -c conf/portcullis.yaml

pids=()
# After `portcullis upgrade` the gateway is a new process, named by the pid file.
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ -f /tmp/portcullis-demo.pid ] && kill "$(cat /tmp/portcullis-demo.pid)" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

$BIN echo --listen 127.0.0.1:9001 --name echo-1 & pids+=($!)
$BIN echo --listen 127.0.0.1:9002 --name echo-2 & pids+=($!)
RUST_LOG=${RUST_LOG:-info} $BIN run -c conf/portcullis.yaml & pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS -o /dev/null http://127.0.0.1:9100/readyz 2>/dev/null && break
  sleep 0.1
done

cat <<'TXT'

Portcullis is running on http://127.0.0.1:8080 (admin on 127.0.0.1:9100). Try:

  curl -i http://127.0.0.1:8080/api/public/hello              # 200, answered by an echo upstream
  curl -i http://127.0.0.1:8080/api/orders/47                 # 401 credentials_missing
  curl -s -H 'x-api-key: demo-key-not-secret' http://127.0.0.1:8080/api/orders/47   # 200 with X-Portcullis-* identity
  curl -i -X POST -H 'x-api-key: demo-key-not-secret' http://127.0.0.1:8080/api/orders   # 403 insufficient_scope
  curl -i http://127.0.0.1:8080/nowhere                       # 404 no_route (default deny)
  curl -i -X DELETE http://127.0.0.1:8080/api/public/hello    # 405 method_not_allowed, Allow: GET, HEAD
  curl -i --path-as-is 'http://127.0.0.1:8080/api/public/a%2fb'   # 400 invalid_path (encoded slash)
  curl -s --path-as-is 'http://127.0.0.1:8080/api/public/../../echo/x'  # routed as /echo/x; the upstream sees "target":"/x"
  head -c 2000000 /dev/zero | curl -si -X POST --data-binary @- http://127.0.0.1:8080/echo/upload   # 413 body_too_large
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8080/api/limited; done; echo   # 200 ×5 then 429
  curl -i http://127.0.0.1:8080/api/limited                   # 429 rate_limited, Retry-After, RateLimit headers
  curl -s http://127.0.0.1:9100/metrics | grep portcullis_requests_total
  tail -n 2 /tmp/portcullis-demo-audit.jsonl                 # the audit trail, one record per request
  target/release/portcullis audit verify /tmp/portcullis-demo-audit.jsonl
  target/release/portcullis reload -c conf/portcullis.yaml    # reloaded: generation 2
  curl -s http://127.0.0.1:9100/config                        # generation, config hash, last reload

Press Ctrl-C to stop.
TXT
wait
