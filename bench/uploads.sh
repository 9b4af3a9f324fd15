#!/usr/bin/env bash
# Upload benchmark, run from the repo root, in one run:
#   1. upload path: POST a generated 1 GiB JSON array (millions of products) to
#      `POST /v1/products` and, as the reference, to a minimal axum sink that reads and
#      discards the body (bench/helpers/uploads.rs); MB/s of both in rounds (one POST
#      of each side per round, order rotating, a fresh node each round), the median of
#      the rounds' ratios, and the node's peak RSS while it hashed, validated and spooled
#      the gigabyte; beside them, "hash + spool": the same body hashed and spooled by
#      emporium's own writer without the validation (in the sink's process), which shows
#      what the validation costs and the most any validator could leave; "spool": the same
#      without the hash, what writing the body to the disk as it arrives allows; and "disk": the
#      same bytes written by dd with O_DIRECT and synced, no network and no server, the most
#      any node that durably spools a body before it answers could do (the sink writes
#      nothing, so where the disk is slower than 0.7 of the sink, so is every such node);
#   2. ingestion: rows/s from an accepted upload to its products in Postgres, against
#      `psql \copy` of the same rows into a table of the same shape;
#   3. ingestion memory (embedded, SQLite): the 1 GiB array, 5 M tiny items and items near
#      the 128 KiB item limit, each accepted by a node without workers and ingested by a
#      fresh node: its peak RSS (VmHWM) while it ingested, and its RSS 10 s and 60 s after
#      the upload succeeded, against the idle RSS of a fresh node with the same settings.
#      The registrations the ingestion queues (one per new product, a call each to the
#      offers service: hours for millions) are deleted once the upload succeeded, so
#      that "after" means after the work. Items with 1 MB descriptions are refused at
#      the edge (400): the POST is shown, there is nothing to ingest.
# Settings: DATABASE_URL (a Postgres URL whose server we may create a database on),
# BENCH_UPLOAD_BYTES (default 1 GiB), BENCH_UPLOAD_ROUNDS (upload path rounds, default 5),
# BENCH_INGEST_BYTES (default 64 MiB ≈ 310,000 rows),
# BENCH_ROUNDS (ingestion rounds of each side, alternating; default 3, the median counts),
# BENCH_DIR (where the generated bodies go, default $TMPDIR or /tmp).
set -euo pipefail

BASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
UPLOAD_BYTES="${BENCH_UPLOAD_BYTES:-1073741824}"
INGEST_BYTES="${BENCH_INGEST_BYTES:-67108864}"
ROUNDS="${BENCH_ROUNDS:-3}"
UPLOAD_ROUNDS="${BENCH_UPLOAD_ROUNDS:-5}"
DB_NAME="emporium_bench_uploads"
source "$(dirname "$0")/lib.sh"
need_tools psql:postgresql-client jq:jq curl:curl
mb() { python3 -c "print(f'{$1 / 1e6:.0f}')"; }

build_release

echo "== generating a $(mb "$UPLOAD_BYTES") MB upload and a $(mb "$INGEST_BYTES") MB ingestion body in $WORK"
UPLOAD_ITEMS="$("$HELPERS" uploads-generate "$WORK/upload.json" - "$UPLOAD_BYTES" big)"
INGEST_ITEMS="$("$HELPERS" uploads-generate "$WORK/ingest.json" "$WORK/ingest.csv" "$INGEST_BYTES" rows)"
UPLOAD_SIZE="$(stat -c %s "$WORK/upload.json")"

fresh_node_state() { # an empty database and object store: no upload of an earlier phase
  fresh_database "$DB_NAME"
  rm -rf "$WORK/data"
}

