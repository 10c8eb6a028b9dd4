//! The region manager: file ranges registered as RDMA memory regions, revoked when
//! their file's lease breaks and rebuilt when it comes back.
//!
//! A [`Manager`] owns the device's protection domain and the process's
//! [`LeaseEngine`](crate::lease::LeaseEngine). [`Manager::register`] leases the file,
//! picks a [`Strategy`] by probing the file system (ODP, pinned file mapping, or staging
//! in registered DRAM; see [`Decision`]) and registers the range as a [`Region`]. The
//! server takes a [`Guard`] from [`Region::guard`] (lock-free) while it has work posted
//! against the region. On a lease break the manager refuses new guards, waits for held
//! ones until the break's deadline minus [`ManagerConfig::safety_margin`], commits,
//! deregisters, unmaps and releases the lease ([`RegionEventKind::Revoked`]); when the
//! lease is back it re-maps and re-registers ([`RegionEventKind::Rebuilt`], new keys,
//! next generation) or gives the region up ([`RegionEventKind::Lost`]). See
//! `docs/region.md`.

mod budget;
mod config;
mod error;
mod event;
mod flow;
mod guard;
mod handle;
mod lease_events;
mod manager;
mod state;
mod strategy;

pub use config::{Access, ManagerConfig, RevocationMode};
pub use error::RegionError;
pub use event::{LostReason, RegionEvent, RegionEventKind, RegionEvents, RevokeReason};
pub use guard::{Guard, GuardError, GuardWord, fast_guards};
pub use handle::{GuardResult, Region, RegionInfo};
pub use manager::{EventHook, Manager};
pub use state::RegionState;
pub use strategy::{Decision, Strategy};

pub(crate) use handle::RegionShared;
pub(crate) use manager::ManagerInner;
