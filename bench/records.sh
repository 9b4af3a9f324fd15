#!/usr/bin/env bash
# Record-store benchmark, run from the repo root. Purchases/s with 64
# concurrent clients against Postgres, in one run:
#   - emporium: `createPurchase` over GraphQL, driven by wrk;
#   - reference: pgbench driving the same two statements the service runs in one
#     transaction (the conditional stock decrement, then the INSERT … SELECT);
# first on one hot record, then spread over 1,000 records. Last, a sell-out: 64 clients
# hammer a record holding 500 units through emporium; exactly 500 must be effective.
# Every phase ends with the oversell check: units sold beyond a record's stock (must be 0).
# Settings: DATABASE_URL (a Postgres URL whose server we may create a database on),
# BENCH_DURATION (seconds per measurement, default 10), BENCH_CONNECTIONS (default 64).
set -euo pipefail

BASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DURATION="${BENCH_DURATION:-10}"
CLIENTS="${BENCH_CONNECTIONS:-64}"
DB_NAME="emporium_bench_store"
source "$(dirname "$0")/lib.sh"
HOT_STOCK=2000000000 # enough never to run out while measuring
SPREAD_STOCK=10000000
SELL_OUT_STOCK=500

need_tools wrk:wrk psql:postgresql-client pgbench:postgresql-contrib jq:jq curl:curl
# Debian ships pgbench with the server packages, outside PATH.
PGBENCH="$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1)"
[ -x "$PGBENCH" ] || { echo "pgbench not found" >&2; exit 1; }
sql() { psql -qAt -v ON_ERROR_STOP=1 "$DB_URL" -c "$1"; }

build_release

echo "== fresh database ${DB_NAME}: ${CLIENTS} customers, 1 hot record, 1,000 records, 1 sell-out record"
fresh_database "$DB_NAME"
psql -q -v ON_ERROR_STOP=1 "$DB_URL" >/dev/null <<SQL
INSERT INTO customers (name, name_folded, email, email_folded, active, created_at, updated_at)
SELECT 'Customer ' || g, 'customer ' || g, 'c' || g || '@example.com', 'c' || g || '@example.com', true, 0, 0
FROM generate_series(1, ${CLIENTS}) AS g;
-- id 1: the hot record; ids 2..1001: the spread; id 1002: the sell-out.
INSERT INTO records (title, title_folded, artist, artist_folded, genre, genre_folded, release_year, price, stock, created_at, updated_at)
SELECT 'Record ' || g, 'record ' || g, 'Artist', 'artist', 'Rock', 'rock', 1970, 1999,
       CASE WHEN g = 1 THEN ${HOT_STOCK} WHEN g = 1002 THEN ${SELL_OUT_STOCK} ELSE ${SPREAD_STOCK} END, 0, 0
FROM generate_series(1, 1002) AS g;
CREATE TABLE bench_initial_stock AS SELECT id, stock FROM records;
ANALYZE;
SQL

start_node "$WORK/data" DATABASE_URL="$DB_URL" JOB_WORKERS=0
POOL="$(target/release/emporium --help | grep -A1 -e '--database-max-connections' | grep -o 'default: [0-9]*' | grep -o '[0-9]*' || echo '?')"

# GraphQL ids (base64url of `Type:row`) as Lua tables indexed by row: wrk's Lua has no base64.
lua_ids() { # type count -> a Lua table constructor
  python3 -c 'import base64, sys; t, n = sys.argv[1], int(sys.argv[2])
print("{" + ",".join("\"%s\"" % base64.urlsafe_b64encode(f"{t}:{i}".encode()).decode().rstrip("=") for i in range(1, n + 1)) + "}")' "$1" "$2"
}

# wrk: one createPurchase per request, for a record drawn from [lo, hi].
wrk_script() { # lo hi -> lua file
  cat >"$WORK/purchase-$1-$2.lua" <<LUA
local counter = 0
local customers = $(lua_ids Customer "${CLIENTS}")
local records = $(lua_ids Record 1002)
request = function()
  counter = counter + 1
  local record = records[math.random($1, $2)]
  local customer = customers[math.random(1, ${CLIENTS})]
  local body = '{"query":"mutation(\$i: CreatePurchaseInput!) { createPurchase(input: \$i) { id status } }",'
    .. '"variables":{"i":{"customerId":"' .. customer .. '","recordId":"' .. record .. '","quantity":1}}}'
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" }, body)
end
LUA
  echo "$WORK/purchase-$1-$2.lua"
}

# pgbench: the service's statements, verbatim, in one transaction (prepared, as sqlx does).
pgbench_script() { # lo hi -> script file
  cat >"$WORK/purchase-$1-$2.sql" <<SQL
\set record random($1, $2)
\set customer random(1, ${CLIENTS})
BEGIN;
UPDATE records SET stock = stock - 1, updated_at = 0 WHERE id = :record AND stock >= 1;
INSERT INTO purchases (customer_id, record_id, quantity, unit_price, total, status, created_at)
  SELECT c.id, r.id, 1, r.price, r.price * 1, 'EFFECTIVE', 0
  FROM customers c, records r
  WHERE c.id = :customer AND c.active AND r.id = :record AND r.price * 1 <= 2147483647
  RETURNING id, customer_id, record_id, quantity, unit_price, total, status, created_at, cancelled_at;
COMMIT;
SQL
  echo "$WORK/purchase-$1-$2.sql"
}

