#!/usr/bin/env bash
# The cost of a change on renew and lifecycle throughput: a three-node `dev` cluster of the
# binary built at REV and one of this checkout, driven alternately (REV, this, REV, this) by this
# checkout's load generator with the same shapes, so that both see the same machine.
#
#   bash scripts/bench-before-after.sh REV [seconds-per-run] [clients]
#
# REV is built with `cargo build --release` in a git worktree under target/bench-before/. Prints
# one row per shape, build and round, and the change in the median; raw JSON in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bench-before-after.sh REV [seconds] [clients]}
SECS=${2:-10}
CLIENTS=${3:-64}
source scripts/bench-lib.sh
OLD=$(binary_at "$REV")
pid=""

start() { # before|after
  rm -rf "$WORK/lk"
  if [ "$1" = before ]; then
    "$OLD" dev --dir "$WORK/lk" --base-port 27701 >"$WORK/dev.log" 2>&1 &
  else
    "$NEW" dev --dir "$WORK/lk" --base-port 27701 --peer-base-port 27711 >"$WORK/dev.log" 2>&1 &
  fi
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do "$NEW" status --endpoints "$EPS" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "the $1 cluster did not start"; cat "$WORK/dev.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
EPS=127.0.0.1:27701,127.0.0.1:27702,127.0.0.1:27703

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); before = $REV, after = $(git rev-parse --short HEAD)"
run_rounds before-after before,after
summarize before,after "${rows[@]}"
