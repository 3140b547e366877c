#!/usr/bin/env bash
# Watchdog benchmark (prints numbers): idle RSS/CPU, crash→running latency,
# command latency through the long poll, peak RSS while downloading 1 GiB.
# Env: BENCH_IDLE_SECS (60), BENCH_DOWNLOAD_MIB (1024).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --workspace
cargo bench -q -p palette-e2e --bench watchdog
