# Shared by the bench scripts (sourced, not run): this checkout's release binary ($NEW), raw
# results under $OUT, a scratch directory removed at exit with every process started into
# `pids`, and the release build of another revision.

OUT=target/bench
mkdir -p "$OUT"
cargo build --release --locked -q
NEW=$PWD/target/release/leasekeeper

WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The release binary of revision $1, built in a git worktree under target/bench-before/.
binary_at() {
  local tree=$PWD/target/bench-before/$1
  [ -d "$tree" ] || git worktree add -f --detach "$tree" "$1" >/dev/null
  (cd "$tree" && cargo build --release --locked -q)
  echo "$tree/target/release/leasekeeper"
}

# Prints the rows ("shape|setting|round|bench JSON", one argument each) and each setting's median
# ops/s against the first setting named in $1 (a comma-separated list, baseline first).
summarize() {
  python3 - "$@" <<'PY'
import json, statistics, sys
settings = sys.argv[1].split(",")
by = {}
print(f"{'shape':<11}{'setting':<9}{'round':>6}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
for item in sys.argv[2:]:
    shape, setting, rnd, r = item.split("|", 3)
    r = json.loads(r)
    by.setdefault((shape, setting), []).append(r["ops_per_s"])
    lat = r["latency"]
    print(f"{shape:<11}{setting:<9}{rnd:>6}{r['ops_per_s']:>10.0f}{lat['p50_ms']:>9.2f}{lat['p99_ms']:>9.2f}{r['errors']:>8}")
base = settings[0]
for shape in sorted({k[0] for k in by}, reverse=True):
    b = statistics.median(by[(shape, base)])
    for setting in settings[1:]:
        on = statistics.median(by[(shape, setting)])
        print(f"{shape:<11}{setting:<9} median {on:.0f}/s against {base} {b:.0f}/s: {100 * (on - b) / b:+.1f} %")
PY
}

# Runs both shapes under every setting of $2 (comma-separated), two rounds, alternately, with
# the caller's `start SETTING` and `stop` around each run; raw JSON to $OUT/$1-*.json. Fills
# `rows` for `summarize`.
run_rounds() {
  rows=()
  local round setting shape f
  for round in 1 2; do
    for setting in ${2//,/ }; do
      for shape in renew lifecycle; do
        start "$setting"
        f="$OUT/$1-$shape-$setting-$round.json"
        "$NEW" bench --endpoints "$EPS" --shape "$shape" --clients "$CLIENTS" --duration-s "$SECS" --json >"$f"
        rows+=("$shape|$setting|$round|$(cat "$f")")
        stop
      done
    done
  done
}
