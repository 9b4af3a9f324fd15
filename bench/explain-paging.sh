#!/usr/bin/env bash
# The plans of list pages (docs/paging.md), run from the repo root:
#   1. a scratch Postgres database, migrated, with 1,000,000 products (one in five without
#      a lowest price) and 1,000,000 purchases;
#   2. auto_explain on that database (log_analyze, log_buffers): every statement run there
#      is logged with its EXPLAIN (ANALYZE, BUFFERS) plan, so the plans shown are those of
#      the exact SQL the ORM issues, with its parameters;
#   3. a node on it answers `products` and `purchases` pages for every ordering, both
#      directions: the first page, the page after its endCursor, the page after a cursor
#      in the middle of the table, and the page before that cursor (`last`);
#   4. the plans of the products/purchases statements, read back from the server log,
#      each under the GraphQL page it served.
# Settings: DATABASE_URL (a Postgres URL whose server we may create a database on; its
# log must be readable here: PG_LOG, default Debian's), REDIS_URL, ROWS (default 1000000).
# The database is dropped at the end. Debug build: plans do not depend on it.
set -euo pipefail

BASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
REDIS="${REDIS_URL:-redis://127.0.0.1:6379}"
PG_LOG="${PG_LOG:-/var/log/postgresql/postgresql-15-main.log}"
ROWS="${ROWS:-1000000}"
DB_NAME="emporium_explain_paging_$$"
DB_URL="${BASE_URL%/*}/$DB_NAME"
source "$(dirname "$0")/lib.sh"
need_tools psql:postgresql-client jq:jq curl:curl

drop_database() { psql -q "$BASE_URL" -c "DROP DATABASE IF EXISTS $DB_NAME" >/dev/null 2>&1 || true; }
trap 'bench_cleanup; drop_database' EXIT

echo "== building (debug)" >&2
cargo build --quiet
BIN=target/debug/emporium

echo "== seeding $DB_NAME: $ROWS products and purchases" >&2
psql -q "$BASE_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null
DATABASE_URL="$DB_URL" RUST_LOG=warn "$BIN" migrate >/dev/null
psql -q -v ON_ERROR_STOP=1 -v rows="$ROWS" "$DB_URL" >/dev/null <<'SQL'
INSERT INTO products (sku, name, description, registration_status, created_at, updated_at, lowest_price)
SELECT 'sku-' || i, 'product ' || substr(md5(i::text), 1, 12), '', 'pending', 1700000000000 + i, 1700000000000 + i,
       CASE WHEN i % 5 = 0 THEN NULL ELSE abs(hashint4(i)) % 100000 END
FROM generate_series(1, :rows) AS i;
INSERT INTO customers (name, name_folded, email, email_folded, active, created_at, updated_at)
SELECT 'customer ' || i, 'customer ' || i, 'c' || i || '@example.com', 'c' || i || '@example.com', true, 0, 0
FROM generate_series(1, 1000) AS i;
INSERT INTO records (title, title_folded, artist, artist_folded, genre, genre_folded, release_year, price, stock,
                     created_at, updated_at)
SELECT 'title ' || i, 'title ' || i, 'artist ' || i, 'artist ' || i, 'jazz', 'jazz', 1960 + i % 60, 1000, 1000, 0, 0
FROM generate_series(1, 1000) AS i;
INSERT INTO purchases (customer_id, record_id, quantity, unit_price, total, status, created_at)
SELECT 1 + i % 1000, 1 + i % 997, 1 + i % 4, 100 + abs(hashint4(i)) % 10000,
       (1 + i % 4) * (100 + abs(hashint4(i)) % 10000), 'EFFECTIVE', 1700000000000 + i
FROM generate_series(1, :rows) AS i;
VACUUM ANALYZE;
SQL
# Every session on this database from now on logs its statements' plans.
psql -q -v ON_ERROR_STOP=1 "$BASE_URL" >/dev/null <<SQL
ALTER DATABASE $DB_NAME SET session_preload_libraries = 'auto_explain';
ALTER DATABASE $DB_NAME SET auto_explain.log_min_duration = 0;
ALTER DATABASE $DB_NAME SET auto_explain.log_analyze = on;
ALTER DATABASE $DB_NAME SET auto_explain.log_buffers = on;
ALTER DATABASE $DB_NAME SET auto_explain.log_timing = on;
SQL

