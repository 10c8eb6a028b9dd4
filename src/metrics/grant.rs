//! The grants' metric families.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::Labels;

/// Metrics of grants (peer keys), registered under `filemr_grant`.
#[derive(Debug, Clone)]
pub struct GrantMetrics {
    /// Grants made.
    pub granted: Counter,
    /// Grants recalled because their region's lease broke.
    pub recalled: Counter,
    /// Grants returned by their peer, by `when`: `in_time` (after a recall, before the
    /// deadline), `late` (after it was retargeted), `unrecalled` (without a recall).
    pub returned: Family<Labels, Counter>,
    /// Grants fenced (window invalidated) because their peer did not return in time, or
    /// a bind failed.
    pub fenced: Counter,
    /// Grants retargeted to scratch memory because their peer did not return in time.
    pub retargeted: Counter,
    /// Grants rebound to their rebuilt region.
    pub rebound: Counter,
    /// Seconds from a recall to the peer's return.
    pub recall_seconds: Histogram,
    /// Scratch memory regions built, by `backing` (`repeated`: one chunk mapped over the
    /// region's length; when scratch cannot be built the grants are fenced instead).
    pub scratch: Family<Labels, Counter>,
}

impl GrantMetrics {
    /// Creates the families and registers them in `registry` under `filemr_grant`.
    pub fn new(registry: &mut Registry) -> GrantMetrics {
        let m = GrantMetrics {
            granted: Counter::default(),
            recalled: Counter::default(),
            returned: Family::default(),
            fenced: Counter::default(),
            retargeted: Counter::default(),
            rebound: Counter::default(),
            recall_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            scratch: Family::default(),
        };
        // Known label values at 0 from the start (see RegionMetrics).
        for when in ["in_time", "late", "unrecalled"] {
            let _ = m.returned.get_or_create(&vec![("when", when.to_string())]);
        }
        let _ = m.scratch.get_or_create(&vec![("backing", "repeated".to_string())]);
        let r = registry.sub_registry_with_prefix("filemr_grant");
        r.register("granted", "Grants (memory-window keys) made for peers", m.granted.clone());
        r.register("recalled", "Grants recalled because their lease broke", m.recalled.clone());
        r.register("returned", "Grants returned by their peer, by when", m.returned.clone());
        r.register("fenced", "Grants fenced (window invalidated)", m.fenced.clone());
        r.register("retargeted", "Grants retargeted to scratch memory", m.retargeted.clone());
        r.register("rebound", "Grants rebound to their rebuilt region", m.rebound.clone());
        r.register_with_unit(
            "recall",
            "Time from a recall to the peer's return",
            Unit::Seconds,
            m.recall_seconds.clone(),
        );
        r.register("scratch", "Scratch memory regions built, by backing", m.scratch.clone());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_names_follow_the_conventions() {
        let mut reg = Registry::default();
        let m = GrantMetrics::new(&mut reg);
        m.recalled.inc();
        m.fenced.inc();
        m.returned.get_or_create(&vec![("when", "in_time".to_string())]).inc();
        m.recall_seconds.observe(0.002);
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, &reg).unwrap();
        for want in [
            "filemr_grant_recalled_total 1",
            "filemr_grant_fenced_total 1",
            r#"filemr_grant_returned_total{when="in_time"} 1"#,
            "filemr_grant_recall_seconds_count 1",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
    }
}
