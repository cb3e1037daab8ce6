#!/usr/bin/env bash
# The ledger against its peers on this machine: the same load generator and the same workloads
# against a single-node ledger, a 3-node ledger, PostgreSQL (synchronous_commit=on, fsync on)
# and Redis (appendonly, appendfsync always; and everysec for reference), then one table with
# ratios. Also measures the disk's fsyncs/s, the physical bound of all of them.
#
#   benches/peers/run.sh                 everything, 15 s per run (about 20 minutes)
#   DURATION=3 WARMUP=1 ACCOUNTS=1000 benches/peers/run.sh     a quick smoke run
#
# Every server runs on loopback, on free ports, with its data in a temporary directory under
# /var/tmp (a real disk, so that fsync means fsync): not the system services. Everything this
# script starts is stopped when it ends, also on failure or Ctrl-C. Missing servers are
# installed with apt-get (PostgreSQL, Redis); the benches binaries are built if missing.
#
# Environment (defaults in brackets):
#   SYSTEMS      systems to run [ledger-1 ledger-3 postgres redis-always redis-everysec]
#   WORKLOADS    workloads [c64-batch1-uniform c64-batch100-uniform c64-batch1-hot c64-batch100-hot]
#                each `c<clients>-batch<n>-<uniform|zipfian|hot>` (closed loop) or
#                `r<ops per s>-batch<n>-<distribution>` (open loop), or `c<clients>-batchauto-<...>`:
#                one debit per call, which the ledger's client batches by itself (--auto-batch)
#   DURATION [15]  WARMUP [3]  ACCOUNTS [100000]  SHARDS [16]
#   SNAPSHOT_ENTRIES  the ledger nodes' `[snapshots] entries_since_last` [unset: the default]; low
#                values make snapshots happen within a run, to measure what they cost
#   RESULTS_DIR  where summaries, plots, logs and table.md go [benches/peers/results/<time>]
#   CARGO_TARGET_DIR [$HOME/.cache/credit-ledger/target]; LEDGERD [$CARGO_TARGET_DIR/release/ledgerd]
#   LOADGEN_ARGS extra arguments for every loadgen run
set -euo pipefail

BENCHES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(dirname "$BENCHES_DIR")"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/credit-ledger/target}"
LEDGERD="${LEDGERD:-$TARGET_DIR/release/ledgerd}"
LOADGEN_BUILT="$TARGET_DIR/release/loadgen"
PEER_TABLE="$TARGET_DIR/release/peer-table"
FSYNC_RATE="$TARGET_DIR/release/fsync-rate"
SYSTEMS="${SYSTEMS:-ledger-1 ledger-3 postgres redis-always redis-everysec}"
WORKLOADS="${WORKLOADS:-c64-batch1-uniform c64-batch100-uniform c64-batch1-hot c64-batch100-hot}"
DURATION="${DURATION:-15}"
WARMUP="${WARMUP:-3}"
ACCOUNTS="${ACCOUNTS:-100000}"
SHARDS="${SHARDS:-16}"
RESULTS_DIR="${RESULTS_DIR:-$BENCHES_DIR/peers/results/$(date +%Y%m%d-%H%M%S)}"
LOADGEN_ARGS="${LOADGEN_ARGS:-}"
START_TIMEOUT_SECONDS=60

die() {
    echo "run.sh: $*" >&2
    exit 1
}
say() { echo "== $*" >&2; }

# ---------------------------------------------------------------------------------------------
# What this script started, so that it stops exactly that: ledgerd and redis-server processes by
# pid, PostgreSQL data directories through pg_ctl.
STARTED_PIDS=()
STARTED_POSTGRES=()
WORK_DIR=""

stop_pid() {
    local pid="$1" waited=0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < 200)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run.sh: pid $pid did not stop within 20 s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

stop_everything() {
    local pid data_dir
    for pid in "${STARTED_PIDS[@]}"; do
        stop_pid "$pid"
    done
    STARTED_PIDS=()
    for data_dir in "${STARTED_POSTGRES[@]}"; do
        as_postgres "$PG_BIN/pg_ctl" -D "$data_dir" -m fast -w stop >/dev/null 2>&1 || true
    done
    STARTED_POSTGRES=()
}

