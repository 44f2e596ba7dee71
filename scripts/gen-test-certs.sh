#!/usr/bin/env bash
# Regenerate the TLS test fixtures (a private CA and a localhost server certificate).
# These are for tests and the TLS example only; never use them in production.
set -euo pipefail
cd "$(dirname "$0")/../tests/fixtures/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
  -subj "/CN=Portcullis Test CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 \
  -extfile server.ext -out server.pem 2>/dev/null
# A second server certificate from the same CA (certificate rotation on reload).
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=rotated.localhost" -keyout server2.key -out server2.csr 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > server2.ext
openssl x509 -req -in server2.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 \
  -extfile server2.ext -out server2.pem 2>/dev/null
# A second, unrelated CA: upstream verification against it must fail.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
  -subj "/CN=Unrelated CA" -keyout other-ca.key -out other-ca.pem 2>/dev/null
# Client certificates for mTLS: one issued by the test CA (SAN URI + DNS, CN alice), one
# self-signed "rogue" certificate that no trusted CA vouches for.
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=alice" -keyout client.key -out client.csr 2>/dev/null
printf "subjectAltName=URI:spiffe://portcullis.test/alice,DNS:alice.clients.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n" > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 \
  -extfile client.ext -out client.pem 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
  -subj "/CN=alice" -addext "subjectAltName=URI:spiffe://portcullis.test/alice" \
  -keyout rogue-client.key -out rogue-client.pem 2>/dev/null
rm -f server.csr server.ext server2.csr server2.ext client.csr client.ext ca.srl other-ca.key
echo "regenerated $(pwd)"
