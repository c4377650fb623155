#!/usr/bin/env bash
# The cost of metrics and tracing on renew (and lifecycle) throughput, in one run: three-node
# `dev` clusters driven alternately by the same load generator,
#   off     the build at REV, before metrics and tracing existed (default: the last commit
#           without them);
#   metrics this checkout, every node's /metrics scraped once a second (as Prometheus would,
#           more often);
#   traces  the same, and every node exporting spans over OTLP to a local collector stand-in
#           that accepts and discards them;
#   sampled the same with --otlp-sample-ratio 0.1 (one trace in ten exported).
#
#   bash scripts/bench-observability.sh [REV] [seconds-per-run] [clients]
#
# Prints one row per shape, setting and round, and each setting's median against `off`; raw JSON
# in target/bench/. The collector stand-in is a few lines of Python on grpcio and
# opentelemetry-proto, installed into target/py-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-c3b4abe}
SECS=${2:-10}
CLIENTS=${3:-64}
source scripts/bench-lib.sh
OLD=$(binary_at "$REV")
venv=target/py-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet grpcio "opentelemetry-proto>=1.20"

cat >"$WORK/sink.py" <<'PY'
# Accepts OTLP trace exports and discards them, counting spans (printed at exit).
import signal, sys
from concurrent import futures
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
spans = 0
class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        global spans
        spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
server.add_insecure_port(sys.argv[1])
server.start()
def stop(*_):
    print(f"sink: {spans} spans received", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
server.wait_for_termination()
PY
SINK=127.0.0.1:27799
"$venv/bin/python" "$WORK/sink.py" "$SINK" >"$WORK/sink.log" 2>&1 &
sink=$!
pids+=("$sink")

EPS=127.0.0.1:27701,127.0.0.1:27702,127.0.0.1:27703
cluster=""
scraper=""
start() { # off|metrics|traces|sampled
  rm -rf "$WORK/lk"
  case "$1" in
    off) "$OLD" dev --dir "$WORK/lk" --base-port 27701 --peer-base-port 27711 >"$WORK/dev.log" 2>&1 & ;;
    metrics) "$NEW" dev --dir "$WORK/lk" --base-port 27701 --peer-base-port 27711 \
      --metrics-base-port 27721 >"$WORK/dev.log" 2>&1 & ;;
    traces) "$NEW" dev --dir "$WORK/lk" --base-port 27701 --peer-base-port 27711 \
      --metrics-base-port 27721 --otlp-endpoint "http://$SINK" >"$WORK/dev.log" 2>&1 & ;;
    sampled) "$NEW" dev --dir "$WORK/lk" --base-port 27701 --peer-base-port 27711 \
      --metrics-base-port 27721 --otlp-endpoint "http://$SINK" --otlp-sample-ratio 0.1 \
      >"$WORK/dev.log" 2>&1 & ;;
  esac
  cluster=$!
  pids+=("$cluster")
  for _ in $(seq 1 100); do "$NEW" status --endpoints "$EPS" >/dev/null 2>&1 && break; sleep 0.2; done
  "$NEW" status --endpoints "$EPS" >/dev/null 2>&1 || { echo "the $1 cluster did not start"; cat "$WORK/dev.log"; exit 1; }
  if [ "$1" != off ]; then
    (while :; do for p in 27721 27722 27723; do curl -s -o /dev/null "http://127.0.0.1:$p/metrics"; done; sleep 1; done) &
    scraper=$!
    pids+=("$scraper")
  fi
}
stop() {
  [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; scraper=""; }
  kill "$cluster"; wait "$cluster" 2>/dev/null || true; cluster=""
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); off = $REV, metrics, traces and sampled = $(git rev-parse --short HEAD)"
run_rounds observability off,metrics,traces,sampled
kill -TERM "$sink"; wait "$sink" 2>/dev/null || true
cat "$WORK/sink.log"
summarize off,metrics,traces,sampled "${rows[@]}"
