#!/usr/bin/env bash
# Starts a PostgreSQL cluster of its own for the tests (Debian's
# postgresql-common, as root): cluster "palettetest" on port 55432 (or $1),
# local trust authentication, loopback only. Prints the URL to export as
# PALETTE_POSTGRES_URL (scripts/test.sh then runs the server's tests on it
# too). Idempotent: an existing cluster is (re)started.
set -euo pipefail
PORT="${1:-55432}"
VER="$(ls /usr/lib/postgresql | sort -n | tail -1)"
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx palettetest; then
  pg_createcluster "$VER" palettetest -p "$PORT" -- --auth-local=trust --auth-host=trust >&2
fi
pg_ctlcluster "$VER" palettetest start >&2 2>/dev/null || pg_ctlcluster "$VER" palettetest restart >&2
for _ in $(seq 1 50); do
  pg_isready -h 127.0.0.1 -p "$PORT" -q && break
  sleep 0.2
done
pg_isready -h 127.0.0.1 -p "$PORT" -q
echo "postgres://postgres@127.0.0.1:$PORT/postgres"