cleanup() {
    local status=$?
    stop_everything
    if [[ -n "$WORK_DIR" && -d "$WORK_DIR" ]]; then
        rm -rf "$WORK_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Ports: free ones on loopback, never the same twice in one run.
USED_PORTS=()
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 30000))
        [[ " ${USED_PORTS[*]} " == *" $port "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            USED_PORTS+=("$port")
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

wait_for() {
    local what="$1"
    shift
    local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within ${START_TIMEOUT_SECONDS} s"
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# Installation of what is missing.
ensure_tools() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]} > 0)); then
        say "installing ${missing[*]} with apt-get"
        ((EUID == 0)) || die "installing ${missing[*]} needs root"
        apt-get update -qq
        # The packages' own services are not started (no init system here) and not used.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    PG_BIN="$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -n 1)")"
    if [[ ! -x "$LOADGEN_BUILT" || ! -x "$PEER_TABLE" || ! -x "$FSYNC_RATE" ]]; then
        say "building the benches binaries"
        (cd "$REPO_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p benches)
    fi
    if [[ ! -x "$LEDGERD" ]]; then
        say "building ledgerd"
        (cd "$REPO_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p ledgerd)
    fi
}

# PostgreSQL refuses to run as root: its commands run as the `postgres` user when we are root.
as_postgres() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------------------------------------
# Systems. Each `start_*` leaves the loadgen arguments that reach it in TARGET_ARGS.
TARGET_ARGS=()

write_ledger_config() {
    local file="$1" node_id="$2" replication="$3"
    shift 3
    # Remaining arguments: "id http_port raft_port" triples of every node.
    local -a nodes=("$@")
    local own_http="" own_raft="" entries="" triple id http raft
    for triple in "${nodes[@]}"; do
        read -r id http raft <<<"$triple"
        entries+="  { id = $id, http_addr = \"127.0.0.1:$http\", raft_addr = \"127.0.0.1:$raft\" },"$'\n'
        if [[ "$id" == "$node_id" ]]; then
            own_http="$http"
            own_raft="$raft"
        fi
    done
    cat >"$file" <<EOF
node_id = $node_id
data_dir = "data"
http_addr = "127.0.0.1:$own_http"
raft_addr = "127.0.0.1:$own_raft"
[cluster]
shards = $SHARDS
replication = $replication
nodes = [
$entries]
EOF
    if [[ -n "${SNAPSHOT_ENTRIES:-}" ]]; then
        printf '[snapshots]\nentries_since_last = %s\n' "$SNAPSHOT_ENTRIES" >>"$file"
    fi
}

start_ledger() {
    local count="$1" directory="$WORK_DIR/ledger-$1" index
    local -a triples=() urls=()
    for index in $(seq 1 "$count"); do
        triples+=("$index $(free_port) $(free_port)")
    done
    for index in $(seq 1 "$count"); do
        local node_dir="$directory/node$index"
        mkdir -p "$node_dir"
        write_ledger_config "$node_dir/node.toml" "$index" "$count" "${triples[@]}"
        (cd "$node_dir" && exec "$WORK_DIR/ledgerd" --config node.toml) \
            >"$RESULTS_DIR/logs/ledger-$count-node$index.log" 2>&1 &
        STARTED_PIDS+=("$!")
        local http
        read -r _ http _ <<<"${triples[$((index - 1))]}"
        urls+=("http://127.0.0.1:$http")
    done
    for url in "${urls[@]}"; do
        wait_for "ledgerd at $url" curl --silent --fail --max-time 2 "$url/health"
    done
    # loadgen itself waits until every shard has a leader.
    TARGET_ARGS=(--target ledger --nodes "$(
        IFS=,
        echo "${urls[*]}"
    )")
}

start_postgres() {
    local directory="$WORK_DIR/postgres" port
    port="$(free_port)"
    mkdir -p "$directory"
    chmod 755 "$WORK_DIR"
    ((EUID == 0)) && chown postgres: "$directory"
    as_postgres "$PG_BIN/initdb" -D "$directory/data" -U bench --auth=trust -E UTF8 \
        >"$RESULTS_DIR/logs/postgres-initdb.log" 2>&1
    # Durable like the ledger: every commit is flushed before it is acknowledged. The rest is
    # sized for this machine (the working set fits in shared_buffers).
    as_postgres "$PG_BIN/pg_ctl" -D "$directory/data" -w -t "$START_TIMEOUT_SECONDS" \
        -l "$directory/postgres.log" start -o "-p $port -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories=$directory -c fsync=on -c synchronous_commit=on \
        -c full_page_writes=on -c max_connections=300 -c shared_buffers=1GB \
        -c max_wal_size=4GB" >/dev/null
    STARTED_POSTGRES+=("$directory/data")
    wait_for "postgres" "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$port"
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U bench bench
    TARGET_ARGS=(--target postgres --postgres "host=127.0.0.1 port=$port user=bench dbname=bench")
}

start_redis() {
    local fsync_policy="$1" directory="$WORK_DIR/redis-$1" port
    port="$(free_port)"
    mkdir -p "$directory"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$directory" --daemonize no \
        --appendonly yes --appendfsync "$fsync_policy" --save "" --protected-mode no \
        --logfile "$directory/redis.log" &
    STARTED_PIDS+=("$!")
    wait_for "redis" redis-cli -p "$port" ping
    TARGET_ARGS=(--target redis --redis "redis://127.0.0.1:$port")
}

start_system() {
    case "$1" in
        ledger-1) start_ledger 1 ;;
        ledger-3) start_ledger 3 ;;
        postgres) start_postgres ;;
        redis-always) start_redis always ;;
        redis-everysec) start_redis everysec ;;
        *) die "unknown system '$1'" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Workloads.
