//! The layout server's metric families.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Labels;

/// Metrics of a layout server, registered under `filemr_layout`.
#[derive(Debug, Clone)]
pub struct LayoutMetrics {
    /// Requests answered, by `op` (`get`, `commit`, `return`) and `result` (`ok` or the
    /// errno's name, e.g. `EXDEV`).
    pub requests: Family<Labels, Counter>,
    /// Messages sent to peers unasked, by `op` (`recall`, `available`, `lost`).
    pub notices: Family<Labels, Counter>,
    /// Frames that did not decode (answered with an error, or the connection closed).
    pub malformed: Counter,
    /// Connections accepted.
    pub connections: Counter,
    /// Connections open now.
    pub connected: Gauge,
    /// Layouts held by peers now.
    pub layouts: Gauge,
}

impl LayoutMetrics {
    /// Creates the families and registers them in `registry` under `filemr_layout`.
    pub fn new(registry: &mut Registry) -> LayoutMetrics {
        let m = LayoutMetrics {
            requests: Family::default(),
            notices: Family::default(),
            malformed: Counter::default(),
            connections: Counter::default(),
            connected: Gauge::default(),
            layouts: Gauge::default(),
        };
        // Known label values at 0 from the start (errno results appear with their first
        // refusal).
        for op in ["recall", "available", "lost"] {
            let _ = m.notices.get_or_create(&vec![("op", op.to_string())]);
        }
        for op in ["get", "commit", "return"] {
            let _ = m
                .requests
                .get_or_create(&vec![("op", op.to_string()), ("result", "ok".to_string())]);
        }
        let r = registry.sub_registry_with_prefix("filemr_layout");
        r.register("requests", "Layout requests answered, by op and result", m.requests.clone());
        r.register("notices", "Recalls, availabilities and losses sent", m.notices.clone());
        r.register("malformed", "Frames that did not decode", m.malformed.clone());
        r.register("connections", "Peer connections accepted", m.connections.clone());
        r.register("connected", "Peer connections open", m.connected.clone());
        r.register("held", "Layouts held by peers", m.layouts.clone());
        m
    }

    /// Counts one answered request.
    pub(crate) fn request(&self, op: &str, result: &str) {
        self.requests
            .get_or_create(&vec![("op", op.to_string()), ("result", result.to_string())])
            .inc();
    }

    /// Counts one notice.
    pub(crate) fn notice(&self, op: &str) {
        self.notices.get_or_create(&vec![("op", op.to_string())]).inc();
    }
}
