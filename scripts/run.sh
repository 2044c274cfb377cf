#!/usr/bin/env bash
# Installs what Keelson needs, builds it (release), and runs the keelson command with the given
# arguments (default: `up`, the local mesh with bookinfo). Needs root for network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bins
[ "$#" -gt 0 ] || set -- up
exec target/release/keelson "$@"
