#!/usr/bin/env bash
# End-to-end load on loopback, side by side, measured in one run:
#   (a) the echo upstream directly, (b) a bare Pingora proxy (examples/bare_proxy.rs, same
#   profile/allocator/runtime settings), (c) portcullis on a public route, (d) portcullis with
#   RS256 JWT authentication, the same token on every request (verified-token cache hits),
#   (e) RS256 with 10,000 distinct tokens and the cache off (every request a full verification),
#   (f) the public route with a local rate limit per client IP (never reached), (g) the same
#   with the Redis backend (a redis-server on loopback, CPU 1), (g2) Redis with `lease: 100`,
#   (h) every request refused 429, (i) the public route on a gateway writing an audit file,
#   (j) the same with an HMAC hash chain.
# The proxy under test is pinned to CPU 0 with one worker thread; wrk and the upstream share
# CPU 1. Scenarios are interleaved over ROUNDS rounds. Reported per scenario: requests/s,
# p50/p99 latency (wrk), and CPU µs per request of the measured process (utime+stime from
# /proc over the run ÷ requests). The headline figure is the ratio (c)/(b).
#
#   scripts/bench.sh                      # DURATION=10 CONNECTIONS=32 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench
cargo build --release --bin portcullis --example bare_proxy --example mint_tokens 2>&1 | tail -1

DUR=${DURATION:-10}
CONN=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
BIN=${CARGO_TARGET_DIR:-target}/release/portcullis
BARE=${CARGO_TARGET_DIR:-target}/release/examples/bare_proxy
CLK_TCK=$(getconf CLK_TCK)
if [[ $(nproc) -ge 2 ]]; then PROXY_CPU=0; LOAD_CPU=1; else PROXY_CPU=0; LOAD_CPU=0; fi

P_UP=19001; P_BARE=19090; P_GW=19080; P_ADMIN=19100; P_REDIS=19379
P_AUD=19081; P_AUD_ADMIN=19101; P_CHAIN=19082; P_CHAIN_ADMIN=19102
WORK=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

cat > "$WORK/bench.yaml" <<YAML
server:
  listen: [{ addr: "127.0.0.1:$P_GW" }]
  admin: "127.0.0.1:$P_ADMIN"
  threads: 1
  pid_file: $WORK/gw.pid
  upgrade_sock: $WORK/gw.sock
  grace_period: 0s
authenticators:
  idp:
    jwt:
      issuer: "https://bench.test/"
      algorithms: [RS256]
      keys: [{ kid: bench, pem_file: "$PWD/tests/fixtures/jwt/rsa.pub.pem" }]
  idp-nocache:
    jwt:
      issuer: "https://bench.test/"
      algorithms: [RS256]
      keys: [{ kid: bench, pem_file: "$PWD/tests/fixtures/jwt/rsa.pub.pem" }]
      token_cache: 0
redis:
  url: "redis://127.0.0.1:$P_REDIS/0"
  timeout: 50ms
  on_error: deny
rate_limits:
  local-ip: { key: client_ip, rate: 1000000000/h }
  redis-ip: { key: client_ip, rate: 1000000000/h, backend: redis }
  redis-lease: { key: client_ip, rate: 1000000000/h, backend: redis, lease: 100 }
  nothing: { key: client_ip, rate: 1/h }
upstreams:
  echo: { targets: ["127.0.0.1:$P_UP"] }
routes:
  - { id: local-limit, match: { path_prefix: /local }, upstream: echo, public: true, rate_limits: [local-ip] }
  - { id: redis-limit, match: { path_prefix: /redis }, upstream: echo, public: true, rate_limits: [redis-ip] }
  - { id: redis-lease, match: { path_prefix: /lease }, upstream: echo, public: true, rate_limits: [redis-lease] }
  - { id: limited, match: { path_prefix: /limited }, upstream: echo, public: true, rate_limits: [nothing] }
  - { id: jwt, match: { path_prefix: /jwt }, upstream: echo, authn: [idp] }
  - { id: jwt-nocache, match: { path_prefix: /nocache }, upstream: echo, authn: [idp-nocache] }
  - { id: bench, match: { path_prefix: / }, upstream: echo, public: true }
