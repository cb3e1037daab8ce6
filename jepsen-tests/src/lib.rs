//! `jepsen-tests`: the chaos harness of the Credit Ledger.
//!
//! Starts N real `ledgerd` processes on loopback ([`cluster`]), injects faults on a seeded
//! schedule ([`nemesis`]: kill -9 and restart, SIGSTOP/SIGCONT, partitions through a
//! harness-owned TCP proxy on the Raft links ([`proxy`]) or, as root, firewall rules between
//! nodes in network namespaces of their own ([`netns`]), clock jumps with libfaketime
//! ([`clock`])), runs concurrent clients that record every operation as invoke then
//! ok / fail / info ([`workload`], [`history`]), heals, reads the final state, and judges the
//! history with independent checkers ([`checker`]): exactly-once per key, conservation, the
//! balance floor, durability, replica digests, per-account linearizability (WGL search) and
//! availability. [`report`] writes `report.txt` and `latency.svg`; [`run`] ties it together.
//!
//! **Boundary:** drives the ledger only through its public HTTP API (`ledger-client`,
//! `ledger-api`) and OS processes (spawn, signals, files). It must never depend on the server's
//! internals (core, raft, storage, actors, server): the checkers re-derive every expectation
//! from the history with their own model, so a bug shared with the server cannot hide itself.

pub mod checker;
pub mod clock;
pub mod cluster;
pub mod error;
pub mod history;
pub mod ledgerd_binary;
pub mod nemesis;
pub mod netns;
pub mod proxy;
pub mod report;
pub mod run;
pub mod workload;

pub use error::HarnessError;

/// A node id as in the node configs (`node_id`, `cluster.nodes[].id`).
pub type NodeId = u64;
