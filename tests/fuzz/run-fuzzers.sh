#!/usr/bin/env bash
# run-fuzzers.sh - build every fuzz target with clang + libFuzzer (and ASan,
# UBSan) and fuzz each for a fixed time, starting from its seed corpus.
#
#   tests/fuzz/run-fuzzers.sh [SECONDS_PER_TARGET] [BUILD_DIR]
#
# Needs clang and libclang-rt-14-dev (contrib/install-deps.sh).  New inputs
# go to a scratch copy of the corpus, never into the source tree; a crash
# leaves its reproducer (crash-*) in BUILD_DIR/fuzz-artifacts and exits 1.
set -euo pipefail

secs="${1:-60}"
src="$(cd "$(dirname "$0")/../.." && pwd)"
build="${2:-$src/build-fuzz}"

if [ ! -d "$build" ]; then
  CC=clang meson setup "$build" "$src" -Dwerror=false -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi

targets=()
for f in "$src"/tests/fuzz/fuzz-*.c; do
  t="$(basename "$f" .c)"
  [ "$t" = fuzz-main ] && continue
  targets+=("$t")
done

ninja -C "$build" $(printf 'tests/fuzz/%s ' "${targets[@]}") >/dev/null
mkdir -p "$build/fuzz-artifacts"
rc=0
for t in "${targets[@]}"; do
  corpus="${t#fuzz-}"
  work="$(mktemp -d)"
  cp -r "$src/tests/fuzz/corpus/$corpus/." "$work/"
  echo "== $t: ${secs}s from $(ls "$work" | wc -l) seeds"
  if ! UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
       "$build/tests/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="$build/fuzz-artifacts/$t-" -print_final_stats=1 "$work"; then
    echo "== $t: FAILED (reproducer in $build/fuzz-artifacts)"
    rc=1
  fi
  rm -rf "$work"
done
exit $rc