# wrk with a check that every answered request stored exactly one purchase (a GraphQL
# error would answer 200 and store nothing): the purchases stored during the run lie
# between the requests wrk saw answered and those plus the ones still in flight at the end.
# wrk_checked seconds script -> wrk's output
wrk_checked() {
  local before after out requests
  before="$(sql "SELECT COUNT(*) FROM purchases")"
  out="$(wrk -t2 -c"$CLIENTS" -d"$1s" -s "$2" "http://127.0.0.1:${PORT}")"
  after="$(sql "SELECT COUNT(*) FROM purchases")"
  requests="$(awk '/requests in/ { print $1 }' <<<"$out")"
  if grep -q "Non-2xx" <<<"$out" || [ $((after - before)) -lt "$requests" ] \
    || [ $((after - before)) -gt $((requests + CLIENTS)) ]; then
    echo "failed requests: ${requests} answered, $((after - before)) purchases stored" >>"$WORK/failures"
  fi
  echo "$out"
}
emporium_rps() { # lo hi -> purchases/s
  local script
  script="$(wrk_script "$1" "$2")"
  wrk_checked 2 "$script" >/dev/null # warm-up
  wrk_checked "$DURATION" "$script" | tee -a "$WORK/wrk.log" | awk '/Requests\/sec/ { print $2 }'
}
pgbench_tps() { # lo hi -> transactions/s
  "$PGBENCH" -n -M prepared -c "$CLIENTS" -j 2 -T "$DURATION" -f "$(pgbench_script "$1" "$2")" "$DB_URL" 2>&1 \
    | tee -a "$WORK/pgbench.log" | awk '/^tps/ { print $3; exit }'
}
oversold() { # units sold beyond what a record held (initial stock + restocks, none here)
  sql "SELECT COALESCE(SUM(GREATEST(sold - i.stock, 0)), 0) FROM bench_initial_stock i
       JOIN (SELECT record_id, SUM(quantity) AS sold FROM purchases WHERE status = 'EFFECTIVE' GROUP BY record_id) p
         ON p.record_id = i.id"
}
consistent() { # every record's stock = initial - effective units
  sql "SELECT COUNT(*) FROM records r JOIN bench_initial_stock i ON i.id = r.id
       LEFT JOIN (SELECT record_id, SUM(quantity) AS sold FROM purchases WHERE status = 'EFFECTIVE' GROUP BY record_id) p
         ON p.record_id = r.id
       WHERE r.stock <> i.stock - COALESCE(p.sold, 0) OR r.stock < 0"
}

ratio() { python3 -c "print(f'{float(\"$1\") / float(\"$2\"):.2f}')"; }
declare -A RESULT
for phase in "hot:1:1" "spread:2:1001"; do
  IFS=: read -r name lo hi <<<"$phase"
  echo "== ${name} (records ${lo}..${hi}): ${CLIENTS} clients, ${DURATION}s each"
  e="$(emporium_rps "$lo" "$hi")"
  p="$(pgbench_tps "$lo" "$hi")"
  RESULT[$name]="emporium ${e} purchases/s, pgbench ${p} tx/s, ratio $(ratio "$e" "$p")"
  echo "   ${RESULT[$name]}; oversold units so far: $(oversold)"
done

echo "== sell-out: ${CLIENTS} clients against record 1002 holding ${SELL_OUT_STOCK} units, 3s"
wrk_checked 3 "$(wrk_script 1002 1002)" >/dev/null
EFFECTIVE="$(sql "SELECT COUNT(*) FROM purchases WHERE record_id = 1002 AND status = 'EFFECTIVE'")"
OUT="$(sql "SELECT COUNT(*) FROM purchases WHERE record_id = 1002 AND status = 'OUT_OF_STOCK'")"
LEFT="$(sql "SELECT stock FROM records WHERE id = 1002")"

touch "$WORK/failures"
BAD="$(wc -l <"$WORK/failures")"
echo
echo "Postgres, ${CLIENTS} concurrent clients (emporium pool: ${POOL} connections; pgbench: ${CLIENTS})"
echo "hot record:    ${RESULT[hot]}"
echo "1,000 records: ${RESULT[spread]}   (goal >= 0.5 for both)"
echo "sell-out:      ${EFFECTIVE} effective, ${OUT} out of stock, stock left ${LEFT} (expect ${SELL_OUT_STOCK} effective, 0 left)"
echo "oversold units: $(oversold); records whose stock disagrees with their purchases: $(consistent); wrk runs with failed requests: ${BAD}"
[ "$BAD" = 0 ] || cat "$WORK/failures" >&2
[ "$(oversold)" = 0 ] && [ "$(consistent)" = 0 ] && [ "$EFFECTIVE" = "$SELL_OUT_STOCK" ] && [ "$LEFT" = 0 ] && [ "$BAD" = 0 ] \
  || { echo "INTEGRITY CHECK FAILED" >&2; exit 1; }
