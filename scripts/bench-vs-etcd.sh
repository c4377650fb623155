#!/usr/bin/env bash
# Side by side on this machine: a three-member etcd on loopback and a three-node leasekeeper
# (both fsync on), the same load generator and shapes against each, one after the other.
#
#   bash scripts/bench-vs-etcd.sh [seconds-per-run] [clients]
#   TLS=1 bash scripts/bench-vs-etcd.sh ...   # both with TLS on client and peer ports;
#                                             # leasekeeper with auth (a token) as well
#   LK_ARGS="--log-store sled" bash scripts/bench-vs-etcd.sh ...   # extra `leasekeeper dev` flags
#
# Installs Debian's etcd-server and etcd-client if they are missing. Prints one row per shape and system and the
# ratio; the raw JSON rows go to target/bench/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CLIENTS=${2:-64}
OUT=target/bench
mkdir -p "$OUT"

# etcd itself, and etcdctl (Debian's etcd-client) to find its leader.
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --locked -q
LK=target/release/leasekeeper
source scripts/bench-lib.sh

# ---------------------------------------------------------------- etcd, three members
TLS=${TLS:-0}
scheme=http
etcd_tls=()
etcdctl_tls=()
bench_etcd_tls=()
if [ "$TLS" = 1 ]; then
  # One CA and one certificate (IP 127.0.0.1) for every etcd member, both ports, as in etcd's
  # own TLS guide; members require each other's certificates.
  scheme=https
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -days 2 -subj /CN=bench-ca -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem" 2>/dev/null
  openssl req "${ec[@]}" -subj /CN=etcd -keyout "$WORK/etcd-key.pem" -out "$WORK/etcd.csr" 2>/dev/null
  printf "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n" >"$WORK/etcd.ext"
  openssl x509 -req -in "$WORK/etcd.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" -days 2 \
    -out "$WORK/etcd.pem" -extfile "$WORK/etcd.ext" 2>/dev/null
  etcd_tls=(--cert-file "$WORK/etcd.pem" --key-file "$WORK/etcd-key.pem"
    --peer-cert-file "$WORK/etcd.pem" --peer-key-file "$WORK/etcd-key.pem"
    --peer-trusted-ca-file "$WORK/ca.pem" --peer-client-cert-auth)
  etcdctl_tls=(--cacert "$WORK/ca.pem")
  bench_etcd_tls=(--cacert "$WORK/ca.pem")
fi
cluster="e1=$scheme://127.0.0.1:23801,e2=$scheme://127.0.0.1:23802,e3=$scheme://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
    --listen-client-urls "$scheme://127.0.0.1:2379$i" --advertise-client-urls "$scheme://127.0.0.1:2379$i" \
    --listen-peer-urls "$scheme://127.0.0.1:2380$i" --initial-advertise-peer-urls "$scheme://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
    "${etcd_tls[@]}" --log-level error >"$WORK/etcd-$i.log" 2>&1 &
  pids+=($!)
done
ETCD_EPS=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
leader=""
for _ in $(seq 1 100); do
  leader=$(ETCDCTL_API=3 etcdctl "${etcdctl_tls[@]}" --endpoints "$ETCD_EPS" endpoint status -w json 2>/dev/null |
    python3 -c 'import json,sys
d=json.load(sys.stdin)
print(next((e["Endpoint"] for e in d if e["Status"]["leader"]==e["Status"]["header"]["member_id"]), ""))' 2>/dev/null || true)
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { echo "etcd did not elect a leader"; exit 1; }
leader=${leader#http://}
leader=${leader#https://}
etcd_eps="$leader,$ETCD_EPS"

# ---------------------------------------------------------------- leasekeeper, three nodes
lk_secure=()
[ "$TLS" = 1 ] && lk_secure=(--secure)
read -r -a lk_args <<<"${LK_ARGS:-}"
"$LK" dev "${lk_secure[@]}" "${lk_args[@]}" --dir "$WORK/lk" --base-port 27301 --peer-base-port 27311 >"$WORK/lk.log" 2>&1 &
pids+=($!)
LK_EPS=127.0.0.1:27301,127.0.0.1:27302,127.0.0.1:27303
bench_lk_tls=()
if [ "$TLS" = 1 ]; then
  # `dev --secure` prints the CA and an admin token: TLS on both ports, auth on.
  for _ in $(seq 1 100); do grep -q "export LEASEKEEPER_CACERT" "$WORK/lk.log" && break; sleep 0.2; done
  exports=$(grep "export LEASEKEEPER_CACERT" "$WORK/lk.log")
  lk_ca=$(echo "$exports" | sed -E 's/.*LEASEKEEPER_CACERT=([^ ]+).*/\1/')
  lk_token=$(echo "$exports" | sed -E 's/.*LEASEKEEPER_TOKEN=([^ ]+).*/\1/')
  bench_lk_tls=(--cacert "$lk_ca" --token "$lk_token")
fi
for _ in $(seq 1 100); do "$LK" status "${bench_lk_tls[@]}" --endpoints "$LK_EPS" >/dev/null 2>&1 && break; sleep 0.2; done

row() { # system bench-args...
  local sys=$1; shift
  local flags=(--duration-s "$SECS" --json "$@")
  if [ "$sys" = etcd ]; then
    "$LK" bench --etcd --endpoints "$etcd_eps" "${bench_etcd_tls[@]}" "${flags[@]}"
  else
    "$LK" bench --endpoints "$LK_EPS" "${bench_lk_tls[@]}" "${flags[@]}"
  fi > "$OUT/tls$TLS-$sys$(echo "$@" | tr -d ' -').json"
  cat "$OUT/tls$TLS-$sys$(echo "$@" | tr -d ' -').json"
}

echo "tls: $TLS"
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); etcd $(etcd --version | head -1 | awk '{print $3}')"
results=()
both() { # label bench-args...
  local label=$1; shift
  local e l
  e=$(row etcd "$@")
  l=$(row leasekeeper "$@")
  results+=("$label|$e|$l")
}
both renew --shape renew --clients "$CLIENTS"
# Workers that run 16 tasks each renew them together: one Heartbeat message with 16 tokens;
# etcd has one lease per keep-alive message, so it gets 16 sent back to back per round.
both renew-16-per-msg --shape renew --clients "$CLIENTS" --leases $((CLIENTS * 16)) --per-message 16
both lifecycle --shape lifecycle --clients "$CLIENTS"
both lifecycle-x4 --shape lifecycle --clients $((CLIENTS * 4))
both submit --shape submit --clients "$CLIENTS"
both renew-1-client --shape renew --clients 1 --conns 1 --leases 1

python3 - "${results[@]}" <<'PY'
import json, sys
print(f"{'shape':<18}{'system':<13}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p999 ms':>9}{'errors':>8}")
for item in sys.argv[1:]:
    shape, e, l = item.split("|")
    e, l = json.loads(e), json.loads(l)
    for name, r in (("etcd", e), ("leasekeeper", l)):
        lat = r["latency"]
        print(f"{shape:<18}{name:<13}{r['ops_per_s']:>10.0f}{lat['p50_ms']:>9.2f}{lat['p99_ms']:>9.2f}{lat['p999_ms']:>9.2f}{r['errors']:>8}")
    ratio = l["ops_per_s"] / e["ops_per_s"] if e["ops_per_s"] else float("inf")
    print(f"{'':<18}{'ratio':<13}{ratio:>9.2f}x")
PY
