#!/usr/bin/env bash
# The test command: unit + property tests, openraft's storage suite, and real-cluster tests
# (in-process nodes and real `leasekeeper server` processes on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --all-targets
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked -- --test-threads=2
