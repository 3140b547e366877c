#!/usr/bin/env bash
# The whole test suite: builds every binary (the end-to-end tests run the
# real ones), then runs every crate's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --locked
cargo test --workspace --locked
