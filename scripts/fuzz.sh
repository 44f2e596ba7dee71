#!/usr/bin/env bash
# Run the cargo-fuzz targets, each for a bounded time, starting from the checked-in seeds.
#   scripts/fuzz.sh                 every target, 60 s each
#   scripts/fuzz.sh 300             every target, 300 s each
#   scripts/fuzz.sh 120 normalize_path
# Needs a nightly toolchain (installed with rustup when missing) and cargo-fuzz (installed
# from crates.io when missing). Findings land in fuzz/artifacts/<target>/; the corpus grows in
# fuzz/corpus/<target>/ (not checked in; seeds are in fuzz/seeds/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
scripts/deps.sh
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  cp -n "fuzz/seeds/$t/"* "fuzz/corpus/$t/" 2>/dev/null || true
  echo "== fuzz $t for ${secs}s"
  log="fuzz/$t.log"
  # -rss_limit_mb bounds memory per input, -timeout flags a hang (10 s per input);
  # -max_len keeps inputs request-sized (configs may be larger).
  maxlen=4096
  [[ $t == config ]] && maxlen=32768
  [[ $t == front_door ]] && maxlen=16384
  if (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len="$maxlen" -rss_limit_mb=1024 -timeout=10 \
        -print_final_stats=1) >"$log" 2>&1; then
    echo "   ok: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') executions," \
         "$(ls "fuzz/corpus/$t" | wc -l) corpus entries"
  else
    status=1
    echo "   FAILED (see $log and fuzz/artifacts/$t/)"
    tail -30 "$log"
  fi
done
exit $status
