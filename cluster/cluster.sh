#!/usr/bin/env bash
# Runs a ledger cluster on loopback: node N (one per cluster/nodeN.toml) serves HTTP on
# 127.0.0.1:700N and Raft on 127.0.0.1:710N, with data in cluster/data/ and logs in
# cluster/logs/. Nodes 1..3 form the cluster; nodes 4 and 5 join it and receive replicas once
# cluster/cluster.toml declares them (`ledgerctl cluster apply cluster/cluster.toml`).
#
#   cluster.sh start [NODE]     build ledgerd if missing, start all nodes (or one), wait for
#                               /health and for a leader of every shard
#   cluster.sh stop [NODE]      SIGTERM, wait (bounded), then SIGKILL
#   cluster.sh restart [NODE]   stop, then start
#   cluster.sh kill NODE        SIGKILL one node (a crash, for failover experiments)
#   cluster.sh status           per node up/down, per shard leader table from GET /admin/cluster
#   cluster.sh logs NODE [-f]   the last lines of a node's log (-f: follow)
#   cluster.sh build            (re)build ledgerd in release
#   cluster.sh clean            delete data/ and logs/ (only when every node is stopped)
#
# Environment: CARGO_TARGET_DIR (default $HOME/.cache/credit-ledger/target), LEDGERD (binary to
# run, default $CARGO_TARGET_DIR/release/ledgerd), RUST_LOG (default info),
# START_TIMEOUT_SECONDS (default 60), STOP_TIMEOUT_SECONDS (default 20).
set -euo pipefail

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$CLUSTER_DIR")"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/credit-ledger/target}"
LEDGERD="${LEDGERD:-$TARGET_DIR/release/ledgerd}"
LOG_DIR="$CLUSTER_DIR/logs"
PID_DIR="$CLUSTER_DIR/run"
START_TIMEOUT_SECONDS="${START_TIMEOUT_SECONDS:-60}"
STOP_TIMEOUT_SECONDS="${STOP_TIMEOUT_SECONDS:-20}"
# Every node with a config here: node1..3 form the cluster; node4 and node5 (configs listing all
# five) join it and hold replicas once declared in cluster.toml (README, operator guide).
mapfile -t ALL_NODES < <(find "$CLUSTER_DIR" -maxdepth 1 -name 'node*.toml' -printf '%f\n' |
    sed 's/^node\([0-9]*\)\.toml$/\1/' | sort -n)

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The node ids a command applies to: the one given, or all of them.
nodes_of() {
    if [[ $# -eq 0 || -z "$1" ]]; then
        echo "${ALL_NODES[@]}"
        return
    fi
    [[ "$1" =~ ^[0-9]+$ && -f "$(config_of "$1")" ]] ||
        die "unknown node '$1' (expected one of: ${ALL_NODES[*]})"
    echo "$1"
}

config_of() { echo "$CLUSTER_DIR/node$1.toml"; }
log_of() { echo "$LOG_DIR/node$1.log"; }
pid_file_of() { echo "$PID_DIR/node$1.pid"; }

# The node's HTTP address, read from its config so that the two never disagree.
http_addr_of() {
    local address
    address="$(sed -n 's/^http_addr *= *"\([^"]*\)".*/\1/p' "$(config_of "$1")")"
    [[ -n "$address" ]] || die "no http_addr in $(config_of "$1")"
    echo "$address"
}

# The pid of the node if it runs, else nothing. The pid file alone is not trusted: the pid may
# have been reused by an unrelated process since the node died.
running_pid_of() {
    local pid_file pid
    pid_file="$(pid_file_of "$1")"
    [[ -f "$pid_file" ]] || return 0
    pid="$(cat "$pid_file")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "ledgerd.*node$1.toml"; then
        echo "$pid"
    fi
}

is_healthy() {
    curl --silent --fail --max-time 2 --output /dev/null "http://$(http_addr_of "$1")/health"
}

# shellcheck source=cluster/build-deps.sh
source "$REPO_DIR/cluster/build-deps.sh"

build() {
    ensure_build_dependencies
    echo "building ledgerd (release, target dir $TARGET_DIR)" >&2
    (cd "$REPO_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p ledgerd)
}

ensure_binary() {
    if [[ ! -x "$LEDGERD" ]]; then
        build
    fi
    [[ -x "$LEDGERD" ]] || die "no ledgerd binary at $LEDGERD"
}

start_node() {
    local node="$1" pid
    if [[ -n "$(running_pid_of "$node")" ]]; then
        echo "node $node already runs (pid $(running_pid_of "$node"))"
        return
    fi
    mkdir -p "$LOG_DIR" "$PID_DIR" "$CLUSTER_DIR/data"
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting node $node ===" >>"$(log_of "$node")"
    # Run from cluster/ so that the relative data_dir of the configs lands in cluster/data/.
    (
        cd "$CLUSTER_DIR"
        RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 nohup "$LEDGERD" --config "node$node.toml" \
            >>"$(log_of "$node")" 2>&1 </dev/null &
        echo $! >"$(pid_file_of "$node")"
    )
    pid="$(cat "$(pid_file_of "$node")")"
    echo "node $node started (pid $pid, log $(log_of "$node"))"
}

# Waits until every given node answers /health, or fails naming the nodes that did not.
wait_healthy() {
    local deadline=$((SECONDS + START_TIMEOUT_SECONDS)) node pending
    while true; do
        pending=()
        for node in "$@"; do
            if [[ -z "$(running_pid_of "$node")" ]]; then
                echo "node $node exited during startup; last lines of its log:" >&2
                tail -n 30 "$(log_of "$node")" >&2 || true
                exit 1
            fi
            is_healthy "$node" || pending+=("$node")
        done
        if [[ ${#pending[@]} -eq 0 ]]; then
            echo "healthy: node(s) $*"
            return
        fi
        if ((SECONDS >= deadline)); then
            for node in "${pending[@]}"; do
                echo "node $node not healthy after ${START_TIMEOUT_SECONDS}s; last lines of its log:" >&2
                tail -n 30 "$(log_of "$node")" >&2 || true
            done
            exit 1
        fi
        sleep 0.2
    done
}

# Waits until every shard has a leader that all up nodes agree on, so that the first requests
# are not answered 503 no_leader; fails after START_TIMEOUT_SECONDS with the shards still
# without one.
wait_for_leaders() {
    local node urls=()
    for node in "${ALL_NODES[@]}"; do
        if [[ -n "$(running_pid_of "$node")" ]]; then
            urls+=("http://$(http_addr_of "$node")")
        fi
    done
    python3 - "$START_TIMEOUT_SECONDS" "${urls[@]}" <<'PYTHON'
import json
import sys
import time
import urllib.request

timeout_seconds, urls = float(sys.argv[1]), sys.argv[2:]
deadline = time.monotonic() + timeout_seconds
while True:
    problem = None
    leaders = {}
    try:
        for url in urls:
            with urllib.request.urlopen(url + "/admin/cluster", timeout=3) as answer:
                for shard in json.load(answer)["shards"]:
                    if shard["digest"]:  # only the nodes that host a replica know its leader
                        leaders.setdefault(shard["shard_id"], set()).add(shard["leader"])
        pending = sorted(s for s, seen in leaders.items() if len(seen) != 1 or None in seen)
        if pending:
            problem = f"shards without an agreed leader: {pending}"
    except Exception as error:  # a node still starting its HTTP side
        problem = str(error)
    if problem is None:
        print(f"every shard has a leader ({len(leaders)} shards)")
        sys.exit(0)
    if time.monotonic() >= deadline:
        print(f"cluster.sh: not ready after {timeout_seconds:.0f}s: {problem}", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
PYTHON
}

start() {
    local selected nodes node
    # An assignment of its own, so that `set -e` stops on an unknown node id.
    selected="$(nodes_of "${1:-}")"
    read -ra nodes <<<"$selected"
    ensure_binary
    for node in "${nodes[@]}"; do
        start_node "$node"
    done
    wait_healthy "${nodes[@]}"
    wait_for_leaders
}

stop_node() {
    local node="$1" pid deadline
    pid="$(running_pid_of "$node")"
    if [[ -z "$pid" ]]; then
        rm -f "$(pid_file_of "$node")"
        echo "node $node is not running"
        return
    fi
    kill -TERM "$pid"
    deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "node $node did not stop within ${STOP_TIMEOUT_SECONDS}s of SIGTERM: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    else
        echo "node $node stopped"
    fi
    rm -f "$(pid_file_of "$node")"
}

stop() {
    local selected nodes node
    # An assignment of its own, so that `set -e` stops on an unknown node id.
    selected="$(nodes_of "${1:-}")"
    read -ra nodes <<<"$selected"
    for node in "${nodes[@]}"; do
        stop_node "$node"
    done
}

kill_node() {
    [[ $# -ge 1 ]] || die "kill needs a node id"
    local node pid
    node="$(nodes_of "$1")"
    pid="$(running_pid_of "$node")"
    [[ -n "$pid" ]] || die "node $node is not running"
    kill -KILL "$pid"
    rm -f "$(pid_file_of "$node")"
    echo "node $node killed (SIGKILL, pid $pid)"
}

status() {
    local node pid up_urls=()
    for node in "${ALL_NODES[@]}"; do
        pid="$(running_pid_of "$node")"
        if [[ -z "$pid" ]]; then
            printf 'node %s  down\n' "$node"
        elif is_healthy "$node"; then
            printf 'node %s  up       pid %-8s http://%s\n' "$node" "$pid" "$(http_addr_of "$node")"
            up_urls+=("http://$(http_addr_of "$node")")
        else
            printf 'node %s  running  pid %-8s not healthy yet\n' "$node" "$pid"
        fi
    done
    if [[ ${#up_urls[@]} -eq 0 ]]; then
        return
    fi
    echo
    # One row per shard; leader and last_applied as each up node sees them. Digests are compared
    # only between replicas at the same last_applied, where they must be equal.
    python3 - "${up_urls[@]}" <<'PYTHON'
import json
import signal
import sys
import urllib.request

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `cluster.sh status | head` is not an error
views = {}
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url + "/admin/cluster", timeout=3) as answer:
            view = json.load(answer)
        # Only the replicas a node hosts (a digest): the others are what the cluster map says.
        views[view["node_id"]] = {
            shard["shard_id"]: shard for shard in view["shards"] if shard["digest"]
        }
    except Exception as error:  # a node may die between the health check and this call
        print(f"{url}: /admin/cluster failed: {error}")

nodes = sorted(views)
shard_ids = sorted({shard_id for view in views.values() for shard_id in view})
if not shard_ids:
    print("no node hosts a replica yet (the cluster is forming)")
    sys.exit(0)
header = f"{'shard':>5}  {'leader':>6}  {'members':<9}  " + "  ".join(
    f"{'applied@' + str(node):>12}" for node in nodes
) + "  replicas"
print(header)
for shard_id in shard_ids:
    shards = {node: views[node][shard_id] for node in nodes if shard_id in views[node]}
    leaders = {shard["leader"] for shard in shards.values()}
    known = sorted(leader for leader in leaders if leader is not None)
    leader = "/".join(str(node) for node in known) or "-"
    if len(leaders) > 1:
        leader += "?"  # nodes disagree: an election is under way
    members = next(iter(shards.values()))["members"]
    def applied_on(node):
        if node not in shards:
            return "n/a"
        index = shards[node]["last_applied"]
        return "-" if index is None else str(index)

    applied = "  ".join(f"{applied_on(node):>12}" for node in nodes)
    by_index = {}
    for shard in shards.values():
        by_index.setdefault(shard["last_applied"], set()).add(shard["digest"])
    if set(by_index) == {None}:
        verdict = "empty"
    elif any(len(digests) > 1 for digests in by_index.values()):
        verdict = "DIGEST MISMATCH"
    elif len(by_index) == 1:
        verdict = "in sync"
    else:
        verdict = "catching up"
    print(f"{shard_id:>5}  {leader:>6}  {','.join(map(str, members)):<9}  {applied}  {verdict}")

leads = {}
for node in nodes:
    for shard in views[node].values():
        if shard["leader"] == node:
            leads[node] = leads.get(node, 0) + 1
print()
print("shards led: " + ", ".join(f"node {node}: {leads.get(node, 0)}" for node in nodes))
PYTHON
}

logs() {
    [[ $# -ge 1 ]] || die "logs needs a node id"
    local node log
    node="$(nodes_of "$1")"
    log="$(log_of "$node")"
    [[ -f "$log" ]] || die "no log yet for node $node ($log)"
    if [[ "${2:-}" == "-f" ]]; then
        tail -n 100 -f "$log"
    else
        tail -n 100 "$log"
    fi
}

clean() {
    local node
    for node in "${ALL_NODES[@]}"; do
        [[ -z "$(running_pid_of "$node")" ]] || die "node $node still runs: stop the cluster first"
    done
    rm -rf "$CLUSTER_DIR/data" "$LOG_DIR" "$PID_DIR"
    echo "removed cluster/data, cluster/logs and cluster/run"
}

main() {
    [[ $# -ge 1 ]] || usage
    local command="$1"
    shift
    case "$command" in
        start) start "$@" ;;
        stop) stop "$@" ;;
        restart)
            stop "$@"
            start "$@"
            ;;
        kill) kill_node "$@" ;;
        status) status ;;
        logs) logs "$@" ;;
        build) build ;;
        clean) clean ;;
        -h | --help | help) usage ;;
        *)
            echo "cluster.sh: unknown command '$command'" >&2
            usage
            ;;
    esac
}

main "$@"
