#!/usr/bin/env bash
# The fleet at scale (prints numbers, no pass/fail): palette-fleet-sim runs
# N simulated hosts (real v2 clients: long polls, acks, verified downloads)
# against a release-built palette-server on SQLite, on this machine's
# loopback, and measures: check-in load while idle, a command to all hosts
# (issue -> every host acknowledged), a release to all, a rollout wave of
# all (soak 0), the dashboard's render times with every host known, and
# the server's RSS and CPU.
# Usage: bench/fleet.sh [hosts, default 10000] [long-poll wait s, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS="${1:-10000}"; WAIT="${2:-30}"
# Two sockets per simulated host on one machine (client and server side).
ulimit -Hn 65536 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
# The server keeps half its file limit for connections (each may hold a
# second descriptor: an artifact being served); leave room for the
# operator's own requests.
MAXH=$(( $(ulimit -Hn) / 2 - 32 - 100 ))
if [ "$HOSTS" -gt "$MAXH" ]; then
  echo "note: the file limit here ($(ulimit -Hn), not raisable) lets the server hold $MAXH long polls; simulating $MAXH hosts instead of $HOSTS"
  HOSTS=$MAXH
fi
cargo build --release -q -p palette-server -p palette-fleet-sim
DATA="$(mktemp -d)"; PORT=18182; URL="http://127.0.0.1:$PORT"
PALETTE_LOG=warn PALETTE_ADMIN_TOKEN=bench-admin PALETTE_AGENT_TOKENS=bench-license-key \
  target/release/palette-server --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
  --new-hosts-burst 1000000 --max-connections $((HOSTS + 2000)) >"$DATA/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
echo "== palette-server (SQLite), $HOSTS simulated hosts, long polls of ${WAIT}s, $(nproc) cores"
target/release/palette-fleet-sim --servers "$URL" --hosts "$HOSTS" --wait "$WAIT" \
  --agent-token bench-license-key --admin-token bench-admin --server-pids "$PID" --idle-secs 30
echo "== server peak RSS: $(grep VmHWM /proc/$PID/status | awk '{print $2/1024 " MiB"}')"
grep -E "WARN|ERROR" "$DATA/server.log" | tail -5 || true
