#!/usr/bin/env bash
# The test command: unit + property tests, openraft's storage suite, real-cluster tests
# (in-process nodes and real `leasekeeper server` / `leasekeeper worker` processes on
# 127.0.0.1), then the Python SDK's tests against real server processes.
set -euo pipefail
cd "$(dirname "$0")/.."

# The clock-fault tests run one node under libfaketime (Debian package `faketime`); the chaos
# run puts each node in a network namespace of its own (`ip` from iproute2).
missing=()
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || missing+=(faketime)
command -v ip >/dev/null || missing+=(iproute2)
# The Python SDK's TLS tests make their certificates with openssl.
command -v openssl >/dev/null || missing+=(openssl)
# The alert rules in deploy/ are checked and unit-tested with promtool (Debian's prometheus).
command -v promtool >/dev/null || missing+=(prometheus)
# The dashboard's browser test drives Debian's Chromium through its WebDriver (chromedriver).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The deterministic simulation runs a fixed batch of seeds here (scripts/sim-soak.sh runs more).
export LEASEKEEPER_SIM_SEEDS="${LEASEKEEPER_SIM_SEEDS:-150}"
cargo build --locked --all-targets
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked -- --test-threads=2

# Python SDK: installed into a private virtualenv (stubs generated from proto/ by grpcio-tools).
venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "./python[test]"
(cd python/tests && LEASEKEEPER_BIN="$PWD/../../target/debug/leasekeeper" "../../$venv/bin/python" -m pytest -q .)
