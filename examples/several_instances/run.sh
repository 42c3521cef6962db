#!/usr/bin/env bash
# Same run, same machine: one notirouter on SQLite, one on PostgreSQL, and two on one
# PostgreSQL database with the load split between them; each loaded by `loadgen --target`
# (closed loop, c=128 by default) with the shipped plugins and the default configuration.
# The PostgreSQL server is NOTIROUTER_TEST_PG's (default postgres://postgres@127.0.0.1:5432/test);
# a database of its own is created for each PostgreSQL case and dropped after.
#
#   cargo build --release --examples && examples/several_instances/run.sh [loadgen options]
set -euo pipefail
cd "$(dirname "$0")/../.."

server=${NOTIROUTER_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}
bin=$PWD/target/release/notirouter
loadgen=$PWD/target/release/examples/loadgen
scripts=$PWD/scripts
config=$PWD/config/notirouter.toml
work=$(mktemp -d)
pids=()
databases=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for database in "${databases[@]}"; do
        psql "$server" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Creates a new, empty database named $1 on the server, dropped on exit.
new_database() {
    psql "$server" -qc "CREATE DATABASE $1"
    databases+=("$1")
}

# Starts an instance on port $1 with store URL $2 (empty: SQLite) in its own folder; waits
# until it answers.
start() {
    local port=$1 url=$2 dir=$work/instance-$1
    mkdir -p "$dir"
    (cd "$dir" && NOTIROUTER__SERVER__LISTEN="127.0.0.1:$port" NOTIROUTER__STORE__URL="$url" \
        NOTIROUTER__SCRIPTS__DIR="$scripts" NOTIROUTER__SCRIPTS__HOT_RELOAD=false \
        exec "$bin" --config "$config" serve >"$dir/log" 2>&1) &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return
        sleep 0.1
    done
    echo "the instance on port $port did not become ready:" >&2
    cat "$dir/log" >&2
    exit 1
}

# Stops the instances started so far.
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}

echo "== one instance on SQLite"
start 18081 ""
"$loadgen" --target http://127.0.0.1:18081 --pid "${pids[0]}" --connections 128 "$@"
stop_all

echo "== one instance on PostgreSQL"
new_database "notirouter_bench_$$_one"
start 18082 "${server%/*}/notirouter_bench_$$_one"
"$loadgen" --target http://127.0.0.1:18082 --pid "${pids[0]}" --connections 128 "$@"
stop_all

echo "== two instances on one PostgreSQL database, the load split"
new_database "notirouter_bench_$$_two"
start 18083 "${server%/*}/notirouter_bench_$$_two"
start 18084 "${server%/*}/notirouter_bench_$$_two"
"$loadgen" --target http://127.0.0.1:18083,http://127.0.0.1:18084 \
    --pid "${pids[0]},${pids[1]}" --connections 128 "$@"
stop_all
