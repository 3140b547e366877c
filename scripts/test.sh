#!/usr/bin/env bash
# The whole test suite: builds every binary (the end-to-end tests run the
# real ones), then runs every crate's tests and prints one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
# The manager's test-only crash points (src/fault.rs) are compiled in; they
# do nothing unless PALETTE_CRASH_AT names one.
FEATURES=(--features palette-manager/fault-injection)
cargo build --workspace --locked "${FEATURES[@]}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# Object storage: PALETTE_S3_URL names an S3-compatible server the tests
# may make buckets on (scripts/s3-test-server.sh starts one; .ci/run does);
# without it those tests say they skipped.
export PALETTE_TEST_S3="${PALETTE_S3_URL:-}"
if [ -z "$PALETTE_TEST_S3" ]; then
  if [ "${PALETTE_REQUIRE_S3:-}" = 1 ]; then
    echo "PALETTE_REQUIRE_S3=1 but no PALETTE_S3_URL (scripts/s3-test-server.sh)"; status=1
  else
    echo "the object storage tests are skipped: set PALETTE_S3_URL (scripts/s3-test-server.sh starts a server)"
  fi
fi
PALETTE_TEST_POSTGRES= cargo test --workspace --locked --no-fail-fast "${FEATURES[@]}" 2>&1 | tee "$log" || status=$?
# The server's suite once more on PostgreSQL (one test body, two backends):
# PALETTE_POSTGRES_URL names a server the tests may create databases on
# (scripts/pg-test-cluster.sh starts one; .ci/run does).
if [ -n "${PALETTE_POSTGRES_URL:-}" ]; then
  echo; echo "==> the server's tests on PostgreSQL"
  PALETTE_TEST_POSTGRES="$PALETTE_POSTGRES_URL" cargo test -p palette-server --locked "${FEATURES[@]}" --test it 2>&1 | tee -a "$log" || status=$?
elif [ "${PALETTE_REQUIRE_POSTGRES:-}" = 1 ]; then
  echo "PALETTE_REQUIRE_POSTGRES=1 but no PALETTE_POSTGRES_URL (scripts/pg-test-cluster.sh)"; status=1
else
  echo; echo "the server's tests on PostgreSQL skipped: set PALETTE_POSTGRES_URL (scripts/pg-test-cluster.sh starts a server)"
fi
# The .deb packages: built from the binaries above, installed with dpkg,
# verified, run and purged (needs root and cargo-deb; .ci/run provides
# both). That changes the machine itself (packages, a system user,
# /opt/palette, /etc/palette), so it runs only in CI (CI=true) or when asked
# (PALETTE_DEB_TEST=1) -- never by surprise on a workstation run as root.
if [ "${CI:-}" = true ] || [ "${PALETTE_DEB_TEST:-}" = 1 ]; then
  echo; echo "==> .deb packages (scripts/deb-test.sh)"
  ./scripts/deb-test.sh 2>&1 | tee -a "$log" || status=$?
else
  echo; echo "the .deb package test skipped: it installs and purges real packages, a system user and /opt/palette on this machine; it runs in CI (CI=true) or with PALETTE_DEB_TEST=1"
fi
# Windows: the Windows binaries and tests under Wine (.ci/run installs
# Debian's Rust with its std source, the MinGW linker and Wine).
if command -v wine >/dev/null && command -v wixl >/dev/null && [ -x /usr/bin/rustc ] && command -v x86_64-w64-mingw32-gcc >/dev/null; then
  echo; echo "==> Windows tests under Wine (scripts/wine-test.sh)"
  ./scripts/wine-test.sh 2>&1 | tee -a "$log" || status=$?
else
  echo; echo "Windows tests under Wine skipped: they need wine, wixl, Debian's rustc-web/rust-web-src and gcc-mingw-w64-x86-64 (.ci/run installs them)"
fi
# Coverage-guided fuzzing of the untrusted-input parsers, bounded
# (PALETTE_FUZZ_SECS per target, default 15; 0 skips).
fuzz_secs="${PALETTE_FUZZ_SECS:-15}"
if [ "$fuzz_secs" != 0 ]; then
  echo; echo "==> fuzz targets, ${fuzz_secs} s each (scripts/fuzz.sh)"
  ./scripts/fuzz.sh "$fuzz_secs" || status=$?
fi
echo
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { print p + 0 " passed, " f + 0 " failed" }' "$log"
exit "$status"
