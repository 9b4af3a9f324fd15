#!/usr/bin/env bash
# Catalog benchmark, run from the repo root:
#   1. 10,000 products × 5 offers seeded directly into a fresh Postgres database;
#   2. requests/s of `products(first: 50){ nodes { name offers { price itemsInStock } } }`
#      through emporium's GraphQL endpoint vs a minimal axum handler serving the same JSON
#      from one hand-written SQL query (bench/helpers/catalog.rs), with wrk, in the same run;
#   3. one full offer sync of the 10,000 products against the bundled simulator (products/s).
# Settings: DATABASE_URL (a Postgres URL whose server we may create a database on),
# BENCH_DURATION (wrk seconds per side, default 15), BENCH_CONNECTIONS (default 32).
set -euo pipefail

BASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DURATION="${BENCH_DURATION:-15}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
DB_NAME="emporium_bench_catalog"
source "$(dirname "$0")/lib.sh"
need_tools wrk:wrk psql:postgresql-client jq:jq curl:curl

build_release

echo "== seeding ${DB_NAME}: 10,000 products x 5 offers"
fresh_database "$DB_NAME"
psql -q -v ON_ERROR_STOP=1 "$DB_URL" >/dev/null <<'SQL'
INSERT INTO products (sku, name, description, registration_status, registered_at, created_at, updated_at)
SELECT 'bench-' || g, 'Product ' || g, 'Benchmark product number ' || g, 'registered', 0, 0, 0
FROM generate_series(1, 10000) AS g;
INSERT INTO offers (product_id, source_id, price, items_in_stock, created_at, updated_at)
SELECT p.id, 'seed-' || p.id || '-' || n, 1000 + ((p.id * 7919 + n * 104729) % 99000), (p.id + n) % 100, 0, 0
FROM products p CROSS JOIN generate_series(1, 5) AS n;
INSERT INTO price_history (product_id, offer_source_id, price, recorded_at)
SELECT product_id, source_id, price, 0 FROM offers;
ANALYZE;
SQL

start_node "$WORK/data" DATABASE_URL="$DB_URL" JOB_WORKERS=0
EMPORIUM_PORT="$PORT"
BASELINE_PORT="$(free_port)"
"$HELPERS" catalog-baseline "127.0.0.1:${BASELINE_PORT}" "$DB_URL" >"$WORK/baseline.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:${BASELINE_PORT}/graphql"

QUERY='{"query":"{ products(first: 50) { nodes { name offers { price itemsInStock } } } }"}'
cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '${QUERY}'
LUA

# Both sides must serve the same data, or the comparison means nothing (emporium's answer
# also carries `extensions.cost`, which the baseline has no reason to compute).
curl -s -X POST -H 'Content-Type: application/json' -d "$QUERY" "http://127.0.0.1:${EMPORIUM_PORT}/graphql" | jq -S '{data}' >"$WORK/graphql.json"
curl -s -X POST -H 'Content-Type: application/json' -d "$QUERY" "http://127.0.0.1:${BASELINE_PORT}/graphql" | jq -S '{data}' >"$WORK/baseline.json"
if ! cmp -s "$WORK/graphql.json" "$WORK/baseline.json"; then
  echo "the GraphQL answer and the baseline differ:" >&2
  diff "$WORK/graphql.json" "$WORK/baseline.json" | head -20 >&2
  exit 1
fi
echo "== both answer the same JSON ($(jq '.data.products.nodes | length' "$WORK/graphql.json") products, $(jq '[.data.products.nodes[].offers[]] | length' "$WORK/graphql.json") offers, $(wc -c <"$WORK/graphql.json") bytes pretty-printed)"

measure() { # url -> requests/s
  wrk -t2 -c"$CONNECTIONS" -d3s -s "$WORK/post.lua" "$1" >/dev/null # warm-up
  wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/post.lua" "$1" | tee -a "$WORK/wrk.log" | awk '/Requests\/sec/ { print $2 }'
}
echo "== wrk: ${DURATION}s each, 2 threads, ${CONNECTIONS} connections"
GRAPHQL_RPS="$(measure "http://127.0.0.1:${EMPORIUM_PORT}/graphql")"
BASELINE_RPS="$(measure "http://127.0.0.1:${BASELINE_PORT}/graphql")"
grep -E "Latency|Non-2xx|errors" "$WORK/wrk.log" || true
echo "GraphQL products(first: 50) with offers: ${GRAPHQL_RPS} req/s"
echo "hand-written SQL + axum baseline:        ${BASELINE_RPS} req/s"
python3 -c "print(f'ratio GraphQL / baseline: {float(\"$GRAPHQL_RPS\") / float(\"$BASELINE_RPS\"):.2f} (goal >= 0.5)')"

for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PIDS=()

echo "== offer sync of 10,000 products against the bundled simulator"
"$HELPERS" catalog-sync "$DB_URL"