workload_args() {
    local workload="$1"
    if [[ "$workload" =~ ^c([0-9]+)-batchauto-(uniform|zipfian|hot)$ ]]; then
        # One debit per call, sent by the client's automatic batcher (ledger only; the peers
        # run it as one debit per request).
        local auto=""
        [[ "$CURRENT_SYSTEM" == ledger-* ]] && auto="--auto-batch"
        echo "--concurrency ${BASH_REMATCH[1]} --batch 1 --distribution ${BASH_REMATCH[2]} $auto"
    elif [[ "$workload" =~ ^c([0-9]+)-batch([0-9]+)-(uniform|zipfian|hot)$ ]]; then
        echo "--concurrency ${BASH_REMATCH[1]} --batch ${BASH_REMATCH[2]} --distribution ${BASH_REMATCH[3]}"
    elif [[ "$workload" =~ ^r([0-9]+)-batch([0-9]+)-(uniform|zipfian|hot)$ ]]; then
        echo "--rate ${BASH_REMATCH[1]} --batch ${BASH_REMATCH[2]} --distribution ${BASH_REMATCH[3]}"
    else
        die "workload '$workload' is not c<clients>-batch<n>-<distribution> or r<rate>-batch<n>-<distribution>"
    fi
}

run_system() {
    local system="$1" workload setup_flag="" first=1
    say "$system: starting"
    CURRENT_SYSTEM="$system"
    start_system "$system"
    for workload in $WORKLOADS; do
        # The accounts are created once per system; later workloads reuse them.
        if ((first)); then setup_flag=""; else setup_flag="--skip-setup"; fi
        first=0
        say "$system: $workload"
        # shellcheck disable=SC2046,SC2086 # word splitting of the argument lists is intended
        "$LOADGEN" "${TARGET_ARGS[@]}" $(workload_args "$workload") $setup_flag \
            --accounts "$ACCOUNTS" --duration "$DURATION" --warmup "$WARMUP" \
            --label "$system" --workload "$workload" \
            --output "$RESULTS_DIR/$system--$workload.json" \
            --plot "$RESULTS_DIR/$system--$workload.svg" $LOADGEN_ARGS \
            >"$RESULTS_DIR/logs/$system--$workload.txt" 2>&1 ||
            die "loadgen failed on $system $workload: see $RESULTS_DIR/logs/$system--$workload.txt"
        grep -v "^loadgen:" "$RESULTS_DIR/logs/$system--$workload.txt" | head -n 1 >&2 || true
    done
    say "$system: stopping"
    stop_everything
}

# ---------------------------------------------------------------------------------------------
main() {
    ensure_tools
    mkdir -p "$RESULTS_DIR/logs"
    WORK_DIR="$(mktemp -d /var/tmp/credit-ledger-peers.XXXXXX)"
    # Private copies: a rebuild during the run must not change what is measured.
    cp "$LEDGERD" "$WORK_DIR/ledgerd"
    cp "$LOADGEN_BUILT" "$WORK_DIR/loadgen"
    LOADGEN="$WORK_DIR/loadgen"

    say "machine"
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
            git -C "$REPO_DIR" diff --quiet HEAD -- crates 2>/dev/null || echo ' (crates/ has uncommitted changes)'
        )"
        echo "cpus: $(nproc), memory: $(free -g | awk '/^Mem:/ {print $2}') GiB, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "kernel: $(uname -r)"
        echo "postgres: $("$PG_BIN/postgres" --version), redis: $(redis-server --version | cut -d' ' -f3)"
        echo "workloads: $WORKLOADS; duration ${DURATION} s after ${WARMUP} s warm-up; accounts $ACCOUNTS; shards $SHARDS"
    } | tee "$RESULTS_DIR/machine.txt" >&2

    say "disk: synced 4 KiB writes per second"
    {
        echo "fsync-rate: $("$FSYNC_RATE" --dir "$WORK_DIR" --seconds 5)"
        echo "dd oflag=dsync: $(dd if=/dev/zero of="$WORK_DIR/dd-probe" bs=4k count=1000 oflag=dsync 2>&1 | tail -n 1)"
        rm -f "$WORK_DIR/dd-probe"
    } | tee "$RESULTS_DIR/fsync.txt" >&2

    local system
    for system in $SYSTEMS; do
        run_system "$system"
    done

    local reference="ledger-3"
    [[ " $SYSTEMS " == *" ledger-3 "* ]] || reference="${SYSTEMS%% *}"
    "$PEER_TABLE" --reference "$reference" "$RESULTS_DIR"/*--*.json | tee "$RESULTS_DIR/table.md"
    say "results in $RESULTS_DIR"
}

main "$@"
