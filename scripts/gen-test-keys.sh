#!/usr/bin/env bash
# Regenerate the JWT test keys (tests only; never use them anywhere else).
set -euo pipefail
cd "$(dirname "$0")/../tests/fixtures/jwt"
gen() { # name algorithm-args...
  local name=$1; shift
  openssl genpkey "$@" -out "$name.key" 2>/dev/null
  openssl pkey -in "$name.key" -pubout -out "$name.pub.pem"
}
gen rsa -algorithm RSA -pkeyopt rsa_keygen_bits:2048
gen rsa-other -algorithm RSA -pkeyopt rsa_keygen_bits:2048
gen rsa-weak -algorithm RSA -pkeyopt rsa_keygen_bits:1024
gen ec256 -algorithm EC -pkeyopt ec_paramgen_curve:P-256
gen ec384 -algorithm EC -pkeyopt ec_paramgen_curve:P-384
gen ed25519 -algorithm ED25519
echo "regenerated $(pwd)"
