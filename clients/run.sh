#!/usr/bin/env bash
# Runs the client tests against ../target/debug/emporium (or $EMPORIUM_BIN); builds nothing.
# Embedded by default; cluster mode when DATABASE_URL and REDIS_URL are both set.
set -euo pipefail
cd "$(dirname "$0")"
bin="${EMPORIUM_BIN:-../target/debug/emporium}"
[ -x "$bin" ] || { echo "no emporium binary at $bin: run \`cargo build\` first (or set EMPORIUM_BIN)" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "the client tests need Node.js 20 or later; this is $(node --version)" >&2; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund
mode="embedded (SQLite, in-process window)"
[ -n "${DATABASE_URL:-}" ] && [ -n "${REDIS_URL:-}" ] && mode="cluster (Postgres + Redis)"
echo "client tests, $mode, against $bin"
# The runner prints its summary (# tests / # pass / # fail ...) last; its exit code is ours.
exec node --test --test-concurrency=1 --test-timeout=180000 --test-reporter=tap tests/