post() { # url file -> "bytes_per_second http_code"; the body streams from the file
  curl -s -X POST -T "$2" -H 'Content-Type: application/json' -H 'Expect:' \
    -o "$WORK/answer.json" -w '%{speed_upload} %{http_code}\n' "$1"
}
# O_DIRECT like the node's spool writer, unless the filesystem refuses it (tmpfs): asked once.
DISK_DIRECT=oflag=direct
dd if=/dev/null of="$WORK/disk-write" oflag=direct 2>/dev/null || DISK_DIRECT=
disk_write() { # file -> bytes per second: the disk's own speed for the same bytes, synced
  local started took
  started="$(date +%s.%N)"
  dd if="$1" of="$WORK/disk-write" bs=4M $DISK_DIRECT conv=fsync status=none || return 1
  took="$(python3 -c "print($(date +%s.%N) - $started)")"
  rm -f "$WORK/disk-write"
  python3 -c "print($(stat -c %s "$1") / $took)"
}
# CPU time (user + system, in clock ticks) a process has used so far: per POST, what the
# server side cost the machine, which the two sides share with curl.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICKS_PER_SECOND="$(getconf CLK_TCK)"

echo "== upload path: ${UPLOAD_ITEMS} products, ${UPLOAD_SIZE} bytes"
SINK_PORT="$(free_port)"
"$HELPERS" uploads-sink "127.0.0.1:${SINK_PORT}" "$WORK/hash-spool" &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_http "http://127.0.0.1:${SINK_PORT}/"
# One POST first so that neither side pays for reading the new file from disk.
post "http://127.0.0.1:${SINK_PORT}/v1/products" "$WORK/upload.json" >/dev/null
# Sides: the sink (the reference), emporium, "hash + spool": the node's receiving pass
# without the validation, in the sink's process (the most any validator could leave),
# "spool": that pass without the hash, and "disk": the storage alone (the most any node
# that spools could do).
SIDES=(sink emporium hash-spool spool disk)
declare -A SPEEDS CPU SPEED_NOW CPU_NOW # per side: the rounds' figures ("a,b,…,"), this round's
PEAK_KB=0
per_gib() { python3 -c "print($1 / $TICKS_PER_SECOND / ($UPLOAD_SIZE / 2**30))"; }
for round in $(seq 1 "$UPLOAD_ROUNDS"); do
  # No workers: the node only receives (hash, validate, spool); ingestion is measured apart.
  fresh_node_state
  start_node "$WORK/data" DATABASE_URL="$DB_URL" JOB_WORKERS=0
  # The order rotates, so that no side always comes first or last.
  first=$(((round - 1) % ${#SIDES[@]}))
  for side in "${SIDES[@]:first}" "${SIDES[@]:0:first}"; do
    if [ "$side" = disk ]; then
      speed="$(disk_write "$WORK/upload.json")" || { echo "dd could not write to $WORK" >&2; exit 1; }
      SPEED_NOW[$side]="$speed" SPEEDS[$side]+="$speed," # dd's CPU is not a server's: not counted
      continue
    fi
    case $side in
      sink) pid=$SINK_PID url="http://127.0.0.1:${SINK_PORT}/v1/products" ;;
      hash-spool) pid=$SINK_PID url="http://127.0.0.1:${SINK_PORT}/hash-spool" ;;
      spool) pid=$SINK_PID url="http://127.0.0.1:${SINK_PORT}/spool" ;;
      emporium) pid=$NODE_PID url="http://127.0.0.1:${PORT}/v1/products" ;;
    esac
    before="$(cpu_ticks "$pid")"
    read -r speed code < <(post "$url" "$WORK/upload.json")
    [ "$code" = 200 ] || { echo "$side answered $code: $(head -c 500 "$WORK/answer.json")" >&2; exit 1; }
    SPEED_NOW[$side]="$speed" CPU_NOW[$side]="$(per_gib $(($(cpu_ticks "$pid") - before)))"
    SPEEDS[$side]+="$speed," CPU[$side]+="${CPU_NOW[$side]},"
  done
  round_peak="$(rss_kb "$NODE_PID" VmHWM)"
  if [ "$round_peak" -gt "$PEAK_KB" ]; then PEAK_KB=$round_peak; fi
  stop_node
  python3 -c "print(f'   round $round: emporium {${SPEED_NOW[emporium]} / 1e6:.0f} MB/s ({${CPU_NOW[emporium]}:.2f} CPU s/GiB),'
    f' sink {${SPEED_NOW[sink]} / 1e6:.0f} MB/s ({${CPU_NOW[sink]}:.2f}),'
    f' hash + spool {${SPEED_NOW[hash-spool]} / 1e6:.0f} MB/s ({${CPU_NOW[hash-spool]}:.2f}),'
    f' spool {${SPEED_NOW[spool]} / 1e6:.0f} MB/s ({${CPU_NOW[spool]}:.2f}),'
    f' disk {${SPEED_NOW[disk]} / 1e6:.0f} MB/s,'
    f' ratio {${SPEED_NOW[emporium]} / ${SPEED_NOW[sink]}:.2f}')"
