#!/usr/bin/env bash
# The fleet at scale (prints numbers, no pass/fail): palette-fleet-sim runs
# N simulated hosts (real v2 clients: long polls, acks, verified downloads)
# against release-built palette-servers on this machine's loopback and
# measures: check-in load while idle, a command to all hosts (issue ->
# every host acknowledged), a release to all, a rollout wave of all (soak
# 0), the dashboard's render times with every host known, and each
# server's RSS and CPU.
# Usage: bench/fleet.sh [hosts, default 10000] [long-poll wait s, default 30] [replicas, default 1]
#   SIM_ARGS: more palette-fleet-sim options, e.g. "--scenarios idle,command".
#   replicas 1: one server on SQLite; 2 or more: that many replicas on one
#   PostgreSQL database (scripts/pg-test-cluster.sh starts a cluster), the
#   hosts spread over them.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS="${1:-10000}"; WAIT="${2:-30}"; REPLICAS="${3:-1}"
# Two sockets per simulated host on one machine (client and server side).
ulimit -Hn 65536 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
# A server keeps half its file limit for connections (each may hold a
# second descriptor: an artifact being served); leave room for the
# operator's own requests.
MAXH=$(( ($(ulimit -Hn) / 2 - 32 - 100) * REPLICAS ))
if [ "$HOSTS" -gt "$MAXH" ]; then
  echo "note: the file limit here ($(ulimit -Hn), not raisable) lets $REPLICAS server(s) hold $MAXH long polls; simulating $MAXH hosts instead of $HOSTS"
  HOSTS=$MAXH
fi
cargo build --release -q -p palette-server -p palette-fleet-sim
DATA="$(mktemp -d)"
DB_ARGS=()
if [ "$REPLICAS" -gt 1 ]; then
  PG="$(./scripts/pg-test-cluster.sh)"
  DB="palette_bench_$$"
  psql "$PG" -q -c "CREATE DATABASE $DB" >/dev/null
  DB_ARGS=(--database "${PG%/*}/$DB")
fi
PIDS=(); URLS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ "$REPLICAS" -gt 1 ] && psql "$PG" -q -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1
  if [ -n "${KEEP_DATA:-}" ]; then echo "data kept in $DATA"; else rm -rf "$DATA"; fi
}
trap cleanup EXIT
for i in $(seq 1 "$REPLICAS"); do
  PORT=$((18181 + i))
  PALETTE_LOG=warn PALETTE_ADMIN_TOKEN=bench-admin PALETTE_AGENT_TOKENS=bench-license-key \
    target/release/palette-server --data-dir "$DATA" --listen "127.0.0.1:$PORT" "${DB_ARGS[@]}" \
    --new-hosts-burst 1000000 --max-connections $((HOSTS / REPLICAS + 2000)) >>"$DATA/server-$i.log" 2>&1 &
  PIDS+=($!); URLS+=("http://127.0.0.1:$PORT")
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
done
STORE=SQLite; [ "$REPLICAS" -gt 1 ] && STORE="PostgreSQL, $REPLICAS replicas"
echo "== palette-server ($STORE), $HOSTS simulated hosts, long polls of ${WAIT}s, $(nproc) cores"
target/release/palette-fleet-sim --servers "$(IFS=,; echo "${URLS[*]}")" --hosts "$HOSTS" --wait "$WAIT" \
  --agent-token bench-license-key --admin-token bench-admin --server-pids "$(IFS=,; echo "${PIDS[*]}")" --idle-secs 30 \
  ${SIM_ARGS:-}
for p in "${PIDS[@]}"; do
  echo "== server $p peak RSS: $(grep VmHWM /proc/$p/status | awk '{print $2/1024 " MiB"}')"
done
grep -hE "WARN|ERROR" "$DATA"/server-*.log | grep -v "published with force" | tail -5 || true
