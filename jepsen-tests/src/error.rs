//! Errors of the harness itself. They are not verdicts on the ledger: a run that fails with a
//! [`HarnessError`] judged nothing (exit code 2), while an anomaly is a checker result.

use std::path::PathBuf;

use crate::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building ledgerd failed: {message}")]
    Build { message: String },
    #[error("node {node}: {message}")]
    Node { node: NodeId, message: String },
    #[error("the cluster did not become ready within {timeout_ms} ms: {reason}")]
    NotReady { timeout_ms: u64, reason: String },
    #[error("ledger client: {0}")]
    Client(#[from] ledger_client::ClientError),
    #[error("setup of the workload failed: {message}")]
    Setup { message: String },
    #[error("clock faults are unusable: {message}")]
    Clock { message: String },
    #[error("network namespaces: {message}")]
    Network { message: String },
    #[error("invalid options: {message}")]
    Options { message: String },
}

impl HarnessError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> HarnessError {
        let path = path.into();
        move |source| HarnessError::Io {
            action,
            path,
            source,
        }
    }
}
