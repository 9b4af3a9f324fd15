#!/usr/bin/env bash
# Small-bodies upload benchmark (issue #23), run from the repo root, in one run: distinct
# 1 KiB bodies, each a JSON array of one product (`[{"id": sku, "name", "description"}]`,
# `id` being the upload format's sku, distinct in every body), POSTed to
# `POST /v1/products` by the helper's load generator (bench/helpers/small_uploads.rs:
# keep-alive connections, each request a new body, latencies of the 200s), for
# BENCH_SECONDS at each of BENCH_CONNECTIONS, against:
#   - reference "fsync per body": an axum handler that writes each body to its own file
#     and fsyncs it before it answers 200;
#   - reference "group commit": an axum handler whose single writer appends every body
#     waiting to one file and fsyncs once for the batch, each request answered after the
#     fsync that covers its body;
#   - embedded: one node with `cargo run --release`'s defaults (SQLite and the object
#     store in its DATA_DIR, in-process dedup, 4 job workers);
#   - 3 nodes: Postgres (a fresh database per measurement) + Redis (a prefix of its
#     own per measurement), the object store shared by the three (a file:// folder, or
#     S3 when BENCH_S3_ENDPOINT is given), one partner simulator (`emporium sim`) for the
#     three; the connections go round-robin to the nodes.
# Every emporium measurement starts from fresh nodes with an empty backlog. For each it
# prints accepted/s (200s), ingested/s over the same window (uploads ingested with
# success, from the nodes' `emporium_uploads_ingested_total`), the time to drain the
# backlog left when the load stops, p50/p99 latency of the 200s, the peak backlog
# (`emporium_upload_backlog_uploads`, scraped every 0.5 s), the 503s (backlog full,
# with Retry-After: the load generator waits as told, like a well-behaved client) and
# any other non-200, and each node's peak RSS (VmHWM); after the drain the database's
# count of succeeded uploads must equal the 200s. Then the ratios against the
# references and the issue's goals.
#
# Connection limits: a node serves MAX_CONNECTIONS (default 4096, lowered to stay under
# its file-descriptor limit) and MAX_INFLIGHT_REQUESTS (default 4096) at once; both are
# far above 256 and left at their defaults, but the script checks that the descriptor
# limit leaves room for the largest BENCH_CONNECTIONS (raising the soft limit if needed).
#
# Settings: BENCH_SECONDS (per measurement, default 20), BENCH_CONNECTIONS (default
# "64 256"), BENCH_DRAIN_SECONDS (longest wait for a drain, default 600), DATABASE_URL (a
# Postgres URL whose server we may create a database on), REDIS_URL (default
# redis://127.0.0.1:6379), BENCH_S3_ENDPOINT (an S3 endpoint, e.g. http://127.0.0.1:9000
# for MinIO: the 3 nodes then use OBJECT_STORE_URL=s3://$BENCH_S3_BUCKET, default
# emporium-bench, which must exist; credentials from the usual AWS_* variables),
# BENCH_DIR (where the scratch folder goes, default $TMPDIR or /tmp).
set -euo pipefail

BASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS="${REDIS_URL:-redis://127.0.0.1:6379}"
# The embedded node must not inherit them (it would run on Postgres + Redis); the 3 nodes
# get them explicitly.
unset DATABASE_URL REDIS_URL
LOAD_SECONDS="${BENCH_SECONDS:-20}"
CONNECTION_COUNTS="${BENCH_CONNECTIONS:-64 256}"
DRAIN_SECONDS="${BENCH_DRAIN_SECONDS:-600}"
NODES=3
DB_NAME="emporium_bench_small_uploads"
source "$(dirname "$0")/lib.sh"
need_tools psql:postgresql-client jq:jq curl:curl
# Names no other run (nor a test sharing the Redis server) uses: skus and Redis keys.
RUN="s$(date +%s)"

most=0
for connections in $CONNECTION_COUNTS; do [ "$connections" -gt "$most" ] && most=$connections; done
# Room for the clients' connections (the load generator's side too), the pool and files.
need_fds=$((most + 512))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
  ulimit -n "$need_fds" 2>/dev/null || { echo "the file-descriptor limit $(ulimit -n) is below ${need_fds}" >&2; exit 1; }
fi

build_release
mkdir -p "$WORK/results"

# load NAME CONNECTIONS URLS METRICS_URLS|-: one measurement into $WORK/results/NAME.json.
load() {
  sync # the previous measurement's writes are not this one's to flush
  "$HELPERS" small-uploads-load "$2" "$LOAD_SECONDS" "${RUN}-$1" "$3" "$4" "$DRAIN_SECONDS" >"$WORK/results/$1.json"
  jq -r --arg name "$1" '"   \($name): \(.accepted_per_second | floor) accepted/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms"
    + (if .ingested_per_second then ", \(.ingested_per_second | floor) ingested/s, drained in \(.drain_seconds * 10 | round / 10) s" else "" end)
    + ", backlog 503s \(.backlog_503), other \(.other), no answer \(.transport_errors)"' "$WORK/results/$1.json"
}

