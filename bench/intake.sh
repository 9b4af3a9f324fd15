#!/usr/bin/env bash
# Intake benchmark (issue 6), run from the repo root, in one run:
#   - emporium: 10,000 messages in the seed's shape submitted to `POST /v1/intake` in
#     batches of 100; messages/s from the first submission until every one is `STORED`
#     (its file written to the genre's bucket on local storage and its notice recorded);
#   - reference: the same 10,000 files (same names, same bytes) written straight to
#     disk with tokio::fs, 16 at a time (benches/helpers/intake.rs).
# Best of three runs each.
# Embedded mode (SQLite, local object-store folder) unless DATABASE_URL is set.
# Settings: BENCH_MESSAGES (default 10000), BENCH_BATCH (default 100).
set -euo pipefail

COUNT="${BENCH_MESSAGES:-10000}"
BATCH="${BENCH_BATCH:-100}"
source "$(dirname "$0")/lib.sh"
need_tools jq:jq curl:curl

build_release

# Each round of each side starts from an empty folder (the speed of creating files
# depends on how many a directory holds) with no dirty pages (sync); the best of three
# counts. The reference's figure still swings with the kernel's writeback (10,000
# small files fit in the page cache in a tenth of a second, or wait behind a flush).
best() { sort -g -k1,1 | tail -1; }
echo "== reference: ${COUNT} files with tokio::fs, best of 3"
read -r DIRECT DIRECT_S < <(for round in 1 2 3; do
  sync
  "$HELPERS" intake-fs "$WORK/direct-$round" "$COUNT" "$round"
done | best)

emporium_round() { # round -> "messages/s seconds accepted-after", from a fresh node
  start_node "$WORK/data-$1" >&2
  sync
  "$HELPERS" intake-submit "http://127.0.0.1:${PORT}" "$COUNT" "$BATCH" "$1"
  stop_node
  local files
  files="$(find "$WORK/data-$1/objects" -name '*.json' | wc -l)"
  [ "$files" -eq "$COUNT" ] || { echo "round $1: ${files} files in the buckets, expected ${COUNT}" >&2; exit 1; }
}
echo "== emporium: ${COUNT} messages in batches of ${BATCH}, best of 3 (${DATABASE_URL:+Postgres}${DATABASE_URL:-SQLite}, local object store)"
read -r EMPORIUM EMPORIUM_S SUBMIT_S < <(for round in 1 2 3; do emporium_round "$round"; done | best)
# Same names, same bytes: the comparison is fair only if both wrote the same files.
for bucket in romance scifi; do
  sample="Bench 1 title $([ "$bucket" = romance ] && echo 0 || echo 1).json"
  cmp -s "$WORK/direct-1/$bucket/$sample" "$WORK/data-1/objects/$bucket/$sample" \
    || { echo "emporium's $bucket/$sample differs from the reference's" >&2; exit 1; }
done

echo
echo "intake, ${COUNT} messages:"
echo "  emporium, submitted -> STORED: ${EMPORIUM} messages/s (${EMPORIUM_S} s; all accepted (202) after ${SUBMIT_S} s)"
echo "  tokio::fs, 16 writers:         ${DIRECT} files/s (${DIRECT_S} s)"
python3 -c "print(f'  ratio {$EMPORIUM / $DIRECT:.2f} (goal >= 0.3)')"
