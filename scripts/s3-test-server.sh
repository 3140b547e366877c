#!/usr/bin/env bash
# Starts an S3-compatible server of its own for the tests: moto's server
# (moto[server] from PyPI, pinned, in a virtualenv under
# ${XDG_CACHE_HOME:-~/.cache}/palette), on 127.0.0.1, port 55433 (or $1),
# in the background. Prints the endpoint URL to export as PALETTE_S3_URL
# (scripts/test.sh then runs the object storage tests on it). Idempotent: a
# server already answering on the port is kept. Each test makes a bucket of
# its own; moto keeps them in memory.
set -euo pipefail
PORT="${1:-55433}"
URL="http://127.0.0.1:$PORT"
if curl -fsS -o /dev/null "$URL/" 2>/dev/null; then
  echo "$URL"; exit 0
fi
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/palette/moto-venv"
if [ ! -x "$VENV/bin/moto_server" ]; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5' >&2
fi
LOG="${TMPDIR:-/tmp}/palette-moto-$PORT.log"
setsid nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 < /dev/null &
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$URL/" 2>/dev/null && { echo "$URL"; exit 0; }
  sleep 0.2
done
echo "moto_server did not answer on $URL; its log:" >&2
cat "$LOG" >&2
exit 1
