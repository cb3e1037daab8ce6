//! `jepsen-tests`: the chaos harness (real `ledgerd` processes, nemeses, histories, checkers).
//!
//! Not built yet: it is the subject of its own issue. Until then, the process-level fault tests
//! (SIGKILL of shard leaders under concurrent debits, full-cluster restart) live in
//! `crates/ledgerd/tests/`.
//!
//! **Boundary:** drives the ledger only through `ledger-client` and OS processes; it must never
//! depend on the server's internals, so that its checkers judge the ledger independently.
