#!/usr/bin/env bash
# test.sh - install what is missing, build, and run every test suite but
# bench.  This is the README's test command and what .ci/run calls.
#   BUILD_DIR   build directory (default: build)
#   MESON_ARGS  extra `meson setup` arguments (CI adds -Dwerror=true)
set -euo pipefail
cd "$(dirname "$0")/.."

contrib/install-deps.sh
build=${BUILD_DIR:-build}
if [ -f "$build/build.ninja" ]; then
  meson setup --reconfigure "$build" ${MESON_ARGS:-} >/dev/null
else
  meson setup "$build" ${MESON_ARGS:-}
fi
meson compile -C "$build"
meson test -C "$build" --no-suite bench --print-errorlogs "$@"