REFS_PORT="$(free_port)"
"$HELPERS" small-uploads-refs "127.0.0.1:${REFS_PORT}" "$WORK/references" &
PIDS+=("$!")
wait_http "http://127.0.0.1:${REFS_PORT}/group/stats"

# references CONNECTIONS WHEN: both references, results NAME-CONNECTIONS-WHEN.json. They
# run before and after the emporium sides: the disk's fsync rate moves a lot on a shared
# machine, so the ratios use the mean of the two and the rows show both.
references() {
  local before after
  load "fsync-$1-$2" "$1" "http://127.0.0.1:${REFS_PORT}/fsync" -
  before="$(curl -s "http://127.0.0.1:${REFS_PORT}/group/stats")"
  load "group-$1-$2" "$1" "http://127.0.0.1:${REFS_PORT}/group" -
  after="$(curl -s "http://127.0.0.1:${REFS_PORT}/group/stats")"
  jq -n --argjson before "$before" --argjson after "$after" \
    '{bodies_per_batch: (($after.bodies - $before.bodies) / ([($after.batches - $before.batches), 1] | max))}' \
    >"$WORK/results/group-$1-$2.batch.json"
}

# The 3 nodes share one partner simulator (offers service and feeds), as a cluster shares
# the real ones: with OFFERS_URL unset each node would run its own, and the offers token
# one node registers (shared through the database) would be unknown to the others' (a
# storm of 401s and retried registration jobs beside the ingestion).
SIM_PORT="$(free_port)"
SIM="http://127.0.0.1:${SIM_PORT}"
SIM_LISTEN="127.0.0.1:${SIM_PORT}" target/release/emporium sim >"$WORK/sim.log" 2>&1 &
PIDS+=("$!")
wait_http "${SIM}/feeds/0"

for connections in $CONNECTION_COUNTS; do
  echo "== ${connections} connections, ${LOAD_SECONDS} s each"
  references "$connections" before

  # Embedded: one node, the defaults (SQLite and objects in its DATA_DIR, in-process dedup).
  start_node "$WORK/embedded-${connections}"
  load "embedded-${connections}" "$connections" "http://127.0.0.1:${PORT}/v1/products" "http://127.0.0.1:${PORT}/metrics"
  rss="$(rss_kb "$NODE_PID" VmHWM)"
  stop_node
  succeeded="$(python3 -c "import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute(\"SELECT count(*) FROM uploads WHERE status='succeeded'\").fetchone()[0])" \
    "$WORK/embedded-${connections}/emporium.db")"
  jq -n --argjson rss "[$rss]" --argjson succeeded "$succeeded" '{rss_kb: $rss, db_succeeded: $succeeded}' \
    >"$WORK/results/embedded-${connections}.node.json"

  # 3 nodes: Postgres, Redis, a shared object store; fresh database and Redis prefix.
  fresh_database "$DB_NAME"
  if [ -n "${BENCH_S3_ENDPOINT:-}" ]; then
    objects=(OBJECT_STORE_URL="s3://${BENCH_S3_BUCKET:-emporium-bench}" AWS_ENDPOINT="$BENCH_S3_ENDPOINT"
      AWS_ALLOW_HTTP=true AWS_REGION="${AWS_REGION:-us-east-1}")
  else
    objects=(OBJECT_STORE_URL="file://$WORK/objects-${connections}")
  fi
  node_pids=() urls=() metrics=()
  for i in $(seq 1 "$NODES"); do
    start_node "$WORK/node${i}-${connections}" DATABASE_URL="$DB_URL" REDIS_URL="$REDIS" \
      REDIS_PREFIX="emporium-bench-${RUN}-${connections}" NODE_ID="bench-${i}" "${objects[@]}" \
      OFFERS_URL="$SIM" FEED_SOURCES="${SIM}/feeds/0@15s,${SIM}/feeds/1@30s,${SIM}/feeds/2@60s"
    node_pids+=("$NODE_PID") urls+=("http://127.0.0.1:${PORT}/v1/products") metrics+=("http://127.0.0.1:${PORT}/metrics")
  done
  load "cluster-${connections}" "$connections" "$(IFS=,; echo "${urls[*]}")" "$(IFS=,; echo "${metrics[*]}")"
  rss=()
  for pid in "${node_pids[@]}"; do rss+=("$(rss_kb "$pid" VmHWM)"); done
  for pid in "${node_pids[@]}"; do kill "$pid"; done
  for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  succeeded="$(psql -qAt "$DB_URL" -c "SELECT count(*) FROM uploads WHERE status='succeeded'")"
  jq -n --argjson rss "[$(IFS=,; echo "${rss[*]}")]" --argjson succeeded "$succeeded" \
    '{rss_kb: $rss, db_succeeded: $succeeded}' >"$WORK/results/cluster-${connections}.node.json"
  references "$connections" after
