#!/usr/bin/env bash
# Loads palette-server on loopback with wrk and prints numbers (no pass/fail):
#  - v1 command polls carrying heartbeats from 100,000 distinct hostnames
#  - GET /api/v1/agent/version
#  - server RSS with 100,000 hosts known
# Usage: bench/server.sh [seconds per run, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-15}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p palette-server -p palette-ctl
DATA="$(mktemp -d)"; PORT=18181; URL="http://127.0.0.1:$PORT"
PALETTE_LOG=warn PALETTE_ADMIN_TOKEN=bench-admin PALETTE_AGENT_TOKENS=bench-license-key \
  target/release/palette-server --data-dir "$DATA" --listen "127.0.0.1:$PORT" --new-hosts-burst 1000000 >"$DATA/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
head -c 5000000 /dev/urandom >"$DATA/agent.msi"
PALETTE_SERVER=$URL PALETTE_TOKEN=bench-admin target/release/palettectl release publish "$DATA/agent.msi" --version 2.3.4 --platform windows-x86_64 --kind msi >/dev/null
PALETTE_SERVER=$URL PALETTE_TOKEN=bench-admin target/release/palettectl command send stop --all --watch 0 >/dev/null

echo "== v1 command poll + heartbeat, 100,000 hostnames, 64 connections, ${DUR}s"
wrk -t2 -c64 -d"${DUR}s" --latency -s bench/command.lua "$URL" | grep -E "Requests/sec|Latency|50%|99%|requests in"
echo "== GET /api/v1/agent/version, 64 connections, ${DUR}s"
wrk -t2 -c64 -d"${DUR}s" --latency -s bench/version.lua "$URL" | grep -E "Requests/sec|Latency|50%|99%|requests in"
sleep 2 # let the batched inventory flush run
HOSTS=$(curl -fsS -H "Authorization: Bearer bench-admin" "$URL/api/v1/agents" 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' || echo "?")
echo "== hosts known: $HOSTS; server RSS: $(grep VmRSS /proc/$PID/status | awk '{print $2/1024 " MiB"}'), peak: $(grep VmHWM /proc/$PID/status | awk '{print $2/1024 " MiB"}')"
