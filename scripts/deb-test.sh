#!/usr/bin/env bash
# The .deb packages, end to end on this machine (CI runs as root): builds
# both with cargo-deb from the binaries the tests built (dev profile: the
# release packages come from `cargo deb -p palette-server` and
# `cargo deb -p palette-watchdog`), installs them with dpkg, checks files,
# the system user, the generated settings and the units (systemd does not
# run here: `systemd-analyze verify`), runs the installed server as its user
# and `palette-watchdog enroll` against it, then purges both.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || ! command -v cargo-deb >/dev/null || ! command -v dpkg >/dev/null; then
  echo "package test skipped: it needs root, dpkg and cargo-deb (.ci/run installs cargo-deb)"
  exit 0
fi
out=target/debian
rm -rf "$out"
for p in palette-server palette-watchdog; do
  # (cargo-deb warns that the dev profile is for tests only.)
  cargo deb -p "$p" --no-build --profile dev -o "$out/" 2>&1 | grep -v "dev profile\|debug symbols set\|custom profiles" || true
done
ls "$out"/palette-server_*.deb "$out"/palette-watchdog_*.deb >/dev/null
dpkg -i "$out"/palette-server_*.deb "$out"/palette-watchdog_*.deb

fail() { echo "package test FAILED: $*"; exit 1; }
for f in /usr/bin/palette-server /usr/bin/palettectl /usr/lib/systemd/system/palette-server.service \
         /opt/palette/palette-watchdog /opt/palette/palette-manager \
         /usr/lib/systemd/system/palette-watchdog.service /etc/palette/server.env; do
  [ -e "$f" ] || fail "missing $f"
done
for preset in watchdog-process-agent.yml watchdog-systemd-agent.yml; do
  cmp -s "dist/$preset" "/opt/palette/presets/$preset" || fail "the package does not ship dist/$preset as /opt/palette/presets/$preset"
done
getent passwd palette >/dev/null || fail "no system user palette"
[ "$(stat -c %a:%G /etc/palette/server.env)" = "640:palette" ] || fail "server.env is $(stat -c %a:%G /etc/palette/server.env), not 640:palette"
grep -Eq '^PALETTE_ADMIN_TOKEN=[0-9a-f]{64}$' /etc/palette/server.env || fail "no admin token generated"
systemd-analyze verify /usr/lib/systemd/system/palette-server.service \
  /usr/lib/systemd/system/palette-watchdog.service || fail "systemd-analyze verify"

# The installed server as its own user; the installed watchdog enrolls.
data="$(mktemp -d)"
chown palette:palette "$data"
port=$((20000 + RANDOM % 20000))
set -a; . /etc/palette/server.env; set +a
PALETTE_AGENT_TOKENS=deb-test-key-1 runuser -u palette -- /usr/bin/palette-server \
  --data-dir "$data" --listen "127.0.0.1:$port" >"$data.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
/opt/palette/palette-watchdog enroll --server "http://127.0.0.1:$port" --key deb-test-key-1 --hostname deb-host
[ -s /opt/palette/state/host-token ] || fail "enroll wrote no host token"
palettectl --server "http://127.0.0.1:$port" --token "$PALETTE_ADMIN_TOKEN" token list | grep -q "host:.*deb-host" \
  || fail "the server does not list deb-host's token"
kill "$pid"; wait "$pid" || true

dpkg --purge palette-watchdog palette-server
[ ! -e /usr/bin/palette-server ] && [ ! -e /etc/palette/server.env ] || fail "purge left files"
rm -rf /opt/palette   # what enroll wrote (not the package's)
echo "package test passed: both .deb files install, verify, serve, enroll and purge"
