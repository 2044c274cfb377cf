#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this). Needs root: the end-to-end
# tests build network namespaces and fail loudly without them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export CARGO_TERM_COLOR=never
echo "== fmt";    cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
# The e2e tests run the real binaries: build them in the same (dev) profile first.
echo "== build";  cargo build --workspace --bins
echo "== test";   cargo test --workspace -- --test-threads=4
leftover=$(ip netns list | grep -c '^kt' || true)
if [ "$leftover" -ne 0 ]; then
  echo "tests left $leftover network namespaces behind:"; ip netns list | grep '^kt'; exit 1
fi
echo "== all tests passed"
