//! `benches`: load generation and measurement of the ledger through its public HTTP API.
//!
//! The `loadgen` binary drives a running cluster (closed loop: N concurrent clients, each
//! sending its next request when the previous one is answered) and reports throughput and latency
//! percentiles from HDR histograms. Peer comparisons and micro-benchmarks come with the
//! benchmarks issue; results and the commands that reproduce them are in `benches/RESULTS.md`.
//!
//! **Boundary:** talks to the ledger only through `ledger-client`, like any outside user; it must
//! not depend on the server's internals.
