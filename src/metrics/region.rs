//! The region manager's metric families.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label set: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// The region manager's metrics. Cheap to clone (every metric is an `Arc` inside), so
/// the manager and its background tasks share one set.
#[derive(Debug, Clone)]
pub struct RegionMetrics {
    /// Regions by `strategy` and `state` (registered, revoking, revoked, lost).
    pub regions: Family<Labels, Gauge>,
    /// Bytes currently registered, by `strategy`.
    pub registered_bytes: Family<Labels, Gauge>,
    /// Revocations by `reason` and `forced`.
    pub revocations: Family<Labels, Counter>,
    /// Seconds from a lease break's arrival to the lease's release.
    pub revocation_seconds: Histogram,
    /// Seconds a region's rebuild took (map, register at the old address, rebind the
    /// grants), once its lease was back.
    pub rebuild_seconds: Histogram,
    /// Seconds a successful registration took (lease, probe, map, register).
    pub registration_seconds: Histogram,
    /// Regions rebuilt after their lease came back, by `strategy`.
    pub rebuilds: Family<Labels, Counter>,
    /// Regions lost for good, by `reason`.
    pub lost: Family<Labels, Counter>,
    /// Guards refused, by `why` (revoking, revoked).
    pub guard_refusals: Family<Labels, Counter>,
    /// Registrations that failed, by `errno` (symbolic name, e.g. `EAGAIN`).
    pub registration_failures: Family<Labels, Counter>,
    /// Registrations whose lease broke while they were being built (torn down and
    /// failed with `Busy`, or handed to the revocation under way).
    pub registration_breaks: Counter,
    /// Commits before a lease release that failed (the region is then lost).
    pub commit_failures: Counter,
    /// The series of `regions`, by strategy and state (`STRATEGIES` x `STATES`): a state
    /// change on the revocation's path is two atomic adds, no label lookup.
    state_series: Vec<Gauge>,
}

const STRATEGIES: [&str; 3] = ["odp", "pinned", "staging"];
const STATES: [&str; 5] = ["registered", "revoking", "revoked", "rebuilding", "lost"];

impl RegionMetrics {
    /// Creates the families and registers them in `registry` under the prefix
    /// `filemr_region`.
    pub fn new(registry: &mut Registry) -> RegionMetrics {
        let m = RegionMetrics {
            regions: Family::default(),
            registered_bytes: Family::default(),
            revocations: Family::default(),
            revocation_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            rebuild_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            registration_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            rebuilds: Family::default(),
            lost: Family::default(),
            guard_refusals: Family::default(),
            registration_failures: Family::default(),
            registration_breaks: Counter::default(),
            commit_failures: Counter::default(),
            state_series: Vec::new(),
        };
        m.precreate();
        let series = STRATEGIES
            .iter()
            .flat_map(|st| STATES.iter().map(move |s| (st, s)))
            .map(|(st, s)| m.regions.get_or_create(&state(st, s)).clone())
            .collect();
        let m = RegionMetrics { state_series: series, ..m };
        let r = registry.sub_registry_with_prefix("filemr_region");
        r.register("regions", "Regions by strategy and state", m.regions.clone());
        r.register_with_unit(
            "registered",
            "Bytes registered as memory regions, by strategy",
            Unit::Bytes,
            m.registered_bytes.clone(),
        );
        r.register(
            "revocations",
            "Region revocations by reason and whether they were forced",
            m.revocations.clone(),
        );
        r.register_with_unit(
            "revocation",
            "Time from a lease break to the lease's release",
            Unit::Seconds,
            m.revocation_seconds.clone(),
        );
        r.register_with_unit(
            "rebuild",
            "Time a region's rebuild took once its lease was back",
            Unit::Seconds,
            m.rebuild_seconds.clone(),
        );
        r.register_with_unit(
            "registration",
            "Time a successful registration took",
            Unit::Seconds,
            m.registration_seconds.clone(),
        );
        r.register("rebuilds", "Regions rebuilt after their lease came back", m.rebuilds.clone());
        r.register("lost", "Regions lost for good, by reason", m.lost.clone());
        r.register(
            "guard_refusals",
            "Guards refused because the region was revoking or revoked",
            m.guard_refusals.clone(),
        );
        r.register(
            "registration_failures",
            "Failed registrations by errno",
            m.registration_failures.clone(),
        );
        r.register(
            "registration_breaks",
            "Registrations whose lease broke while they were being built",
            m.registration_breaks.clone(),
        );
        r.register(
            "commit_failures",
            "Commits before a lease release that failed (the region is lost)",
            m.commit_failures.clone(),
        );
        m
    }

