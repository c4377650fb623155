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
OUT=target/bench
mkdir -p "$OUT"
cargo build --release --locked -q
NEW=$PWD/target/release/leasekeeper
TREE=$PWD/target/bench-before/$REV
if [ ! -d "$TREE" ]; then
  git worktree add -f --detach "$TREE" "$REV" >/dev/null
fi
(cd "$TREE" && cargo build --release --locked -q)
OLD=$TREE/target/release/leasekeeper
WORK=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start() { # before|after
  rm -rf "$WORK/lk"
  if [ "$1" = before ]; then
    "$OLD" dev --dir "$WORK/lk" --base-port 27701 >"$WORK/dev.log" 2>&1 &
  else
    "$NEW" dev --dir "$WORK/lk" --base-port 27701 --peer-base-port 27711 >"$WORK/dev.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 100); do "$NEW" status --endpoints "$EPS" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "the $1 cluster did not start"; cat "$WORK/dev.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
EPS=127.0.0.1:27701,127.0.0.1:27702,127.0.0.1:27703

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); before = $REV, after = $(git rev-parse --short HEAD)"
rows=()
for round in 1 2; do
  for build in before after; do
    for shape in renew lifecycle; do
      start "$build"
      f="$OUT/before-after-$shape-$build-$round.json"
      "$NEW" bench --endpoints "$EPS" --shape "$shape" --clients "$CLIENTS" --duration-s "$SECS" --json >"$f"
      rows+=("$shape|$build|$round|$(cat "$f")")
      stop
    done
  done
done
python3 - "${rows[@]}" <<'PY'
import json, statistics, sys
by = {}
print(f"{'shape':<11}{'build':<8}{'round':>6}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
for item in sys.argv[1:]:
    shape, build, rnd, r = item.split("|", 3)
    r = json.loads(r)
    by.setdefault((shape, build), []).append(r["ops_per_s"])
    lat = r["latency"]
    print(f"{shape:<11}{build:<8}{rnd:>6}{r['ops_per_s']:>10.0f}{lat['p50_ms']:>9.2f}{lat['p99_ms']:>9.2f}{r['errors']:>8}")
for shape in ("renew", "lifecycle"):
    b = statistics.median(by[(shape, "before")])
    a = statistics.median(by[(shape, "after")])
    print(f"{shape:<11}median before {b:.0f}/s, after {a:.0f}/s: {100 * (a - b) / b:+.1f} %")
PY
