#!/usr/bin/env bash
# Deterministic companion to scripts/bench.sh: user-space instructions per request of
# (b) the bare Pingora proxy, (c) portcullis on a public route, (d) portcullis on an RS256
# JWT route (same token every request: verified-token cache hits) and (e) bench.sh's S5, the
# full stack (RS256, a policy, two rate limits, audit file with HMAC chain), counted by
# valgrind --tool=callgrind over N keep-alive requests (after a warm-up). Instruction counts
# do not depend on what else the shared machine is doing, so the ratio (c)/(b) is repeatable.
# Kernel time (syscalls, TCP) is not included; scripts/bench.sh measures that side.
#
#   scripts/bench-instructions.sh          # N=3000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 >/dev/null; }
cargo build --release --bin portcullis --example bare_proxy --example mint_tokens 2>&1 | tail -1
N=${N:-3000}
BIN=${CARGO_TARGET_DIR:-target}/release/portcullis
WORK=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
P_UP=19201; P_BARE=19290; P_GW=19280; P_ADMIN=19300; P_FULL=19282; P_FULL_ADMIN=19302
ROOT=$PWD
. scripts/bench-lib.sh
cat > "$WORK/gw.yaml" <<YAML
$(bench_server gw $P_GW $P_ADMIN)
authenticators:
$(bench_jwt idp RS256 "keys: [{ kid: bench, pem_file: \"$ROOT/tests/fixtures/jwt/rsa.pub.pem\" }]")
upstreams:
  echo: { targets: ["127.0.0.1:$P_UP"] }
routes:
  - { id: jwt, match: { path_prefix: /jwt }, upstream: echo, authn: [idp] }
  - { id: bench, match: { path_prefix: / }, upstream: echo, public: true }
YAML
bench_full_yaml $P_FULL $P_FULL_ADMIN $P_UP >"$WORK/full.yaml"
TOKEN=$("${CARGO_TARGET_DIR:-target}/release/examples/mint_tokens" 1 tests/fixtures/jwt/rsa.key bench https://bench.test/)
cat > "$WORK/load.py" <<'PY'
import http.client, sys
port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
headers = {"User-Agent": "bench"}
if len(sys.argv) > 4:
    headers["Authorization"] = "Bearer " + sys.argv[4]
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", path, headers=headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
$BIN echo --listen 127.0.0.1:$P_UP --fixed >/dev/null 2>&1 & pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$WORK/bare.cg" "${CARGO_TARGET_DIR:-target}/release/examples/bare_proxy" 127.0.0.1:$P_BARE 127.0.0.1:$P_UP 1 >"$WORK/bare.log" 2>&1 & pids+=($!); VB=$!
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/gw.cg" $BIN run -c "$WORK/gw.yaml" >"$WORK/gw.log" 2>&1 & pids+=($!); VG=$!
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/full.cg" $BIN run -c "$WORK/full.yaml" >"$WORK/full.log" 2>&1 & pids+=($!); VF=$!
for p in $P_BARE $P_GW $P_FULL; do
  for _ in $(seq 1 600); do curl -fsS -o /dev/null "http://127.0.0.1:$p/warm" 2>/dev/null && break; sleep 0.1; done
done
count() { # name port pid path [token]
  python3 "$WORK/load.py" "$2" 300 "$4" ${5:-}
  callgrind_control -z "$3" >/dev/null 2>&1
  python3 "$WORK/load.py" "$2" "$N" "$4" ${5:-}
  callgrind_control -d "$3" >/dev/null 2>&1
  sleep 1
  local base=gw; [[ $1 == bare || $1 == full ]] && base=$1
  local f; f=$(ls -t "$WORK/$base.cg"* | head -1)
  mkdir -p target/callgrind && cp "$f" "target/callgrind/$1.out"
  awk -v n="$N" '/^(summary|totals):/ {print int($2 / n); exit}' "$f"
}
B=$(count bare $P_BARE $VB /bench/path?q=1)
C=$(count gw $P_GW $VG /bench/path?q=1)
D=$(count jwt $P_GW $VG /jwt/bench/path?q=1 "$TOKEN")
E=$(count full $P_FULL $VF /full/bench/path?q=1 "$TOKEN")
echo "user-space instructions per request (callgrind, $N requests):"
echo "  b_bare_pingora       $B"
echo "  c_portcullis_public  $C"
echo "  d_portcullis_jwt     $D"
echo "  e_portcullis_full    $E"
echo "  profiles: target/callgrind/{bare,gw,jwt,full}.out (callgrind_annotate --inclusive=yes)"
awk -v b="$B" -v c="$C" -v d="$D" -v e="$E" 'BEGIN { printf "  ratio (c)/(b) = %.3f, portcullis adds %d instructions per request\n  ratio (d)/(b) = %.3f, (d)-(c) = %d\n  ratio (e)/(b) = %.3f, (e)-(d) = %d\n", c / b, c - b, d / b, d - c, e / b, e - d }'
