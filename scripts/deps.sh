#!/usr/bin/env bash
# Install what building and testing Portcullis needs on a fresh Debian machine that has only
# the Rust toolchain. Idempotent: installs only what is missing.
#   scripts/deps.sh            build + test dependencies
#   scripts/deps.sh bench      also the benchmark tools (wrk)
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_cmd cc || need+=(build-essential)
have_cmd cmake || need+=(cmake)            # pingora-core → flate2 → zlib-ng
have_cmd pkg-config || need+=(pkg-config)
have_pkg libssl-dev || need+=(libssl-dev)  # pingora's openssl feature, linked (not vendored)
have_cmd curl || need+=(curl)              # TLS listener test, demo
have_cmd openssl || need+=(openssl)
have_cmd redis-server || need+=(redis-server)  # tests of the Redis rate-limit backend
if [[ "${1:-}" == "bench" ]]; then
  have_cmd wrk || need+=(wrk)
  have_cmd taskset || need+=(util-linux)
fi

if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