YAML
# Audit gateways: the same public route, records to a file, chain off and on (HMAC).
audit_conf() { # port admin name extra
  cat <<YAML
server:
  listen: [{ addr: "127.0.0.1:$1" }]
  admin: "127.0.0.1:$2"
  threads: 1
  pid_file: $WORK/$3.pid
  upgrade_sock: $WORK/$3.sock
  grace_period: 0s
audit:
  file: $WORK/$3.jsonl
$4
upstreams:
  echo: { targets: ["127.0.0.1:$P_UP"] }
routes:
  - { id: bench, match: { path_prefix: / }, upstream: echo, public: true }
YAML
}
head -c 48 /dev/urandom | base64 >"$WORK/audit.key"
audit_conf $P_AUD $P_AUD_ADMIN audit "  chain: false" >"$WORK/audit.yaml"
audit_conf $P_CHAIN $P_CHAIN_ADMIN chain "  chain: true
  hmac_key: { file: \"$WORK/audit.key\" }" >"$WORK/chain.yaml"
MINT=${CARGO_TARGET_DIR:-target}/release/examples/mint_tokens
$MINT 10000 tests/fixtures/jwt/rsa.key bench https://bench.test/ >"$WORK/tokens.txt"
TOKEN=$(head -1 "$WORK/tokens.txt")
cat > "$WORK/tokens.lua" <<LUA
local tokens = {}
for line in io.lines("$WORK/tokens.txt") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/nocache/bench/path?q=1", { ["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1] })
end
LUA

taskset -c $LOAD_CPU redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 & pids+=($!); PID_REDIS=$!
taskset -c $LOAD_CPU $BIN echo --listen 127.0.0.1:$P_UP --name bench --fixed >/dev/null 2>&1 & pids+=($!); PID_UP=$!
taskset -c $PROXY_CPU $BARE 127.0.0.1:$P_BARE 127.0.0.1:$P_UP 1 >/dev/null 2>&1 & pids+=($!); PID_BARE=$!
RUST_LOG=warn taskset -c $PROXY_CPU $BIN run -c "$WORK/bench.yaml" >"$WORK/gw.log" 2>&1 & pids+=($!); PID_GW=$!
RUST_LOG=warn taskset -c $PROXY_CPU $BIN run -c "$WORK/audit.yaml" >"$WORK/audit.log" 2>&1 & pids+=($!); PID_AUD=$!
RUST_LOG=warn taskset -c $PROXY_CPU $BIN run -c "$WORK/chain.yaml" >"$WORK/chain.log" 2>&1 & pids+=($!); PID_CHAIN=$!

for p in $P_UP $P_BARE $P_GW $P_AUD $P_CHAIN; do
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$p/warm" 2>/dev/null && break; sleep 0.1; done
done

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$P_ADMIN/metrics" 2>/dev/null | grep -q '^portcullis_redis_connected 1' && break; sleep 0.1
done
curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_GW/redis/warm" | grep -q 200 || { echo "redis scenario not working" >&2; exit 1; }

cpu_ticks() { awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }

