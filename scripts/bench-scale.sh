#!/usr/bin/env bash
# Scale: load TASKS tasks and LEASES live leases into a three-process cluster on this machine,
# then report per-node RSS, disk used, snapshot size, the lifecycle latency with snapshots being
# built and without any, the time to restart a node and the time to catch up a wiped follower
# (by snapshot).
#
#   bash scripts/bench-scale.sh [tasks=1000000] [leases=100000]
#   STALL_S=30 (seconds of each lifecycle run), KEEP_WORK=1 (keep the data dirs),
#   SERVER_ARGS="--state-store file" (flags for every server start, e.g. the previous layout),
#   LK_BIN=path (run that leasekeeper binary, e.g. an earlier build, instead of building this one)
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-1000000}
LEASES=${2:-100000}
if [ -n "${LK_BIN:-}" ]; then
  LK=$LK_BIN
else
  cargo build --release --locked -q
  LK=$PWD/target/release/leasekeeper
fi
WORK=$(mktemp -d)
declare -A pid
EXTRA=()
cleanup() {
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "work dir kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
addr() { echo "127.0.0.1:$((27500 + $1))"; }
peer() { echo "127.0.0.1:$((27520 + $1))"; }
CLUSTER="1=$(peer 1),2=$(peer 2),3=$(peer 3)"
# Members prove themselves to each other with a secret they share.
export LEASEKEEPER_CLUSTER_SECRET="bench-scale-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
EPS="$(addr 1),$(addr 2),$(addr 3)"
start() { # id [no-init]
  local init=(--initial-cluster "$CLUSTER")
  [ "${2:-}" = no-init ] && init=()
  "$LK" server --id "$1" --listen "$(addr "$1")" --peer-listen "$(peer "$1")" --data-dir "$WORK/node-$1" "${init[@]}" \
    --max-ttl-ms 86400000 ${SERVER_ARGS:-} "${EXTRA[@]}" >>"$WORK/node-$1.log" 2>&1 &
  pid[$1]=$!
}
field() { # node-id field -> value from `status --json`
  "$LK" status --endpoints "$EPS" --json 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); m=[m for m in d['members'] if m['node_id']==$1]; print(m[0].get('$2', 0) if m else 0)"
}
leader_commit() {
  "$LK" status --endpoints "$EPS" --json | python3 -c "import json,sys
d=json.load(sys.stdin); print(max(m.get('applied_index',0) for m in d['members']))"
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
wait_leader() {
  for _ in $(seq 1 300); do
    "$LK" status --endpoints "$EPS" --json 2>/dev/null | grep -q '"leader_addr":"1' && return
    sleep 0.2
  done
}
for i in 1 2 3; do start "$i"; done
wait_leader

term() { "$LK" status --endpoints "$EPS" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["term"])'; }
term0=$(term)
echo "loading $TASKS tasks (term $term0) ..."
loaded=0
t0=$(date +%s)
while [ "$loaded" -lt "$TASKS" ]; do
  n=$("$LK" bench --endpoints "$EPS" --shape submit --clients 64 --duration-s 10 --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ops"])')
  loaded=$((loaded + n))
  echo "  $loaded tasks"
done
echo "loaded in $(( $(date +%s) - t0 )) s; claiming $LEASES leases ..."
"$LK" bench --endpoints "$EPS" --shape renew --leases "$LEASES" --clients 64 --duration-s 5 --json >/dev/null
"$LK" status --endpoints "$EPS"
echo "elections while loading: $(( $(term) - term0 )) (term $term0 -> $(term))"

report() {
  for i in "${!pid[@]}"; do
    rss=$(ps -o rss= -p "${pid[$i]}" | awk '{printf "%.0f", $1/1024}')
    disk=$(du -sm "$WORK/node-$i" | cut -f1)
    snap=$( (stat -c %s "$WORK/node-$i/snapshot" 2>/dev/null || echo 0) | awk '{printf "%.1f", $1/1048576}')
    echo "node $i: rss ${rss} MiB, disk ${disk} MiB, snapshot ${snap:-0} MiB, tasks $(field "$i" tasks), live leases $(field "$i" live_leases)"
  done
}
report

# Snapshots against the lifecycle tail: the same lifecycle run on a freshly restarted cluster,
# once with no snapshots and once while every node builds one every 5 000 entries (a few in the
# run; the default is every 20 000).
restart_all() { # extra server flags
  for i in 1 2 3; do kill "${pid[$i]}"; done
  for i in 1 2 3; do wait "${pid[$i]}" 2>/dev/null || true; done
  EXTRA=("$@")
  for i in 1 2 3; do start "$i"; done
  wait_leader
  local target
  target=$(leader_commit)
  for i in 1 2 3; do
    for _ in $(seq 1 6000); do [ "$(field "$i" applied_index)" -ge "$target" ] 2>/dev/null && break; sleep 0.05; done
  done
  sleep 5 # any snapshot the restart starts is done before the run
}
built_since() { # ISO time -> the "snapshot built" / "state checkpointed" lines logged since then
  cat "$WORK"/node-*.log | grep -E "snapshot built|state checkpointed" | awk -v s="$1" '$1 >= s' || true
}
lifecycle() { # label
  local since
  since=$(date -u +%Y-%m-%dT%H:%M:%S)
  echo "lifecycle, 64 clients, ${STALL_S:-40} s, $1:"
  "$LK" bench --endpoints "$EPS" --shape lifecycle --clients 64 --duration-s "${STALL_S:-40}"
  echo "  snapshots built by the three nodes during the run: $(built_since "$since" | wc -l)"
  built_since "$since" | { grep -oE '(records=|bytes=).*' || true; } | sed 's/^/    /'
}
restart_all --snapshot-every-entries 1000000000
lifecycle "no snapshots"
restart_all --snapshot-every-entries 5000
lifecycle "a snapshot every 5 000 entries"
restart_all

# Peak resident memory of some processes, sampled every 100 ms until $WORK/sampling.stop exists.
sample_rss() { # out-file pid...
  local out=$1 p r
  shift
  declare -A peak
  while [ ! -e "$WORK/sampling.stop" ]; do
    for p in "$@"; do
      r=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "${peak[$p]:-0}" ] && peak[$p]=$r
    done
    sleep 0.1
  done
  for p in "$@"; do echo "$(( ${peak[$p]:-0} / 1024 ))"; done >"$out"
}
rss_of() { awk '/^VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

# Restart a follower (SIGKILL, then start): time until it has applied what the leader had.
leader=$("$LK" status --endpoints "$EPS" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
f=$(( leader % 3 + 1 ))
target=$(leader_commit)
kill -9 "${pid[$f]}"; wait "${pid[$f]}" 2>/dev/null || true
t0=$(date +%s%N)
start "$f"
rm -f "$WORK/sampling.stop"
sample_rss "$WORK/peaks" "${pid[$f]}" &
sampler=$!
for _ in $(seq 1 6000); do [ "$(field "$f" applied_index)" -ge "$target" ] 2>/dev/null && break; sleep 0.05; done
echo "restart of node $f (SIGKILL, then start): caught up to index $target in $(ms_since "$t0") ms"
touch "$WORK/sampling.stop"
wait "$sampler"
echo "peak RSS of node $f while it restarted: $(cat "$WORK/peaks") MiB, $(rss_of "${pid[$f]}") MiB after"

# A node that lost its disk rejoins under a new id (as with etcd: remove the member, add a new
# one): it starts empty, is added as a learner, gets the leader's snapshot, then votes.
leader=$("$LK" status --endpoints "$EPS" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
leader_rss=$(rss_of "${pid[$leader]}")
kill -9 "${pid[$f]}"; wait "${pid[$f]}" 2>/dev/null || true
rm -rf "$WORK/node-$f"
"$LK" node remove "$f" --endpoints "$EPS" >/dev/null
target=$(leader_commit)
new=$((f + 3))
"$LK" server --id "$new" --listen "$(addr "$f")" --peer-listen "$(peer "$f")" --data-dir "$WORK/node-$new" --max-ttl-ms 86400000 ${SERVER_ARGS:-} >>"$WORK/node-$new.log" 2>&1 &
pid[$new]=$!
unset "pid[$f]"
t0=$(date +%s%N)
rm -f "$WORK/sampling.stop"
sample_rss "$WORK/peaks" "${pid[$leader]}" "${pid[$new]}" &
sampler=$!
"$LK" node add "$new" "$(peer "$f")" --endpoints "$EPS" >/dev/null
for _ in $(seq 1 6000); do [ "$(field "$new" applied_index)" -ge "$target" ] 2>/dev/null && break; sleep 0.05; done
echo "wiped node rejoined as node $new and caught up by snapshot to index $target in $(ms_since "$t0") ms"
touch "$WORK/sampling.stop"
wait "$sampler"
mapfile -t peaks <"$WORK/peaks"
echo "peak RSS while the snapshot was sent: leader (node $leader) ${peaks[0]} MiB (${leader_rss} MiB before), new node ${peaks[1]} MiB"
report
