#!/usr/bin/env bash
# Intake benchmark, run from the repo root, in one run:
#   - emporium: 10,000 messages in the standard shape submitted to `POST /v1/intake` in
#     batches of 100; messages/s from the first submission until every one is `STORED`
#     (its file written to the genre's bucket on local storage and its notice recorded);
#   - reference: the same 10,000 files (same names, same bytes) written straight to
#     disk with tokio::fs, 16 at a time (bench/helpers/intake.rs).
# Several pairs of rounds; the median of the pairs' ratios counts (see below).
# Embedded mode (SQLite, local object-store folder) unless DATABASE_URL is set.
# Settings: BENCH_MESSAGES (default 10000), BENCH_BATCH (default 100), BENCH_ROUNDS (default 5).
set -euo pipefail

COUNT="${BENCH_MESSAGES:-10000}"
BATCH="${BENCH_BATCH:-100}"
source "$(dirname "$0")/lib.sh"
need_tools jq:jq curl:curl

build_release

# The machine's file-creation speed swings several-fold from one second to the next with
# the kernel's writeback (10,000 small files fit in the page cache in a tenth of a second,
# or wait behind a flush), so the two sides run in pairs, back to back, the order
# alternating, each round into an empty folder after a `sync`; the ratio is the median of
# the pairs' ratios, and every pair is printed.
ROUNDS="${BENCH_ROUNDS:-5}"
reference_round() { # round -> "files/s seconds"
  sync
  "$HELPERS" intake-fs "$WORK/direct-$1" "$COUNT" "$1"
}
emporium_round() { # round -> "messages/s seconds accepted-after", from a fresh node
  start_node "$WORK/data-$1" >&2
  sync
  "$HELPERS" intake-submit "http://127.0.0.1:${PORT}" "$COUNT" "$BATCH" "$1"
  stop_node
  local files
  files="$(find "$WORK/data-$1/objects" -name '*.json' | wc -l)"
  [ "$files" -eq "$COUNT" ] || { echo "round $1: ${files} files in the buckets, expected ${COUNT}" >&2; exit 1; }
}
echo "== ${ROUNDS} pairs: emporium, ${COUNT} messages in batches of ${BATCH} (${DATABASE_URL:+Postgres}${DATABASE_URL:-SQLite}, local object store), and ${COUNT} files with tokio::fs"
printf '  %-5s %-44s %-24s %s\n' pair "emporium: messages/s (s; all 202 after s)" "tokio::fs: files/s (s)" ratio
RATIOS=()
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    read -r DIRECT DIRECT_S < <(reference_round "$round")
    read -r EMPORIUM EMPORIUM_S SUBMIT_S < <(emporium_round "$round")
  else
    read -r EMPORIUM EMPORIUM_S SUBMIT_S < <(emporium_round "$round")
    read -r DIRECT DIRECT_S < <(reference_round "$round")
  fi
  RATIO="$(python3 -c "print(f'{$EMPORIUM / $DIRECT:.2f}')")"
  RATIOS+=("$RATIO")
  printf '  %-5s %-44s %-24s %s\n' "$round" "${EMPORIUM} (${EMPORIUM_S}; ${SUBMIT_S})" "${DIRECT} (${DIRECT_S})" "$RATIO"
done
# Same names, same bytes: the comparison is fair only if both wrote the same files.
for bucket in romance scifi; do
  sample="Bench 1 title $([ "$bucket" = romance ] && echo 0 || echo 1).json"
  cmp -s "$WORK/direct-1/$bucket/$sample" "$WORK/data-1/objects/$bucket/$sample" \
    || { echo "emporium's $bucket/$sample differs from the reference's" >&2; exit 1; }
done

echo
echo "intake, ${COUNT} messages, submitted -> STORED vs written with tokio::fs (16 writers):"
python3 -c "import statistics; r=[$(IFS=,; echo "${RATIOS[*]}")]; print(f'  ratio, median of {len(r)} pairs: {statistics.median(r):.2f} (range {min(r):.2f}-{max(r):.2f}; goal >= 0.3)')"
