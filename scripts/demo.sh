#!/usr/bin/env bash
# The main job on one machine, embedded defaults, localhost only:
# a palette-server (SQLite in demo/server) and a palette-watchdog supervising
# the sample agent (install folder demo/host). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is needed: install Rust (https://rustup.rs) or 'apt-get install cargo'"; exit 1; }

PORT="${PALETTE_DEMO_PORT:-8080}"
URL="http://127.0.0.1:$PORT"
export PALETTE_ADMIN_TOKEN="${PALETTE_ADMIN_TOKEN:-demo-admin-token}"
export PALETTE_AGENT_TOKENS="${PALETTE_AGENT_TOKENS:-demo-license-key}"
KEY="${PALETTE_AGENT_TOKENS%%,*}"

echo "==> building"
cargo build --workspace --quiet
BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/debug"
DEMO="$(pwd)/demo"
HOST="$DEMO/host"

if [ ! -f "$HOST/versions/current" ]; then
  echo "==> laying out $HOST with agent 1.0.0"
  mkdir -p "$HOST/versions/1.0.0" "$HOST/Config" "$DEMO/server"
  cp "$BIN/palette-sample-agent" "$HOST/versions/1.0.0/"
  echo 1.0.0 > "$HOST/versions/1.0.0/VERSION"
  echo 1.0.0 > "$HOST/versions/current"
  cat > "$HOST/Config/Config.yml" <<YML
# Shared with the agent. The watchdog reads LicenseKey and Webservice only.
LicenseKey: $KEY
Webservice:
  Endpoint: $URL
  UseProxy: false
YML
  cat > "$HOST/watchdog.yml" <<YML
# The watchdog's local settings; remote configuration never changes them.
hostname: demo-host
agent:
  command: ['{current}/palette-sample-agent', '--base', '{base}']
  health_secs: 3
server:
  protocol: v2
  checkin_wait_secs: 25
intervals:
  keepalive_secs: 30
YML
fi
cp "$BIN/palette-manager" "$HOST/palette-manager"

# A second agent version, ready to publish.
if [ ! -f "$DEMO/agent-2.0.0.tar.gz" ]; then
  tmp="$(mktemp -d)"; cp "$BIN/palette-sample-agent" "$tmp/"; echo 2.0.0 > "$tmp/VERSION"
  tar -C "$tmp" -czf "$DEMO/agent-2.0.0.tar.gz" palette-sample-agent VERSION; rm -rf "$tmp"
fi

pids=()
cleanup() { echo; echo "==> stopping"; kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/palette-server" --data-dir "$DEMO/server" --listen "127.0.0.1:$PORT" >>"$DEMO/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
"$BIN/palette-watchdog" run --base "$HOST" >>"$DEMO/watchdog.console.log" 2>&1 &
pids+=($!)

cat <<TXT

palette-server:   $URL   (log: demo/server.log, data: demo/server)
palette-watchdog: demo-host (install folder: demo/host, logs: demo/host/Logs)

Try, in another terminal:
  export PALETTE_SERVER=$URL PALETTE_TOKEN=$PALETTE_ADMIN_TOKEN PATH=$BIN:\$PATH
  palettectl hosts                                   # the host, its agent version and state
  kill -9 \$(sed 's/.*"pid":\([0-9]*\).*/\1/' demo/host/state/sample-agent.json)   # restarted at once
  palettectl command send stop --host demo-host      # stopped, and stays stopped across watchdog restarts
  palettectl command send start --host demo-host
  palettectl release publish demo/agent-2.0.0.tar.gz --version 2.0.0   # the host updates to 2.0.0
  palettectl config pull demo-host --source reported
  tail -f demo/host/Logs/watchdog.log

Ctrl-C stops both.
TXT
wait