done

echo "== ingestion: ${INGEST_ITEMS} products, ${ROUNDS} rounds of each side, alternating"
ingest_round() { # sets AFTER_ACCEPT and AFTER_POST (seconds); from an empty database and node
  fresh_node_state # without the gigabyte's upload and its queued ingestion
  start_node "$WORK/data" DATABASE_URL="$DB_URL" JOB_WORKERS=1 # one worker: the ingestion job runs alone (registrations wait behind it)
  # Each timed phase starts from a checkpoint: neither pays for the other's dirty pages.
  psql -q "$DB_URL" -c CHECKPOINT
  local started accepted ingested code upload_id rows
  started="$(date +%s.%N)"
  read -r _ code < <(post "http://127.0.0.1:${PORT}/v1/products" "$WORK/ingest.json")
  [ "$code" = 200 ] || { echo "emporium answered $code: $(head -c 500 "$WORK/answer.json")" >&2; exit 1; }
  upload_id="$(jq -r .upload_id "$WORK/answer.json")"
  accepted="$(date +%s.%N)"
  "$HELPERS" uploads-wait "http://127.0.0.1:${PORT}" "$upload_id"
  ingested="$(date +%s.%N)"
  stop_node
  rows="$(psql -qAt "$DB_URL" -c "SELECT COUNT(*) FROM products WHERE sku LIKE 'rows-%'")"
  [ "$rows" = "$INGEST_ITEMS" ] || { echo "expected ${INGEST_ITEMS} products, found ${rows}" >&2; exit 1; }
  AFTER_ACCEPT="$(python3 -c "print($ingested - $accepted)")"
  AFTER_POST="$(python3 -c "print($ingested - $started)")"
}
copy_round() { # sets COPY_TOOK (seconds): the same rows into a table of the same shape, indexes included
  psql -q -v ON_ERROR_STOP=1 "$DB_URL" \
    -c "CREATE TABLE products_copy (LIKE products INCLUDING ALL)" -c CHECKPOINT
  local started done copied
  started="$(date +%s.%N)"
  psql -q -v ON_ERROR_STOP=1 "$DB_URL" \
    -c "\\copy products_copy (sku, name, description, attributes, registration_status, created_at, updated_at) FROM '$WORK/ingest.csv' WITH (FORMAT csv)"
  done="$(date +%s.%N)"
  copied="$(psql -qAt "$DB_URL" -c "SELECT COUNT(*) FROM products_copy")"
  [ "$copied" = "$INGEST_ITEMS" ] || { echo "copied ${copied} rows, expected ${INGEST_ITEMS}" >&2; exit 1; }
  COPY_TOOK="$(python3 -c "print($done - $started)")"
}
INGEST_SECONDS=() WITH_POST=() COPY_SECONDS=()
for round in $(seq 1 "$ROUNDS"); do
  ingest_round
  copy_round
  INGEST_SECONDS+=("$AFTER_ACCEPT") WITH_POST+=("$AFTER_POST") COPY_SECONDS+=("$COPY_TOOK")
  python3 -c "print(f'   round $round: emporium {$INGEST_ITEMS / $AFTER_ACCEPT:.0f} rows/s, copy {$INGEST_ITEMS / $COPY_TOOK:.0f} rows/s, ratio {$COPY_TOOK / $AFTER_ACCEPT:.2f}')"
done

