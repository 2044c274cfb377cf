#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this). Needs root: the end-to-end
# tests build network namespaces and fail loudly without them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export CARGO_TERM_COLOR=never
echo "== fmt";    cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
# Licenses, duplicate versions and sources (deny.toml); advisories too where the RustSec
# database (on GitHub) can be fetched, which these machines cannot do (docs/HARDENING.md).
echo "== supply chain"; target/tools/bin/cargo-deny check licenses bans sources
if timeout 120 target/tools/bin/cargo-deny fetch db >/dev/null 2>&1; then
  target/tools/bin/cargo-deny check advisories
else
  echo "advisories: the RustSec database cannot be fetched from here; not checked"
fi
# The e2e tests run the real binaries: build them in the same (dev) profile first.
rm -f target/leaked-processes.log
echo "== build";  cargo build --workspace --bins
echo "== test";   cargo test --workspace -- --test-threads=4
# The suites that depend on how pods are redirected, again with eBPF redirection (the whole
# suite above ran with iptables; the nftables and eBPF flavours also have their own tests).
echo "== test (eBPF redirection)"
KEELSON_TEST_REDIRECT=ebpf cargo test -p keelson-tests \
  --test inpod --test mesh --test dns --test authz --test waypoint --test supervise \
  --test l4 --test policy_matrix --test drain --test gateway -- --test-threads=4
# Every fuzz target for a bounded time (docs/HARDENING.md; longer runs: scripts/fuzz.sh N).
echo "== fuzz";   bash scripts/fuzz.sh 10
# Processes a test's mesh left running after `keelson down` (the tests kill them by pid and
# record them here): reported, to be traced to their test.
if [ -s target/leaked-processes.log ]; then
  echo "== processes that outlived their mesh (killed):"; cat target/leaked-processes.log
fi
leftover=$(ip netns list | grep -c '^kt' || true)
if [ "$leftover" -ne 0 ]; then
  echo "tests left $leftover network namespaces behind:"; ip netns list | grep '^kt'; exit 1
fi
echo "== all tests passed"
