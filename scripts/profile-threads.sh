#!/usr/bin/env bash
# Where a bench shape's time goes, per thread: starts `leasekeeper dev` (three nodes in one
# process, one event-loop thread each), runs one `leasekeeper bench` against it and prints, for
# every thread of the cluster process, the CPU it used and the context switches it made per
# operation, plus the load generator's own CPU. With PERF=1 it also samples the leader's
# event-loop thread with `perf record --call-graph dwarf` and prints the heaviest call paths.
#
#   bash scripts/profile-threads.sh [bench args...]     e.g. --shape renew --clients 1 --leases 1
#
# Defaults to `--shape renew --clients 64`, for 5 s. Needs a release build (it makes one).
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--shape renew --clients 64)
[[ " ${ARGS[*]} " == *" --duration-s "* ]] || ARGS+=(--duration-s 5)
cargo build --release --locked -q
LK=$PWD/target/release/leasekeeper
WORK=$(mktemp -d)
cleanup() {
  [ -n "${DEV:-}" ] && kill "$DEV" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"$LK" dev --dir "$WORK/lk" --base-port 27601 --peer-base-port 27611 >"$WORK/dev.log" 2>&1 &
DEV=$!
EPS=127.0.0.1:27601,127.0.0.1:27602,127.0.0.1:27603
for _ in $(seq 1 100); do "$LK" status --endpoints "$EPS" >/dev/null 2>&1 && break; sleep 0.2; done
leader=$("$LK" status --endpoints "$EPS" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
hz=$(getconf CLK_TCK)

# tid comm cpu-ticks voluntary+involuntary-switches, one line per thread
snap() {
  for t in /proc/"$DEV"/task/*; do
    printf '%s %s %s %s\n' "$(basename "$t")" "$(tr ' ' '_' <"$t/comm")" \
      "$(awk '{print $14 + $15}' "$t/stat")" \
      "$(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status")"
  done | sort
}
snap >"$WORK/before"
if [ "${PERF:-0}" = 1 ]; then
  tid=$(awk -v n="node-$leader" '$2 == n {print $1}' "$WORK/before")
  (sleep 1 && perf record -q -e cpu-clock -F 1000 --call-graph dwarf,16384 -t "$tid" \
    -o "$WORK/perf.data" -- sleep 3 >/dev/null 2>&1) &
  PERF_PID=$!
fi
TIMEFORMAT='%U %S'
{ time "$LK" bench --endpoints "$EPS" "${ARGS[@]}" --json >"$WORK/report.json" \
  2>"$WORK/bench.err"; } 2>"$WORK/bench-cpu"
snap >"$WORK/after"
[ -n "${PERF_PID:-}" ] && wait "$PERF_PID"

python3 - "$WORK" "$hz" "$leader" <<'PY'
import json, sys
work, hz, leader = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rep = json.load(open(f"{work}/report.json"))
ops = max(rep["ops"], 1)
def load(name):
    return {l.split()[0]: l.split()[1:] for l in open(f"{work}/{name}")}
before, after = load("before"), load("after")
rows = {}
for tid, (comm, ticks, sw) in after.items():
    b = before.get(tid, [comm, "0", "0"])
    name = comm + (" (leader)" if comm == f"node-{leader}" else "")
    if comm.startswith("sled-io"):
        name = "sled-io (all)"
    r = rows.setdefault(name, [0, 0, 0])
    r[0] += int(ticks) - int(b[1]); r[1] += int(sw) - int(b[2]); r[2] += 1
user, sys_ = map(float, open(f"{work}/bench-cpu").read().split())
print(f"{rep['shape']}: {rep['ops_per_s']:.0f} ops/s, p50 {rep['latency']['p50_ms']:.2f} ms, "
      f"p99 {rep['latency']['p99_ms']:.2f} ms, {rep['ops']} ops in {rep['seconds']:.1f} s")
print(f"{'thread':<22}{'threads':>8}{'cpu %':>8}{'cpu us/op':>11}{'switches/op':>13}")
total = 0
for name, (ticks, sw, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
    secs = ticks / hz
    total += secs
    if ticks == 0 and sw == 0:
        continue
    print(f"{name:<22}{n:>8}{100 * secs / rep['seconds']:>8.0f}{1e6 * secs / ops:>11.1f}{sw / ops:>13.2f}")
print(f"{'cluster, all threads':<30}{100 * total / rep['seconds']:>8.0f}{1e6 * total / ops:>11.1f}")
print(f"{'load generator':<30}{100 * (user + sys_) / rep['seconds']:>8.0f}{1e6 * (user + sys_) / ops:>11.1f}")
PY
if [ -n "${PERF_PID:-}" ] && [ -s "$WORK/perf.data" ]; then
  echo "leader event loop, heaviest call paths (perf, children):"
  perf report -i "$WORK/perf.data" --children --sort sym -g none --stdio --percent-limit 3 \
    2>/dev/null | grep '%' | grep -v '\[k\]' | head -40
fi