# measure NAME PORT PID → appends "name rps p50 p99 cpu_us" to $WORK/results
measure() {
  local name=$1 port=$2 pid=$3
  shift 3
  local t0 t1 out reqs rps p50 p99
  t0=$(cpu_ticks "$pid")
  if [[ $# -eq 0 ]]; then set -- "http://127.0.0.1:$port/bench/path?q=1"; fi
  out=$(taskset -c $LOAD_CPU wrk -t1 -c"$CONN" -d"${DUR}s" --latency "$@")
  t1=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local errs; errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [[ -n "$errs" && "$name" != h_429_rejections ]] && echo "WARNING $name: $errs" >&2
  local cpu; cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
  echo "$name $rps $p50 $p99 $cpu" >>"$WORK/results"
  printf "  %-22s %10s req/s  p50 %-9s p99 %-9s %7s CPU µs/req\n" "$name" "$rps" "$p50" "$p99" "$cpu"
}

echo "machine: $(nproc) CPUs, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'); $(date -u +%F)"
echo "wrk -c$CONN -d${DUR}s per scenario, $ROUNDS interleaved rounds; proxy pinned to CPU $PROXY_CPU, load+upstream on CPU $LOAD_CPU"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  measure "a_upstream_direct" $P_UP $PID_UP
  measure "b_bare_pingora" $P_BARE $PID_BARE
  measure "c_portcullis_public" $P_GW $PID_GW
  measure "d_jwt_rs256_cached" $P_GW $PID_GW -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_GW/jwt/bench/path?q=1"
  measure "e_jwt_rs256_10k_nocache" $P_GW $PID_GW -s "$WORK/tokens.lua" "http://127.0.0.1:$P_GW"
  measure "f_local_limit" $P_GW $PID_GW "http://127.0.0.1:$P_GW/local/bench/path?q=1"
  r0=$(cpu_ticks "$PID_REDIS")
  measure "g_redis_limit" $P_GW $PID_GW "http://127.0.0.1:$P_GW/redis/bench/path?q=1"
  r1=$(cpu_ticks "$PID_REDIS")
  n=$(awk '$1=="g_redis_limit" {r=$2} END {print r}' "$WORK/results")
  awk -v a="$r0" -v b="$r1" -v rps="$n" -v d="$DUR" -v hz="$CLK_TCK" 'BEGIN { printf "  %-22s redis-server itself: %.2f CPU µs/req\n", "", (b - a) * 1e6 / hz / (rps * d) }'
  measure "g2_redis_lease_100" $P_GW $PID_GW "http://127.0.0.1:$P_GW/lease/bench/path?q=1"
  measure "h_429_rejections" $P_GW $PID_GW "http://127.0.0.1:$P_GW/limited/bench/path?q=1"
  measure "i_audit_file" $P_AUD $PID_AUD
  measure "j_audit_hmac_chain" $P_CHAIN $PID_CHAIN
done

echo
echo "median over rounds:"
for s in a_upstream_direct b_bare_pingora c_portcullis_public d_jwt_rs256_cached e_jwt_rs256_10k_nocache f_local_limit g_redis_limit g2_redis_lease_100 h_429_rejections i_audit_file j_audit_hmac_chain; do
  awk -v s="$s" '$1==s {print $5, $2}' "$WORK/results" | sort -n | awk -v s="$s" '{cpu[NR]=$1; rps[NR]=$2} END {m=int((NR+1)/2); printf "  %-22s %7s CPU µs/req  %10s req/s\n", s, cpu[m], rps[m]}'
done | tee "$WORK/median"
# Paired per-round ratios are more robust on a shared machine than a ratio of medians.
ratio() { # scenario goal
  awk -v s="$1" '$1=="b_bare_pingora" {b[++nb]=$5} $1==s {c[++nc]=$5}
    END { for (i = 1; i <= nb; i++) printf "%.3f\n", c[i] / b[i] }' "$WORK/results" | sort -n >"$WORK/ratios"
  echo "  $1 / b_bare_pingora per round: $(tr '\n' ' ' <"$WORK/ratios") → median $(awk '{r[NR]=$1} END {print r[int((NR+1)/2)]}' "$WORK/ratios")   (goal $2)"
}
echo
echo "paired CPU/req ratios (robust on a shared machine):"
ratio c_portcullis_public "<= 1.10"
ratio d_jwt_rs256_cached "<= 1.15"
awk '$1=="c_portcullis_public" {c[++nc]=$5} $1=="e_jwt_rs256_10k_nocache" {e[++ne]=$5}
  END { for (i = 1; i <= nc; i++) printf "%.1f\n", e[i] - c[i] }' "$WORK/results" | sort -n >"$WORK/extra"
echo "  e_jwt_rs256_10k_nocache - c_portcullis_public per round (µs): $(tr '\n' ' ' <"$WORK/extra")(compare with the criterion RS256 verify cost)"
diff_c() { # scenario: its CPU/req minus the public route's, per round
  awk -v s="$1" '$1=="c_portcullis_public" {c[++nc]=$5} $1==s {e[++ne]=$5}
    END { for (i = 1; i <= nc; i++) printf "%.1f\n", e[i] - c[i] }' "$WORK/results" | sort -n | tr '\n' ' '
}
echo "  f_local_limit - c_portcullis_public per round (µs): $(diff_c f_local_limit)"
echo "  g_redis_limit - c_portcullis_public per round (µs): $(diff_c g_redis_limit)"
echo "  g2_redis_lease_100 - c_portcullis_public per round (µs): $(diff_c g2_redis_lease_100)"
echo "  h_429_rejections vs c_portcullis_public per round (µs): $(diff_c h_429_rejections)(negative = a refusal is cheaper than proxying)"
echo "  i_audit_file - c_portcullis_public per round (µs): $(diff_c i_audit_file)"
echo "  j_audit_hmac_chain - c_portcullis_public per round (µs): $(diff_c j_audit_hmac_chain)"
