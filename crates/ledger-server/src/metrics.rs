//! Prometheus metrics of a node, rendered by `GET /metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Handle on the process-wide Prometheus recorder. Several nodes in one process (in-process
/// tests) share the recorder; each node labels its own gauges with `node`.
#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

impl Metrics {
    pub fn install() -> Metrics {
        let handle = HANDLE.get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "prometheus recorder not installed; /metrics will be empty");
                None
            }
        });
        Metrics {
            handle: handle.clone(),
        }
    }

    pub fn render(&self) -> String {
        self.handle
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default()
    }
}
