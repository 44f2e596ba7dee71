#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: dependencies, formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test --all-targets"
cargo test --all-targets
# The fuzz targets (scripts/fuzz.sh runs them) must keep compiling against the library.
echo "== cargo check fuzz targets"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo check --manifest-path fuzz/Cargo.toml --bins
