#!/usr/bin/env python3
"""Write the JWKS documents Envoy's jwt_authn reads (benches/peers/jwks-*.json).

One document per algorithm, so that each Envoy provider accepts exactly one algorithm
(a combined RSA+EC set would let the RS256 route accept ES256 tokens):
  jwks-rs256.json  RSA public key  tests/fixtures/jwt/rsa.pub.pem    (kid bench, alg RS256)
  jwks-es256.json  P-256 public key tests/fixtures/jwt/ec256.pub.pem (kid bench, alg ES256)
  jwks-hs256.json  oct key = the bytes of benches/peers/hs256.secret (kid bench, alg HS256)

Standard library + the openssl command only. Run from anywhere:
  python3 benches/peers/gen-jwks.py
"""
import base64
import json
import pathlib
import re
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIX = ROOT / "tests" / "fixtures" / "jwt"


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def openssl(*args: str) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def rsa_jwk(pem: pathlib.Path) -> dict:
    text = openssl("rsa", "-pubin", "-in", str(pem), "-noout", "-text", "-modulus").decode()
    n = int(re.search(r"^Modulus=([0-9A-Fa-f]+)$", text, re.M).group(1), 16)
    e = int(re.search(r"^Exponent: (\d+)", text, re.M).group(1))
    return {"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
            "n": b64u(int_bytes(n)), "e": b64u(int_bytes(e))}


def ec_jwk(pem: pathlib.Path) -> dict:
    text = openssl("pkey", "-pubin", "-in", str(pem), "-noout", "-text").decode()
    if "prime256v1" not in text and "P-256" not in text:
        raise SystemExit(f"{pem}: not a P-256 key")
    der = openssl("pkey", "-pubin", "-in", str(pem), "-outform", "DER")
    point = der[-65:]  # SubjectPublicKeyInfo ends with the uncompressed point 04 || X || Y
    if point[0] != 4:
        raise SystemExit(f"{pem}: expected an uncompressed EC point")
    return {"kty": "EC", "kid": "bench", "alg": "ES256", "use": "sig", "crv": "P-256",
            "x": b64u(point[1:33]), "y": b64u(point[33:65])}


def oct_jwk(secret_file: pathlib.Path) -> dict:
    secret = secret_file.read_bytes()
    if secret.endswith(b"\n"):
        secret = secret[:-1]
    return {"kty": "oct", "kid": "bench", "alg": "HS256", "use": "sig", "k": b64u(secret)}


def write(name: str, jwk: dict) -> None:
    (HERE / name).write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    print(f"wrote {HERE / name}")


if __name__ == "__main__":
    write("jwks-rs256.json", rsa_jwk(FIX / "rsa.pub.pem"))
    write("jwks-es256.json", ec_jwk(FIX / "ec256.pub.pem"))
    write("jwks-hs256.json", oct_jwk(HERE / "hs256.secret"))
