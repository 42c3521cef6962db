#!/usr/bin/env bash
# A/B of two builds in one run on one machine: the release binaries of checkouts A and B, each
# on SQLite with its own checkout's default configuration and shipped plugins, loaded in turn
# by this checkout's `loadgen --target` (closed loop, c=128), ROUNDS pairs (default 3), first
# with new notifications, then with a re-push storm (every body twice). Pairs alternate, so a
# drift of the machine's speed falls on both sides. After each load it prints how many events
# the script stage processed meanwhile: on two cores it competes with the receiver.
#
#   cargo build --release --bins --examples   # here; `cargo build --release` in A and B
#   examples/compare/run.sh A B [ROUNDS] [loadgen options]
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ $# -lt 2 ]; then
    echo "usage: examples/compare/run.sh CHECKOUT_A CHECKOUT_B [ROUNDS] [loadgen options]" >&2
    exit 2
fi
a=$(realpath "$1") b=$(realpath "$2")
shift 2
rounds=3
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
for checkout in "$a" "$b"; do
    if [ ! -x "$checkout/target/release/notirouter" ]; then
        echo "$checkout/target/release/notirouter is missing: run cargo build --release there" >&2
        exit 2
    fi
done
loadgen=$PWD/target/release/examples/loadgen
server=${NOTIROUTER_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}
work=$(mktemp -d)
source examples/bench/instances.sh
trap cleanup EXIT

# Loads checkout $1 (named $2 in the output) once, with loadgen options $3...
measure() {
    local checkout=$1 name=$2
    shift 2
    echo "== $name ($checkout) $*"
    start "$checkout" 18091 ""
    "$loadgen" --target http://127.0.0.1:18091 --pid "${pids[0]}" --connections 128 "$@"
    # The scripts share the cores with the receiver: what they got through counts too.
    echo "  script stage    $(curl -sf http://127.0.0.1:18091/metrics |
        awk '$1 == "notirouter_events_processed_total" { print $2 }') events processed" \
        "(warm-up and window), $(curl -sf http://127.0.0.1:18091/metrics |
        awk '$1 ~ /^notirouter_notifications_received_total/ { sum += $2 } END { print sum }') received"
    stop_all
    rm -rf "$work/instance-18091"
}

for load in "" "--repush"; do
    for round in $(seq "$rounds"); do
        echo "==== round $round of $rounds ${load:-new notifications}"
        measure "$a" A $load "$@"
        measure "$b" B $load "$@"
    done
done
