//! Prometheus metrics of the region layer, registered in a caller-supplied
//! [`Registry`](prometheus_client::registry::Registry) (no process-wide globals).
//!
//! Only the counters live here; serving them over HTTP is a later concern.

mod grant;
mod layout;
mod region;

pub use grant::GrantMetrics;
pub use layout::LayoutMetrics;
pub use region::{Labels, RegionMetrics};
