#!/usr/bin/env bash
# Dashboard load times on a cluster holding TASKS tasks and LEASES live leases: three release
# nodes on this machine, loaded through the bench's submit shape, then every page and JSON
# endpoint fetched ROUNDS times with curl (the time to the last byte). Prints the median, the
# 90th percentile and the maximum per page.
#
#   bash scripts/bench-dashboard.sh [tasks=1000000] [leases=10000] [rounds=20]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-1000000}
LEASES=${2:-10000}
ROUNDS=${3:-20}
source scripts/bench-lib.sh
LK=$NEW
addr() { echo "127.0.0.1:$((27600 + $1))"; }
peer() { echo "127.0.0.1:$((27620 + $1))"; }
http() { echo "127.0.0.1:$((27640 + $1))"; }
CLUSTER="1=$(peer 1),2=$(peer 2),3=$(peer 3)"
export LEASEKEEPER_CLUSTER_SECRET="bench-dash-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
EPS="$(addr 1),$(addr 2),$(addr 3)"
for i in 1 2 3; do
  "$LK" server --id "$i" --listen "$(addr "$i")" --peer-listen "$(peer "$i")" --metrics-listen "$(http "$i")" \
    --data-dir "$WORK/node-$i" --initial-cluster "$CLUSTER" --max-ttl-ms 86400000 >>"$WORK/node-$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do
  "$LK" status --endpoints "$EPS" --json 2>/dev/null | grep -q '"leader_addr":"1' && break
  sleep 0.2
done
echo "loading $TASKS tasks ..."
loaded=0
while [ "$loaded" -lt "$TASKS" ]; do
  n=$("$LK" bench --endpoints "$EPS" --shape submit --clients 64 --duration-s 10 --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ops"])')
  loaded=$((loaded + n))
  echo "  $loaded tasks"
done
"$LK" bench --endpoints "$EPS" --shape renew --leases "$LEASES" --clients 64 --duration-s 5 --json >/dev/null
"$LK" status --endpoints "$EPS"
H=$(http 1)
first=$(curl -s "http://$H/api/v1/tasks?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tasks"][0]["id"])')
queue=$(curl -s "http://$H/api/v1/tasks?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tasks"][0]["queue"])')
pages=(
  "/" "/tasks" "/tasks?queue=$queue&state=pending" "/tasks?prefix=${first:0:2}" "/tasks?state=running"
  "/tasks/$first" "/running" "/verdicts"
  "/api/v1/cluster" "/api/v1/queues" "/api/v1/tasks?limit=200" "/api/v1/leases?limit=500"
)
printf '%-44s %8s %8s %8s %9s\n' page "p50 ms" "p90 ms" "max ms" "bytes"
for p in "${pages[@]}"; do
  times=()
  for _ in $(seq 1 "$ROUNDS"); do
    times+=("$(curl -s -o "$WORK/page" -w '%{time_total}' "http://$H$p")")
  done
  size=$(stat -c %s "$WORK/page")
  python3 - "$p" "$size" "${times[@]}" <<'PY'
import statistics, sys
page, size, ts = sys.argv[1], sys.argv[2], sorted(float(t) * 1000 for t in sys.argv[3:])
p90 = ts[min(len(ts) - 1, int(len(ts) * 0.9))]
print(f"{page[:44]:<44} {statistics.median(ts):8.1f} {p90:8.1f} {ts[-1]:8.1f} {size:>9}")
PY
done
for i in 1 2 3; do
  echo "node $i: rss $(ps -o rss= -p "${pids[$((i - 1))]}" | awk '{printf "%.0f", $1/1024}') MiB"
done
