#!/usr/bin/env bash
# Windows tests under Wine: builds the Windows binaries and tests with
# Debian's Rust (std built from source for x86_64-pc-windows-gnu) and runs
# them with wine in a private prefix (target/wine-prefix). Needs the
# packages .ci/run installs (rustc-web cargo-web rust-web-src
# gcc-mingw-w64-x86-64 wine wine64 wixl). See ../shared/reference/windows-build.md.
# `--bench` prints the Wine benchmark figures instead of running the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export WINEPREFIX="${WINEPREFIX:-$PWD/target/wine-prefix}"
export WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
# A fresh prefix every run: what earlier runs installed (services, MSI
# products) never changes the outcome.
wineserver -k >/dev/null 2>&1 || true
rm -rf "$WINEPREFIX"
wineboot -i >/dev/null 2>&1
# Until the prefix's first-run setup has finished: service calls made while
# it still runs fail at random.
wineserver -w
# Wine 8 lacks ProcessPrng, which Rust's std imports (every .exe would exit
# with code 53): a stub exporting it through RtlGenRandom.
x86_64-w64-mingw32-gcc -O2 -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  scripts/wine/processprng.c scripts/wine/bcryptprimitives.def -ladvapi32
trap 'wineserver -k >/dev/null 2>&1 || true' EXIT
export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
WIN=(-Zbuild-std=std,panic_abort --target x86_64-pc-windows-gnu --target-dir target/windows --locked)
# The service test runs the sample agent, built beside the test binaries.
/usr/bin/cargo build "${WIN[@]}" -p palette-sample-agent -p palette-watchdog -p palette-manager
# Windows Installer packages of the sample agent (2.0.0 and 3.0.0, one
# upgrade code) for the MSI test, built with wixl (msitools).
msi="$PWD/target/wine-msi"
rm -rf "$msi" && mkdir -p "$msi"
cp target/windows/x86_64-pc-windows-gnu/debug/palette-sample-agent.exe "$msi/"
for v in 2.0.0 3.0.0; do
  printf '%s' "$v" >"$msi/VERSION"
  sed "s/@VERSION@/$v/" scripts/wine/sample-agent.wxs >"$msi/agent.wxs"
  (cd "$msi" && wixl -o "agent-$v.msi" agent.wxs 2>/dev/null)
done
# 4.0.0 is broken: its FAIL file makes the agent exit at once (a release
# that fails its health check and is rolled back).
printf '4.0.0' >"$msi/VERSION"
printf 'fail the health check' >"$msi/FAIL"
sed -e "s/@VERSION@/4.0.0/" \
  -e 's|<!--@FAIL@-->|<Component Id="FailFile" Guid="4b2d8f20-ae50-4c71-9f2d-3a4c5d6e7f80"><File Id="FailFileId" Name="FAIL" Source="FAIL" KeyPath="yes"/></Component>|' \
  -e 's|<!--@FAILREF@-->|<ComponentRef Id="FailFile"/>|' \
  scripts/wine/sample-agent.wxs >"$msi/agent.wxs"
(cd "$msi" && wixl -o agent-4.0.0-broken.msi agent.wxs 2>/dev/null)
export PALETTE_TEST_MSI_DIR="$(winepath -w "$msi")"
# A real palette-server (the Linux build, on loopback) for the Windows
# end-to-end test; Wine's processes reach it on 127.0.0.1.
if [ -x target/debug/palette-server ]; then
  srv="$(mktemp -d)"
  port=$((20000 + RANDOM % 20000))
  PALETTE_ADMIN_TOKEN=wine-admin-token PALETTE_AGENT_TOKENS=wine-license-key \
    target/debug/palette-server --data-dir "$srv" --listen "127.0.0.1:$port" >"$srv/server.log" 2>&1 &
  server_pid=$!
  trap 'kill $server_pid 2>/dev/null; wineserver -k >/dev/null 2>&1 || true' EXIT
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  export PALETTE_TEST_SERVER="http://127.0.0.1:$port"
fi
if [ "${1:-}" = "--bench" ]; then
  # Wine figures: the watchdog service's idle memory, agent-service restarts.
  /usr/bin/cargo test "${WIN[@]}" -p palette-watchdog --test windows_bench -- --ignored --nocapture
  exit 0
fi
# One test at a time: Wine's service manager is not reliable under
# concurrent create/start calls.
# PALETTE_WINE_TESTS narrows the run (e.g. "-p palette-watchdog --test windows_e2e").
# shellcheck disable=SC2086
/usr/bin/cargo test "${WIN[@]}" ${PALETTE_WINE_TESTS:--p palette-protocol -p palette-host -p palette-service -p palette-watchdog -p palette-manager --lib --tests} -- --test-threads=1
