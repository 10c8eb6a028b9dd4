//! The lease engine: Linux file leases that protect registered files.
//!
//! A [`LeaseEngine`] takes read or write leases ([`LeaseKind`]) on files, shares one
//! lease (one fd) between all acquisitions of the same file ([`FileId`]), and reports
//! through [`LeaseEngine::subscribe`] when another process wants a file
//! ([`LeaseEvent::Broken`], with the kernel's deadline), when the kernel broke a lease
//! nobody released in time ([`LeaseEvent::Forced`]), when a released lease is back
//! after its breaker finished ([`LeaseEvent::Reacquired`]) and when it will not come
//! back ([`LeaseEvent::Gone`]).
//!
//! One engine runs per process: the break signal's handler is process-wide. See
//! `docs/lease.md` for the design.

mod break_thread;
mod config;
mod engine;
mod entry;
mod error;
mod event;
mod file_id;
mod reacquire;

pub use config::{EngineConfig, LEASE_BREAK_TIME, LEASES_ENABLE, lease_break_time, leases_enabled};
pub use engine::LeaseEngine;
pub use entry::{Lease, LeaseKind, LeaseState};
pub use error::{LeaseError, LeaseResult};
pub use event::{EngineStats, GoneReason, LeaseEvent, LeaseEvents, ReleaseReport};
pub use file_id::FileId;

#[cfg(test)]
mod tests;
