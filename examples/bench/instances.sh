# Shell helpers of the benchmarks that load running instances with `loadgen --target`:
# starting an instance of a checkout's release binary on its own default configuration and
# shipped plugins, stopping them, and cleaning up. Sourced, not run; the caller sets `work`
# (a temporary folder) and may add databases to `databases` (dropped on exit, on `server`).

pids=()
databases=()

cleanup() {
    stop_all
    for database in "${databases[@]}"; do
        psql "$server" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
    done
    rm -rf "$work"
}

# Starts the release binary of checkout $1 on port $2 with store URL $3 (empty: SQLite) in a
# folder of its own, with that checkout's config/notirouter.toml and scripts/; waits until
# it answers.
start() {
    local checkout=$1 port=$2 url=$3 dir=$work/instance-$2
    local settings=(NOTIROUTER__SERVER__LISTEN="127.0.0.1:$port"
        NOTIROUTER__SCRIPTS__DIR="$checkout/scripts" NOTIROUTER__SCRIPTS__HOT_RELOAD=false)
    # Set only when given, so that a build older than the key still starts.
    if [ -n "$url" ]; then settings+=(NOTIROUTER__STORE__URL="$url"); fi
    mkdir -p "$dir"
    (cd "$dir" && exec env "${settings[@]}" "$checkout/target/release/notirouter" \
        --config "$checkout/config/notirouter.toml" serve >"$dir/log" 2>&1) &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return
        sleep 0.1
    done
    echo "the instance on port $port did not become ready:" >&2
    cat "$dir/log" >&2
    exit 1
}

# Stops the instances started so far and waits for them.
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
