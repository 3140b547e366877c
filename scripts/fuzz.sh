#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through libfuzzer-sys) of the parsers
# of untrusted input, on the stable compiler: the same sanitizer-coverage
# instrumentation cargo-fuzz uses, without nightly or cargo-fuzz.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 15 s, all)
#
# Each target runs for a bounded time; a crash fails the script and leaves
# the input in fuzz/artifacts/TARGET/. Corpora grow in fuzz/corpus/TARGET/
# (not committed; seeds in fuzz/seeds/TARGET/ are).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-15}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(hostname manifest trust config_yml settings entry_name wire_bodies)
fi
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
start=$SECONDS
# An explicit --target keeps the flags off build scripts and proc macros.
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --locked --bins --target "$host"
echo "fuzz targets built in $((SECONDS - start)) s"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "==> fuzzing $t for ${secs} s"
  "target/$host/release/$t" "corpus/$t" "${seeds[@]}" \
    -max_total_time="$secs" -max_len=4096 -rss_limit_mb=1024 -timeout=10 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>"target/$t.log" || {
      tail -40 "target/$t.log"
      echo "fuzz target $t FAILED: the input is in fuzz/artifacts/$t/"
      exit 1
    }
  grep -E "^Done [0-9]+ runs|stat::new_units_added" "target/$t.log" | tr "\n" " "
  echo
done