PORT="$(free_port)"
env LISTEN="127.0.0.1:$PORT" DATABASE_URL="$DB_URL" REDIS_URL="$REDIS" REDIS_PREFIX="explain-$$" \
  DATA_DIR="$WORK/data" OBJECT_STORE_URL="file://$WORK/objects" OFFERS_SYNC_CRON="0 0 0 1 1 *" JOB_WORKERS=0 \
  RUST_LOG=warn "$BIN" serve >>"$WORK/emporium.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$PORT/health"

gql() { # query: the data, or the errors on stderr and exit
  local answer
  answer="$(jq -n --arg q "$1" '{query: $q}' | curl -sf -H 'content-type: application/json' -d @- \
    "http://127.0.0.1:$PORT/graphql")"
  if [ "$(jq '.errors != null' <<<"$answer")" = true ]; then echo "$answer" >&2; exit 1; fi
  jq -c .data <<<"$answer"
}

# A marker in the log: the statements that follow, until the next marker, served `label`.
mark() { psql -q "$DB_URL" -c "SELECT 'page: $1'" >/dev/null; }

# cursor FIELD DIRECTION ID KEY: a cursor as the API makes them (docs/paging.md), for a
# row in the middle of the table.
cursor() { printf '%s:%s:%s:%s' "$1" "$2" "$3" "$4" | base64 -w0 | tr '+/' '-_' | tr -d '='; }

key_of() { # table column id: the row's key as a cursor writes it
  local value
  value="$(psql -Atq "$DB_URL" -c "SELECT $2 FROM $1 WHERE id = $3")"
  case "$2" in
    id) echo "" ;;
    name) echo "s$value" ;;
    *) if [ -z "$value" ]; then echo "n"; else echo "i$value"; fi ;;
  esac
}

LOG_START="$(stat -c %s "$PG_LOG")"
MIDDLE=$((ROWS / 2 + 1))
for list in products purchases; do
  if [ "$list" = products ]; then
    orderings="CREATED_AT:id NAME:name LOWEST_PRICE:lowest_price"
  else
    orderings="CREATED_AT:id TOTAL:total"
  fi
  for ordering in $orderings; do
    field="${ordering%%:*}"
    column="${ordering#*:}"
    middles="$MIDDLE"
    # LOWEST_PRICE: also a cursor on a row without a price (the nulls, last both ways).
    [ "$field" = LOWEST_PRICE ] && middles="$MIDDLE $((ROWS / 2))"
    for direction in ASC DESC; do
      order="orderBy: {field: $field, direction: $direction}"
      label="$list($order, first: 20)"
      mark "$label"
      end="$(gql "{ $list(first: 20, $order) { pageInfo { endCursor } nodes { id } } }" | jq -r ".$list.pageInfo.endCursor")"
      mark "$list($order, first: 20, after: <endCursor of the first page>)"
      gql "{ $list(first: 20, after: \"$end\", $order) { nodes { id } } }" >/dev/null
      for id in $middles; do
        middle="$(cursor "$field" "$direction" "$id" "$(key_of "$list" "$column" "$id")")"
        mark "$list($order, first: 20, after: <cursor of row $id>)"
        gql "{ $list(first: 20, after: \"$middle\", $order) { nodes { id } } }" >/dev/null
        mark "$list($order, last: 20, before: <cursor of row $id>)"
        gql "{ $list(last: 20, before: \"$middle\", $order) { nodes { id } } }" >/dev/null
      done
    done
  done
done
mark "end"
sleep 1

# The plans, from the log: each marker, then the plans of statements on the two tables.
tail -c +"$((LOG_START + 1))" "$PG_LOG" | python3 -c '
import re, sys
entries, current = [], None
for line in sys.stdin:
    if re.match(r"\d{4}-\d\d-\d\d ", line):
        current = [line]
        entries.append(current)
    elif current is not None:
        current.append(line)
db = sys.argv[1]
for entry in entries:
    if "@" + db not in entry[0] or "plan:" not in entry[0]:
        continue
    text = "".join(entry)
    marker = re.search(r"Query Text: SELECT \x27page: (.*)\x27", text)
    if marker:
        if marker.group(1) != "end":
            print("\n### " + marker.group(1))
        continue
    if re.search(r"FROM \"(products|purchases)\"", text):
        print("".join(line.replace("\t", "    ", 1) for line in entry[1:]).rstrip())
' "$DB_NAME"
