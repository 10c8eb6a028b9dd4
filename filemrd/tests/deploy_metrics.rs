//! Every metric the Grafana dashboard and the Prometheus rules in `deploy/` use is one the
//! daemon really exports (same families, registered the way the daemon registers them).

use std::collections::BTreeSet;

use prometheus_client::registry::Registry;

/// Metric family names the daemon exports (from `# TYPE` lines).
fn exported() -> BTreeSet<String> {
    let mut registry = Registry::default();
    filemr::metrics::register_build_info(&mut registry);
    let region = filemr::metrics::RegionMetrics::new(&mut registry);
    // The one family whose labels are all open-ended (errno names): give it a series.
    filemr::metrics::RegionMetrics::count(&region.registration_failures, "errno", "EIO");
    // Guard refusals are created by the manager, not by the families' constructor.
    filemr::metrics::RegionMetrics::count(&region.guard_refusals, "why", "revoking");
    filemr::metrics::GrantMetrics::new(&mut registry);
    filemr::metrics::LayoutMetrics::new(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// `filemr_...` metric names used in `text` (recording rules, with a `:`, excluded).
fn used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("filemr_") {
        let start = i + at;
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        let name = &text[start..end];
        if boundary && !name.contains(':') {
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

fn family(name: &str, families: &BTreeSet<String>) -> bool {
    families.contains(name)
        || ["_total", "_bucket", "_count", "_sum", "_info"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|base| families.contains(base)))
}

#[test]
fn dashboard_and_rules_name_only_exported_metrics() {
    let families = exported();
    assert!(families.contains("filemr_region_revocation_seconds"), "{families:?}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["deploy/grafana/filemr.json", "deploy/prometheus/filemr.rules.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = used(&text);
        assert!(!names.is_empty(), "{file} uses no filemr metric");
        let unknown: Vec<&String> = names.iter().filter(|n| !family(n, &families)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics filemrd does not export: {unknown:?}\nexported: {families:?}"
        );
    }
}
