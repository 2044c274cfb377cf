#!/usr/bin/env bash
# Builds the cargo-fuzz targets of fuzz/ and runs each for SECONDS (default 15). Stable Rust:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its instrumentation flags. cargo-fuzz comes from
# scripts/setup.sh. A crash fails the run and leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
export PATH="$PWD/target/tools/bin:$PATH" RUSTC_BOOTSTRAP=1
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^keelson-fuzz$')
cargo fuzz build -O --target-dir target/fuzz
for t in $targets; do
  echo "== fuzz $t (${seconds}s)"
  mkdir -p "fuzz/corpus/$t"
  log="target/fuzz/$t.log"
  if ! cargo fuzz run -O --target-dir target/fuzz "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/"
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
done
echo "== fuzzing done"
