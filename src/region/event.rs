//! Region events: a broadcast per manager, filtered per region on request.

use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::lease::GoneReason;

/// Why a region was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevokeReason {
    /// Another process opened or truncated the file: its lease broke.
    LeaseBroken,
    /// The kernel had broken the lease itself before the region was revoked.
    KernelForced,
}

impl RevokeReason {
    /// A short label (metrics).
    pub fn label(self) -> &'static str {
        match self {
            RevokeReason::LeaseBroken => "lease_broken",
            RevokeReason::KernelForced => "kernel_forced",
        }
    }
}

/// Why a region is gone for good.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The file shrank to or below the region's offset.
    Shrunk {
        /// The file's new length.
        file_len: u64,
    },
    /// The lease will not come back (file deleted, renamed, replaced...).
    LeaseGone(GoneReason),
    /// Rebuilding failed with every strategy.
    RebuildFailed(String),
    /// Committing what peers wrote failed before the lease was released: their bytes
    /// may not be in the file.
    CommitFailed(String),
    /// The RDMA device was removed (`rdma link delete`, a driver unbind): every region
    /// of the manager is given up, with what peers wrote committed, and the manager must
    /// be dropped so the device can go (see `docs/failure-modes.md`).
    DeviceGone {
        /// The device's name.
        device: String,
    },
}

impl LostReason {
    /// A short label (metrics).
    pub fn label(&self) -> &'static str {
        match self {
            LostReason::Shrunk { .. } => "shrunk",
            LostReason::LeaseGone(GoneReason::Deleted) => "deleted",
            LostReason::LeaseGone(_) => "lease_gone",
            LostReason::RebuildFailed(_) => "rebuild_failed",
            LostReason::CommitFailed(_) => "commit_failed",
            LostReason::DeviceGone { .. } => "device_gone",
        }
    }
}

/// What happened to a region.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegionEventKind {
    /// The lease broke: new guards are refused; the region is being quiesced.
    Revoking,
    /// Ask the peer holding `grant` to finish its outstanding work on the region, commit
    /// and return (then call [`Grant::returned`](crate::grant::Grant::returned)) before
    /// `deadline`; after it the grant is fenced or retargeted.
    Recall {
        /// The grant.
        grant: u64,
        /// The recall deadline (the lease's break deadline minus the safety margin).
        deadline: std::time::Instant,
    },
    /// The peer returned `grant`.
    Returned {
        /// The grant.
        grant: u64,
    },
    /// `grant` was not returned in time and is fenced: its key fails from now on.
    Fenced {
        /// The grant.
        grant: u64,
    },
    /// `grant` was not returned in time and now points at scratch memory.
    Retargeted {
        /// The grant.
        grant: u64,
    },
    /// `grant` is bound to the rebuilt region again with its old key: tell the peer.
    Available {
        /// The grant.
        grant: u64,
        /// The region's new generation.
        generation: u64,
        /// Bytes the peer may access now (shorter if the file shrank).
        len: usize,
    },
    /// The memory region is deregistered and the lease released.
    Revoked {
        /// Why.
        reason: RevokeReason,
        /// True when guards were still held at the deadline (or the kernel had already
        /// broken the lease): the region was deregistered under them.
        forced: bool,
        /// Time from the lease break to the lease's release.
        since_break: Duration,
        /// Why committing failed, if it did (then `Lost` follows).
        commit_error: Option<String>,
    },
    /// The region is registered again (grants are rebound next, see `Available`).
    Rebuilt {
        /// New local key.
        lkey: u32,
        /// The region's address (unchanged by rebuilds).
        addr: u64,
        /// Length now registered (shorter than before if the file shrank).
        len: usize,
        /// The new generation.
        generation: u64,
    },
    /// The device was removed and the manager keeps the region
    /// (`ManagerConfig::resume_on_device_return`): its registration is gone (what peers
    /// wrote was committed), its grants are fenced, guards are refused; it is `Rebuilt`
    /// when the device comes back. Drop the queue pairs and other objects on the device
    /// so its removal can finish.
    Suspended {
        /// The device's name.
        device: String,
    },
    /// The region is gone for good.
    Lost {
        /// Why.
        reason: LostReason,
    },
}

/// An event about one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEvent {
    /// The region.
    pub region: u64,
    /// What happened.
    pub kind: RegionEventKind,
    /// Wall-clock time it happened. For `Revoked`: when the region was torn down
    /// (committed, deregistered, unmapped), just before the lease was released, so it is
    /// earlier than anything the breaker does once its open or truncate returns.
    pub at: SystemTime,
}

/// A subscription to region events (all of a manager's, or one region's).
#[derive(Debug)]
pub struct RegionEvents {
    pub(crate) rx: broadcast::Receiver<RegionEvent>,
    pub(crate) only: Option<u64>,
    pub(crate) skipped: u64,
}

impl RegionEvents {
    /// Events this subscriber missed because it fell more than the channel's capacity
    /// (`ManagerConfig::event_capacity`) behind: 0 means it saw every event.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next event if one is buffered, without waiting: `Ok(None)` when none is;
    /// `Err(())` once the manager is gone. For callers outside the async runtime.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<RegionEvent>, ()> {
        loop {
            match self.rx.try_recv() {
                Ok(ev) if self.only.is_none_or(|id| id == ev.region) => return Ok(Some(ev)),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.skipped += n;
                    tracing::warn!(lost = n, "region event subscriber lagged");
                }
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Closed) => return Err(()),
            }
        }
    }

    /// The next event; `None` once the manager is gone. A subscriber that fell more than
    /// the channel's capacity behind skips the lost events (logged).
    pub async fn recv(&mut self) -> Option<RegionEvent> {
        loop {
            match self.rx.recv().await {
                Ok(ev) if self.only.is_none_or(|id| id == ev.region) => return Some(ev),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.skipped += n;
                    tracing::warn!(lost = n, "region event subscriber lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
