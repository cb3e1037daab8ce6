#!/usr/bin/env bash
# The two commands of the README's quick start, each installing what it needs first.
#
#   cluster/dev.sh run [ledgerd args...]   build and run ledgerd (no args: single node on
#                                          127.0.0.1:8080, data in ./data)
#   cluster/dev.sh test                    the whole gate: fmt, clippy -D warnings, every test,
#                                          docs, a short chaos run and one chaos self-test.
#                                          CI (.ci/run) runs exactly this.
#
# Everything builds in the release profile into one target dir outside the clone (RocksDB is
# compiled from source once per profile, about 11 minutes on 2 cores), so tests and binaries
# share one compilation and later runs reuse it. Caution: cargo does not tell two checkouts of
# this workspace apart in one target dir (a path package's unit hash leaves out its path, and
# its dep-info paths are relative), and judges freshness by mtimes: a build in checkout B
# reuses what checkout A built if B's files are older than A's build. A fresh clone is always
# newer, so CI is safe; after building another checkout, `git ls-files -z | xargs -0 touch` here
# (or give the other checkout its own CARGO_TARGET_DIR).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/credit-ledger/target}

# shellcheck source=cluster/build-deps.sh
source "$repo/cluster/build-deps.sh"

run_tests() {
    cd "$repo"
    echo "== cargo fmt --check" >&2
    cargo fmt --all -- --check
    echo "== cargo clippy (release, all targets, -D warnings)" >&2
    cargo clippy --release --workspace --all-targets -- -D warnings
    echo "== cargo doc" >&2
    RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --quiet
    echo "== cargo test (release)" >&2
    local log
    log=$(mktemp)
    local status=0
    cargo test --release --workspace 2>&1 | tee "$log" || status=$?
    # One closing line for the whole suite (the last binary cargo runs is a doc-test binary that
    # may hold no test, which says nothing about the suite).
    awk '/^test result:/ { passed += $4; failed += $6 } END { printf "summary: %d passed, %d failed\n", passed, failed }' "$log"
    rm -f "$log"
    run_chaos || status=$?
    return "$status"
}

# A short chaos run (every nemesis, both workloads) and one self-test, which must catch its
# injected bug. Long runs over many seeds are documented in jepsen-tests/README.md.
run_chaos() {
    cd "$repo"
    local status=0
    echo "== chaos: jepsen-tests --time-limit 20 --seed 1" >&2
    cargo run --release -q -p jepsen-tests -- --time-limit 20 --seed 1 --reservations || status=$?
    echo "== chaos self-test: jepsen-tests --bug skip-idempotency-check" >&2
    cargo run --release -q -p jepsen-tests -- --time-limit 20 --seed 1 --bug skip-idempotency-check || status=$?
    if [ "$status" -eq 0 ]; then echo "chaos: valid, bug caught"; else echo "chaos: FAILED ($status)"; fi
    return "$status"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    run)
        ensure_build_dependencies
        mkdir -p "$CARGO_TARGET_DIR"
        cd "$repo"
        exec cargo run --release -p ledgerd -- "$@"
        ;;
    test)
        ensure_build_dependencies
        mkdir -p "$CARGO_TARGET_DIR"
        run_tests
        ;;
    *)
        echo "usage: cluster/dev.sh run [ledgerd args...] | cluster/dev.sh test" >&2
        exit 2
        ;;
esac
