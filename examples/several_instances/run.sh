#!/usr/bin/env bash
# Same run, same machine: one notirouter on SQLite, one on PostgreSQL, and two on one
# PostgreSQL database with the load split between them; each loaded by `loadgen --target`
# (closed loop, c=128 by default) with the shipped plugins and the default configuration.
# The PostgreSQL server is NOTIROUTER_TEST_PG's (default postgres://postgres@127.0.0.1:5432/test);
# a database of its own is created for each PostgreSQL case and dropped after.
#
#   cargo build --release --bins --examples && examples/several_instances/run.sh [loadgen options]
set -euo pipefail
cd "$(dirname "$0")/../.."

server=${NOTIROUTER_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}
here=$PWD
loadgen=$PWD/target/release/examples/loadgen
work=$(mktemp -d)
source examples/bench/instances.sh
trap cleanup EXIT

# Creates a new, empty database named $1 on the server, dropped on exit.
new_database() {
    psql "$server" -qc "CREATE DATABASE $1"
    databases+=("$1")
}

# The URL of database $1 on the server, with the server URL's parameters (e.g. sslmode).
database_url() {
    local base=${server%%\?*}
    echo "${base%/*}/$1${server#"$base"}"
}

echo "== one instance on SQLite"
start "$here" 18081 ""
"$loadgen" --target http://127.0.0.1:18081 --pid "${pids[0]}" --connections 128 "$@"
stop_all

echo "== one instance on PostgreSQL"
new_database "notirouter_bench_$$_one"
start "$here" 18082 "$(database_url "notirouter_bench_$$_one")"
"$loadgen" --target http://127.0.0.1:18082 --pid "${pids[0]}" --connections 128 "$@"
stop_all

echo "== two instances on one PostgreSQL database, the load split"
new_database "notirouter_bench_$$_two"
start "$here" 18083 "$(database_url "notirouter_bench_$$_two")"
start "$here" 18084 "$(database_url "notirouter_bench_$$_two")"
"$loadgen" --target http://127.0.0.1:18083,http://127.0.0.1:18084 \
    --pid "${pids[0]},${pids[1]}" --connections 128 "$@"
stop_all
