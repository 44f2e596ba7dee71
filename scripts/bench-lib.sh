# Sourced by scripts/bench.sh and scripts/bench-instructions.sh: the gateway configurations
# both measure, so the callgrind counts and the wrk figures are of the same S5. Needs $WORK
# (a scratch directory) and $ROOT (the checkout).

# bench_server NAME PORT ADMIN_PORT: the server block of a one-worker bench gateway.
bench_server() {
  cat <<YAML
server:
  listen: [{ addr: "127.0.0.1:$2" }]
  admin: "127.0.0.1:$3"
  threads: 1
  pid_file: $WORK/$1.pid
  upgrade_sock: $WORK/$1.sock
  grace_period: 0s
YAML
}

# bench_jwt NAME ALG KEY_LINE [EXTRA_LINE]: one JWT authenticator for issuer https://bench.test/.
bench_jwt() {
  cat <<YAML
  $1:
    jwt:
      issuer: "https://bench.test/"
      algorithms: [$2]
      $3
${4:-}
YAML
}

# bench_full_yaml PORT ADMIN_PORT UPSTREAM_PORT: S5, the full stack (RS256 with its token
# cache, a scope policy, two rate limits, audit file with HMAC chain, metrics) on /full/, and
# the same without the token cache on /full-nocache/ (S6).
bench_full_yaml() {
  head -c 48 /dev/urandom | base64 >"$WORK/audit.key"
  local rs_key="keys: [{ kid: bench, pem_file: \"$ROOT/tests/fixtures/jwt/rsa.pub.pem\" }]"
  bench_server full "$1" "$2"
  cat <<YAML
audit:
  file: $WORK/audit.jsonl
  chain: true
  hmac_key: { file: "$WORK/audit.key" }
authenticators:
$(bench_jwt rs RS256 "$rs_key")
$(bench_jwt rs-nocache RS256 "$rs_key" "      token_cache: 0")
policies:
  bench-scope: { scopes_all: [bench] }
rate_limits:
  per-subject: { key: subject, rate: 1000000000/h }
  per-ip: { key: client_ip, rate: 1000000000/h }
upstreams:
  echo: { targets: ["127.0.0.1:$3"] }
routes:
  - { id: full, match: { path_prefix: /full/, methods: [GET, HEAD] }, upstream: echo, authn: [rs], policy: bench-scope, rate_limits: [per-subject, per-ip] }
  - { id: full-nocache, match: { path_prefix: /full-nocache/, methods: [GET, HEAD] }, upstream: echo, authn: [rs-nocache], policy: bench-scope, rate_limits: [per-subject, per-ip] }
YAML
}
