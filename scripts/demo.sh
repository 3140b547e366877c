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
cleanup() { [ "${#pids[@]}" -gt 0 ] || return 0; echo; echo "==> stopping"; kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT INT TERM

# Whether a palette-server answers /api/v1/ping on the port (bash's
# /dev/tcp: no curl needed).
pings() {
  ( exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
    printf 'GET /api/v1/ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS= read -r -t 2 line <&3 && [[ "$line" == *" 200"* ]] ) 2>/dev/null
}
# The last lines log $1 got since byte $2 (without a backtrace).
since() { tail -c +"$(($2 + 1))" "$1" 2>/dev/null | sed '/^Stack backtrace:/,$d' | tail -n 5 | sed 's/^/    /'; }
size() { if [ -f "$1" ]; then wc -c <"$1"; else echo 0; fi; }
fail() { printf '\ndemo not started: %s\n' "$*" >&2; exit 1; }

if pings; then
  fail "a palette-server already answers on $URL (an earlier ./scripts/demo.sh still running? Ctrl-C it, or set PALETTE_DEMO_PORT=8081)"
elif (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  fail "port $PORT is in use by another program (set PALETTE_DEMO_PORT=8081, or stop it: ss -ltnp 'sport = :$PORT' shows it)"
fi

server_log_at="$(size "$DEMO/server.log")"
"$BIN/palette-server" --data-dir "$DEMO/server" --listen "127.0.0.1:$PORT" >>"$DEMO/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
# Started: it answers /api/v1/ping (within 20 s), and it is ours (alive).
for _ in $(seq 1 200); do
  kill -0 "$server_pid" 2>/dev/null || break
  pings && break
  sleep 0.1
done
if ! kill -0 "$server_pid" 2>/dev/null; then
  fail "palette-server exited at once (port $PORT taken meanwhile?); demo/server.log says:
$(since "$DEMO/server.log" "$server_log_at")"
elif ! pings; then
  fail "palette-server does not answer $URL/api/v1/ping after 20 s; demo/server.log says:
$(since "$DEMO/server.log" "$server_log_at")"
fi

console_at="$(size "$DEMO/watchdog.console.log")"
starts_before="$(grep -c 'palette-watchdog .* starting' "$HOST/Logs/watchdog.log" 2>/dev/null || true)"
"$BIN/palette-watchdog" run --base "$HOST" >>"$DEMO/watchdog.console.log" 2>&1 &
watchdog_pid=$!
pids+=("$watchdog_pid")
# Started: alive, and its log says it is starting (after the single-instance
# lock, state/watchdog.lock, was taken).
started=
for _ in $(seq 1 200); do
  kill -0 "$watchdog_pid" 2>/dev/null || break
  now="$(grep -c 'palette-watchdog .* starting' "$HOST/Logs/watchdog.log" 2>/dev/null || true)"
  if [ "${now:-0}" -gt "${starts_before:-0}" ]; then started=1; break; fi
  sleep 0.1
done
if [ -z "$started" ]; then
  why="$(since "$DEMO/watchdog.console.log" "$console_at")"
  if ! kill -0 "$watchdog_pid" 2>/dev/null && grep -q "already running" <<<"$why"; then
    fail "another palette-watchdog holds demo/host/state/watchdog.lock (an earlier demo's, still running: stop it first):
$why"
  elif ! kill -0 "$watchdog_pid" 2>/dev/null; then
    fail "palette-watchdog exited at once; demo/watchdog.console.log says:
$why"
  else
    fail "palette-watchdog did not log that it started within 20 s (see demo/host/Logs/watchdog.log)"
  fi
fi

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