echo "== ingestion memory (embedded): idle, peak while ingesting, 10 s and 60 s after"
# No offers service (a closed port): registrations fail at once instead of calling it; the
# ones left are deleted when the upload succeeds (see the top).
OFFERS_CLOSED="http://127.0.0.1:$(free_port)"
python3 - "$WORK/tiny.json" "$WORK/wide.json" <<'PY'
import sys
with open(sys.argv[1], "w") as body:  # 5 M tiny items
    body.write("[" + ",".join(f'{{"id":"tiny-{n}","name":"T{n}"}}' for n in range(5_000_000)) + "]")
with open(sys.argv[2], "w") as body:  # ~200 MB of items near the 128 KiB item limit
    items = (f'{{"id":"wide-{n}","name":"W{n}","description":"{"d" * 10_000}","attributes":{{"notes":"{"a" * 100_000}"}}}}' for n in range(1_800))
    body.write("[" + ",".join(items) + "]")
PY
MEMORY_ROWS=()
ingestion_memory() { # label body
  local idle peak after10 after60 upload_id
  rm -rf "$WORK/mem-idle" "$WORK/mem"
  start_node "$WORK/mem-idle" OFFERS_URL="$OFFERS_CLOSED"
  sleep 5
  idle="$(rss_kb "$NODE_PID" VmRSS)"
  stop_node
  start_node "$WORK/mem" OFFERS_URL="$OFFERS_CLOSED" JOB_WORKERS=0
  read -r _ code < <(post "http://127.0.0.1:${PORT}/v1/products" "$2")
  [ "$code" = 200 ] || { echo "emporium answered $code: $(head -c 500 "$WORK/answer.json")" >&2; exit 1; }
  upload_id="$(jq -r .upload_id "$WORK/answer.json")"
  stop_node
  start_node "$WORK/mem" OFFERS_URL="$OFFERS_CLOSED"
  "$HELPERS" uploads-wait "http://127.0.0.1:${PORT}" "$upload_id"
  peak="$(rss_kb "$NODE_PID" VmHWM)"
  python3 -c "import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute(\"DELETE FROM jobs WHERE kind = 'catalog.register' AND status = 'queued'\")
db.commit()" "$WORK/mem/emporium.db"
  sleep 10
  after10="$(rss_kb "$NODE_PID" VmRSS)"
  sleep 50
  after60="$(rss_kb "$NODE_PID" VmRSS)"
  stop_node
  MEMORY_ROWS+=("$1,$((idle / 1024)),$((peak / 1024)),$((after10 / 1024)),$((after60 / 1024))")
  echo "   $1: idle $((idle / 1024)) MiB, peak $((peak / 1024)) MiB, after 10 s $((after10 / 1024)) MiB, after 60 s $((after60 / 1024)) MiB"
}
ingestion_memory "1 GiB array, ${UPLOAD_ITEMS} items" "$WORK/upload.json"
rm -f "$WORK/upload.json"
ingestion_memory "5 M tiny items" "$WORK/tiny.json"
rm -f "$WORK/tiny.json"
ingestion_memory "1,800 items near the 128 KiB limit" "$WORK/wide.json"
rm -f "$WORK/wide.json"
python3 -c "import sys
item = '{\"id\":\"huge\",\"name\":\"H\",\"description\":\"' + 'd' * 1_000_000 + '\"}'
open(sys.argv[1], 'w').write('[' + item + ']')" "$WORK/huge.json"
start_node "$WORK/mem-idle" OFFERS_URL="$OFFERS_CLOSED"
read -r _ HUGE_CODE < <(post "http://127.0.0.1:${PORT}/v1/products" "$WORK/huge.json")
stop_node
echo "   an item with a 1 MB description: ${HUGE_CODE} $(jq -c '.error // .' "$WORK/answer.json" | head -c 300)"

join() { local IFS=,; echo "$*"; }

