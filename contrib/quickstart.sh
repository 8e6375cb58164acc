#!/usr/bin/env bash
# quickstart.sh - install what is missing, build, and run `postmux serve` on
# its built-in default: queue in <state>/queue.db, delivery into
# <state>/Maildir (state: $POSTMUX_STATE_DIR, default ./postmux-data).
set -euo pipefail
cd "$(dirname "$0")/.."

contrib/install-deps.sh
[ -f build/build.ninja ] || meson setup build
meson compile -C build
export POSTMUX_STATE_DIR=${POSTMUX_STATE_DIR:-$PWD/postmux-data}
echo "state directory: $POSTMUX_STATE_DIR (try: build/gateway/postmux send --from me@example.com --to you@example.com --subject hi --body hello)"
exec build/gateway/postmux serve --plugin-dir build/transports
