//! Prometheus metrics, registered in a caller-supplied
//! [`Registry`](prometheus_client::registry::Registry) (no process-wide globals). Names
//! start with `filemr_`; times and sizes are declared in their base unit (seconds, bytes);
//! no label carries a path, key or id. Serving them is the caller's (the daemon serves
//! `/metrics`).

mod grant;
mod layout;
mod region;

pub use grant::GrantMetrics;
pub use layout::LayoutMetrics;
pub use region::{Labels, RegionMetrics};

use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Registers `filemr_build_info{version}` (always 1): which filemr a scrape came from.
pub fn register_build_info(registry: &mut Registry) {
    let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]);
    registry.register("filemr_build", "The filemr build", info);
}
