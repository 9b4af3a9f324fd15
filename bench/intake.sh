#!/usr/bin/env bash
# Intake benchmark (issue 6), run from the repo root, in one run:
#   - emporium: 10,000 messages in the seed's shape submitted to `POST /v1/intake` in
#     batches of 100; messages/s from the first submission until every one is `STORED`
#     (its file written to the genre's bucket on local storage and its notice recorded);
#   - reference: the same 10,000 files (same names, same bytes) written straight to
#     disk with tokio::fs, 16 at a time (benches/helpers/intake.rs).
# Embedded mode (SQLite, local object-store folder) unless DATABASE_URL is set.
# Settings: BENCH_MESSAGES (default 10000), BENCH_BATCH (default 100).
set -euo pipefail

COUNT="${BENCH_MESSAGES:-10000}"
BATCH="${BENCH_BATCH:-100}"
WORK="$(mktemp -d)"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v jq >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() {
  for _ in $(seq 1 300); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "no answer from $1" >&2; exit 1
}

echo "== building (release)"
cargo build --release --quiet
HELPERS="$(cargo bench --bench helpers --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .target.name == "helpers" and .executable != null) | .executable' | tail -1)"
[ -x "$HELPERS" ] || { echo "could not build the bench helpers" >&2; exit 1; }

PORT="$(free_port)"
env LISTEN="127.0.0.1:${PORT}" DATA_DIR="$WORK/data" OFFERS_SYNC_CRON="0 0 0 1 1 *" RUST_LOG=warn \
    target/release/emporium serve >"$WORK/emporium.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:${PORT}/health"

echo "== emporium: ${COUNT} messages in batches of ${BATCH} (${DATABASE_URL:+Postgres}${DATABASE_URL:-SQLite}, local object store)"
read -r EMPORIUM EMPORIUM_S SUBMIT_S < <("$HELPERS" intake-submit "http://127.0.0.1:${PORT}" "$COUNT" "$BATCH")
FILES="$(find "$WORK/data/objects" -name '*.json' | wc -l)"
[ "$FILES" -ge "$COUNT" ] || { echo "only ${FILES} files were written" >&2; exit 1; }

echo "== reference: the same ${COUNT} files with tokio::fs"
read -r DIRECT DIRECT_S < <("$HELPERS" intake-fs "$WORK/direct" "$COUNT")
# Same names, same bytes: the comparison is fair only if both wrote the same files.
for bucket in romance scifi; do
  sample="Bench title $([ "$bucket" = romance ] && echo 0 || echo 1).json"
  cmp -s "$WORK/direct/$bucket/$sample" "$WORK/data/objects/$bucket/$sample" \
    || { echo "emporium's $bucket/$sample differs from the reference's" >&2; exit 1; }
done

echo
echo "intake, ${COUNT} messages:"
echo "  emporium, submitted -> STORED: ${EMPORIUM} messages/s (${EMPORIUM_S} s; all accepted after ${SUBMIT_S} s)"
echo "  tokio::fs, 16 writers:         ${DIRECT} files/s (${DIRECT_S} s)"
python3 -c "print(f'  ratio {$EMPORIUM / $DIRECT:.2f} (goal >= 0.3)')"
