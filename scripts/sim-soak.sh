#!/usr/bin/env bash
# A long soak of the deterministic simulation (tests/t95_simulation.rs): many seeds, release
# build. Every seed prints one line; a failing seed prints its faults and violations and the
# command that replays it exactly.
#
#   bash scripts/sim-soak.sh              # seeds 1..2000
#   bash scripts/sim-soak.sh 10000 5000   # 10 000 seeds starting at 5000
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-2000}"
first="${2:-1}"
start=$(date +%s)
LEASEKEEPER_SIM_FIRST="$first" LEASEKEEPER_SIM_SEEDS="$seeds" \
  cargo test --release --locked --test t95_simulation seeds_hold_every_invariant -- --nocapture
echo "sim-soak: seeds $first..$((first + seeds - 1)) passed in $(( $(date +%s) - start )) s"
