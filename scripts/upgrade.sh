#!/usr/bin/env bash
# Zero-downtime binary upgrade of a running Portcullis.
#
#   scripts/upgrade.sh [-c CONFIG] [--binary NEW] [--install DEST]
#
# 1. `NEW check -c CONFIG`: the new binary must accept the config, or nothing happens.
# 2. With --install DEST (the path the running gateway was started from), the current DEST is
#    kept as DEST.prev (to roll back: scripts/upgrade.sh --binary DEST.prev --install DEST) and
#    NEW is copied over DEST atomically (write aside, rename), so the running process can start
#    it. Without --install, the running process restarts the binary at its own path: NEW is
#    then only used to check the config.
# 3. `portcullis upgrade -c CONFIG`: SIGUSR2 to the pid in server.pid_file. The running process
#    starts the binary at its own path with --upgrade, hands the listening sockets over
#    (server.upgrade_sock), drains in-flight requests for server.grace_period and exits. The
#    command returns once the new pid answers on the admin listener and the old one is gone,
#    and exits 1 if the upgrade was aborted (the old process then keeps serving).
#
# Defaults: CONFIG=conf/portcullis.yaml, NEW=target/release/portcullis.
set -euo pipefail
CONFIG=conf/portcullis.yaml
NEW=${CARGO_TARGET_DIR:-target}/release/portcullis
DEST=
while [ $# -gt 0 ]; do
  case "$1" in
    -c|--config) CONFIG=$2; shift 2 ;;
    --binary) NEW=$2; shift 2 ;;
    --install) DEST=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -x "$NEW" ] || { echo "no executable at $NEW (build with: cargo build --release)" >&2; exit 2; }

"$NEW" check -c "$CONFIG"
if [ -n "$DEST" ]; then
  [ -e "$DEST" ] && cp -p "$DEST" "$DEST.prev"
  install -m 0755 "$NEW" "$DEST.new"
  mv -f "$DEST.new" "$DEST"
  echo "installed $NEW at $DEST (previous binary kept as $DEST.prev)"
  NEW=$DEST
else
  echo "note: no --install given: the gateway restarts the binary at the path it was started from" >&2
fi
exec "$NEW" upgrade -c "$CONFIG"
