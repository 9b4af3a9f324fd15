# Shared by the benchmark scripts (sourced from the repo root): tools, ports, the
# release build and the helper binary, and cleanup of everything a script started.
# A script adds the pids of what it starts to PIDS; WORK is its scratch folder.

PIDS=()
WORK="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/emporium-bench.XXXXXX")"

bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  # BENCH_KEEP=1 keeps the scratch folder: deleting many files slows ext4's file creation
  # for minutes after (see bench/intake.sh), which skews a run that follows at once.
  if [ -n "${BENCH_KEEP:-}" ]; then echo "kept ${WORK}" >&2; else rm -rf "$WORK"; fi
}
trap bench_cleanup EXIT

# need_tools "command:debian-package" …: installs the missing ones with apt-get.
need_tools() {
  local missing=() spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# rss_kb PID FIELD: a field of /proc/PID/status in kB (VmRSS now, VmHWM the peak).
rss_kb() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_http() { # url: until it answers at all (30 s at most)
  for _ in $(seq 1 300); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "no answer from $1" >&2
  exit 1
}

# Builds emporium (target/release/emporium) and the bench helpers; sets HELPERS.
build_release() {
  echo "== building (release)"
  cargo build --release --quiet
  HELPERS="$(cargo bench --bench helpers --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "helpers" and .executable != null) | .executable' |
    tail -1)"
  [ -x "$HELPERS" ] || { echo "could not build the bench helpers (bench/helpers/)" >&2; exit 1; }
}

# start_node DATA_DIR [NAME=value …]: starts `emporium serve` (release) on a free loopback
# port, without the offer sync's schedule, logging to $WORK/emporium.log, and waits for
# /health; sets PORT and NODE_PID. The settings given override the defaults here.
start_node() {
  local data_dir=$1
  shift
  PORT="$(free_port)"
  env LISTEN="127.0.0.1:${PORT}" DATA_DIR="$data_dir" OFFERS_SYNC_CRON="0 0 0 1 1 *" RUST_LOG=warn "$@" \
    target/release/emporium serve >>"$WORK/emporium.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_http "http://127.0.0.1:${PORT}/health"
}
stop_node() { kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true; }

# fresh_database NAME: drops and creates NAME on the server of BASE_URL, migrated; sets DB_URL.
fresh_database() {
  DB_URL="${BASE_URL%/*}/$1"
  psql -q "$BASE_URL" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null 2>&1
  DATABASE_URL="$DB_URL" RUST_LOG=warn target/release/emporium migrate >/dev/null
}