    /// Moves one region of `bytes` bytes from state `from` to state `to` (either may be
    /// `None`: appearing or disappearing).
    pub fn region_state(&self, strategy: &str, from: Option<&str>, to: Option<&str>) {
        if let Some(from) = from {
            self.state_series(strategy, from).dec();
        }
        if let Some(to) = to {
            self.state_series(strategy, to).inc();
        }
    }

    fn state_series(&self, strategy: &str, st: &str) -> Gauge {
        let i = STRATEGIES.iter().position(|s| *s == strategy);
        let j = STATES.iter().position(|s| *s == st);
        match (i, j) {
            (Some(i), Some(j)) => self.state_series[i * STATES.len() + j].clone(),
            _ => self.regions.get_or_create(&state(strategy, st)).clone(),
        }
    }

    /// Creates every series whose labels are known in advance at 0, so that they are
    /// exported from the start and `increase()` sees their first event. (`errno` labels
    /// appear with their first failure.) The values mirror the `label()`s of
    /// `Strategy`, `RegionState`, `RevokeReason` and `LostReason`.
    fn precreate(&self) {
        for strategy in STRATEGIES {
            for st in STATES {
                let _ = self.regions.get_or_create(&state(strategy, st));
            }
            let _ = self.registered_bytes.get_or_create(&vec![("strategy", strategy.to_string())]);
            let _ = self.rebuilds.get_or_create(&vec![("strategy", strategy.to_string())]);
        }
        for reason in ["lease_broken", "kernel_forced"] {
            for forced in ["true", "false"] {
                let _ = self.revocations.get_or_create(&vec![
                    ("reason", reason.to_string()),
                    ("forced", forced.to_string()),
                ]);
            }
        }
        for reason in
            ["shrunk", "deleted", "lease_gone", "rebuild_failed", "commit_failed", "device_gone"]
        {
            let _ = self.lost.get_or_create(&vec![("reason", reason.to_string())]);
        }
    }

    /// Adds (or, negative, removes) registered bytes of `strategy`.
    pub fn bytes(&self, strategy: &str, delta: i64) {
        self.registered_bytes
            .get_or_create(&vec![("strategy", strategy.to_string())])
            .inc_by(delta);
    }

    /// Counts a revocation.
    pub fn revoked(&self, reason: &str, forced: bool, seconds: f64) {
        self.revocations
            .get_or_create(&vec![("reason", reason.to_string()), ("forced", forced.to_string())])
            .inc();
        self.revocation_seconds.observe(seconds);
    }

    /// Counts one label-value occurrence in `family` under the label `key`.
    pub fn count(family: &Family<Labels, Counter>, key: &'static str, value: &str) {
        family.get_or_create(&vec![(key, value.to_string())]).inc();
    }
}

fn state(strategy: &str, state: &str) -> Labels {
    vec![("strategy", strategy.to_string()), ("state", state.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn encoded_text_has_the_values_after_operations() {
        let mut reg = Registry::default();
        let m = RegionMetrics::new(&mut reg);
        m.region_state("staging", None, Some("registered"));
        m.region_state("staging", None, Some("registered"));
        m.region_state("staging", Some("registered"), Some("revoking"));
        m.bytes("staging", 65536);
        m.revoked("lease_broken", true, 0.003);
        RegionMetrics::count(&m.guard_refusals, "why", "revoking");
        RegionMetrics::count(&m.registration_failures, "errno", "EAGAIN");
        RegionMetrics::count(&m.registration_failures, "errno", "EAGAIN");
        RegionMetrics::count(&m.lost, "reason", "shrunk");
        RegionMetrics::count(&m.rebuilds, "strategy", "pinned");
        let t = text(&reg);
        for want in [
            r#"filemr_region_regions{strategy="staging",state="registered"} 1"#,
            r#"filemr_region_regions{strategy="staging",state="revoking"} 1"#,
            r#"filemr_region_registered_bytes{strategy="staging"} 65536"#,
            r#"filemr_region_revocations_total{reason="lease_broken",forced="true"} 1"#,
            "filemr_region_revocation_seconds_count 1",
            r#"filemr_region_guard_refusals_total{why="revoking"} 1"#,
            r#"filemr_region_registration_failures_total{errno="EAGAIN"} 2"#,
            r#"filemr_region_lost_total{reason="shrunk"} 1"#,
            r#"filemr_region_rebuilds_total{strategy="pinned"} 1"#,
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
    }
}