python3 - <<PY
import statistics
sinks, emporiums = [${SPEEDS[sink]}], [${SPEEDS[emporium]}]
hash_spools, spools, disks = [${SPEEDS[hash-spool]}], [${SPEEDS[spool]}], [${SPEEDS[disk]}]
upload_ratios = [e / s for e, s in zip(emporiums, sinks)]
ceiling_ratios = [h / s for h, s in zip(hash_spools, sinks)]
spool_ratios = [p / s for p, s in zip(spools, sinks)]
disk_ratios = [d / s for d, s in zip(disks, sinks)]
sink, emporium, hash_spool, spool, disk = (statistics.median(side) / 1e6 for side in (sinks, emporiums, hash_spools, spools, disks))
print()
print(f"upload path, {$UPLOAD_SIZE / 2**30:.2f} GiB, ${UPLOAD_ITEMS} products, {len(upload_ratios)} rounds of each side:")
print(f"  emporium POST /v1/products: {emporium:.0f} MB/s median (hash + validate + spool)")
print(f"  minimal axum sink:          {sink:.0f} MB/s median")
print(f"  hash + spool, no validation: {hash_spool:.0f} MB/s median, ratio {statistics.median(ceiling_ratios):.2f}"
      f" (the most a validator that cost nothing would leave)")
print(f"  spool only, no hash:         {spool:.0f} MB/s median, ratio {statistics.median(spool_ratios):.2f}"
      f" (range {min(spool_ratios):.2f}-{max(spool_ratios):.2f}; receiving while writing to the disk)")
print(f"  disk alone, dd of the file:  {disk:.0f} MB/s median, ratio {statistics.median(disk_ratios):.2f}"
      f" (range {min(disk_ratios):.2f}-{max(disk_ratios):.2f}; the most any node that spools before it answers could do)")
print(f"  ratio, median of {len(upload_ratios)} rounds: {statistics.median(upload_ratios):.2f}"
      f" (range {min(upload_ratios):.2f}-{max(upload_ratios):.2f}; goal >= 0.7)")
print(f"  CPU per GiB received, medians: emporium {statistics.median([${CPU[emporium]}]):.2f} s,"
      f" sink {statistics.median([${CPU[sink]}]):.2f} s, hash + spool {statistics.median([${CPU[hash-spool]}]):.2f} s,"
      f" spool {statistics.median([${CPU[spool]}]):.2f} s"
      f" (curl's own CPU comes on top of each, on the same $(nproc) cores)")
print(f"  emporium peak RSS {$PEAK_KB / 1024:.0f} MiB (goal < 100 MiB)")
ingest, with_post, copy = [$(join "${INGEST_SECONDS[@]}")], [$(join "${WITH_POST[@]}")], [$(join "${COPY_SECONDS[@]}")]
ratios = [c / i for i, c in zip(ingest, copy)]
print(f"ingestion, {$INGEST_ITEMS} products ({$INGEST_BYTES / 2**20:.0f} MiB), {len(ratios)} rounds of each side:")
print(f"  emporium: {$INGEST_ITEMS / statistics.median(ingest):.0f} rows/s median (accepted → all rows committed in"
      f" {statistics.median(ingest):.1f} s; {statistics.median(with_post):.1f} s with the POST;")
print(f"            each batch of products also gets its registration job in the same transaction)")
print(f"  psql \\\\copy: {$INGEST_ITEMS / statistics.median(copy):.0f} rows/s median ({statistics.median(copy):.1f} s)")
print(f"  ratio, median of {len(ratios)} rounds: {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}; goal >= 0.5)")
print("ingestion memory, embedded (MiB; goals: peak <= 100, after <= 1.2 x idle):")
for row in "$(IFS=';'; echo "${MEMORY_ROWS[*]}")".split(";"):
    label, idle, peak, after10, after60 = row.rsplit(",", 4)
    idle, peak, after10, after60 = map(int, (idle, peak, after10, after60))
    print(f"  {label}: idle {idle}, peak {peak} ({'ok' if peak <= 100 else 'over'}),"
          f" after 10 s {after10} ({after10 / idle:.2f} x idle), after 60 s {after60} ({after60 / idle:.2f} x idle,"
          f" {'ok' if after60 <= 1.2 * idle else 'over'})")
PY