done

python3 - "$WORK/results" "$LOAD_SECONDS" "$CONNECTION_COUNTS" "${BENCH_S3_ENDPOINT:+S3}" <<'PY'
import json, os, sys
results, seconds, counts, store = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4] or "shared file:// folder"
def read(name):
    path = os.path.join(results, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else {}
def mark(ok): return "✓" if ok else "✗"
def ms(value): return "-" if value is None else f"{value:.1f}"
print()
print(f"small bodies (1 KiB, each distinct), {seconds} s per measurement, loopback, {os.cpu_count()} cores")
for c in counts:
    refs = {}
    for kind in ("fsync", "group"):
        runs = [read(f"{kind}-{c}-{when}") for when in ("before", "after")]
        runs = [r for r in runs if r]
        refs[kind] = sum(r["accepted_per_second"] for r in runs) / len(runs) if runs else 0
    print(f"\n{c} connections:")
    print(f"  {'side':<37}{'accepted/s':>11}{'ingested/s':>11}{'drain s':>9}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'peak backlog':>13}{'503 backlog':>12}{'other':>7}  peak RSS MiB")
    def row(label, r, node=None):
        other = sum(r["other"].values()) + r["transport_errors"]
        ingested = f"{r['ingested_per_second']:.0f}" if "ingested_per_second" in r else "-"
        drain = (f"{r['drain_seconds']:.1f}" + ("" if r["drained"] else "+")) if "drain_seconds" in r else "-"
        backlog = f"{r['peak_backlog']:.0f}" if "peak_backlog" in r else "-"
        rss = " / ".join(f"{kb / 1024:.0f}" for kb in node["rss_kb"]) if node else "-"
        print(f"  {label:<37}{r['accepted_per_second']:>11.0f}{ingested:>11}{drain:>9}{ms(r['p50_ms']):>8}"
              f"{ms(r['p99_ms']):>8}{backlog:>13}{r['backlog_503']:>12}{other:>7}  {rss}")
    for when in ("before", "after"):
        if read(f"fsync-{c}-{when}"):
            row(f"ref: fsync per body, {when}", read(f"fsync-{c}-{when}"))
        if read(f"group-{c}-{when}"):
            batch = read(f"group-{c}-{when}.batch").get("bodies_per_batch", 0)
            row(f"ref: group commit, {when} ({batch:.0f}/fsync)", read(f"group-{c}-{when}"))
    for name, label in (("embedded", "embedded (SQLite)"), ("cluster", "3 nodes (Postgres, Redis)")):
        r, node = read(f"{name}-{c}"), read(f"{name}-{c}.node")
        if not r:
            continue
        row(label, r, node)
    for name, label in (("embedded", "embedded"), ("cluster", "3 nodes")):
        r, node = read(f"{name}-{c}"), read(f"{name}-{c}.node")
        if not r:
            continue
        accepted = r["accepted_per_second"]
        vs_fsync = accepted / refs["fsync"] if refs["fsync"] else 0
        vs_group = accepted / refs["group"] if refs["group"] else 0
        share = r["ingested_per_second"] / accepted if accepted else 0
        p99 = r["p99_ms"]
        other = {k: v for k, v in r["other"].items()}
        other_5xx = r["other_5xx"]
        goals = [f"accepted {vs_fsync:.2f}× fsync per body (≥ 1.0 {mark(vs_fsync >= 1.0)}), {vs_group:.2f}× group commit"
                 " (the references' mean of before and after)",
                 f"ingested/accepted {share:.2f} (≥ 0.9 {mark(share >= 0.9)})"]
        if c == "64":
            goals.append(f"p99 {ms(p99)} ms (≤ 250 {mark(p99 is not None and p99 <= 250)})")
        goals.append(f"5xx but the backlog's 503: {other_5xx} (0 {mark(other_5xx == 0)})")
        print(f"  {label}: " + "; ".join(goals))
        extra = []
        if other or r["transport_errors"]:
            extra.append(f"non-200 other than the backlog's 503: {other}, no answer: {r['transport_errors']}")
        if r.get("refused_total"):
            extra.append(f"ingestion refused {r['refused_total']:.0f} uploads")
        if not r.get("drained", True):
            extra.append(f"NOT drained within {r['drain_seconds']:.0f} s")
        if node and node.get("db_succeeded") != r["ok"]:
            extra.append(f"the database holds {node.get('db_succeeded')} succeeded uploads for {r['ok']} 200s")
        for line in extra:
            print(f"    ! {line}")
print(f"\n(3 nodes: object store {store}; accepted/s and ingested/s over the same window; drain: from the end"
      f" of the load until every accepted upload was ingested, '+' = not finished; latencies of the 200s)")
PY
