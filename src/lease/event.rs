//! What the engine reports: events, release reports and counters.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::FileId;

/// Why a lease ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GoneReason {
    /// The file's last link was removed.
    Deleted,
    /// The file was renamed away from the path it was leased under.
    Renamed,
    /// Another file now sits at the path the lease was taken under.
    Replaced,
    /// Reacquiring failed with an error other than `EAGAIN` (the errno is logged).
    ReacquireFailed,
}

/// An event of the lease engine. Every break is reported exactly once as
/// [`LeaseEvent::Broken`]; the other events follow the lease's life after it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LeaseEvent {
    /// Another process wants the file: quiesce, then call
    /// [`LeaseEngine::release`](super::LeaseEngine::release) before `deadline`.
    Broken {
        /// The file.
        file: FileId,
        /// The path it was leased under.
        path: Arc<Path>,
        /// When the break thread saw the break.
        arrived: Instant,
        /// `arrived` plus `/proc/sys/fs/lease-break-time` read at arrival: after it the
        /// kernel breaks the lease itself.
        deadline: Instant,
        /// True when the break was found by an `F_GETLEASE` rescan (signal queue
        /// overflow) rather than routed by its signal.
        via_rescan: bool,
    },
    /// Nobody released in time and the kernel broke the lease itself (seen by the
    /// deadline timer; a release that finds the lease already gone says so in its
    /// [`ReleaseReport`](super::ReleaseReport) instead).
    Forced {
        /// The file.
        file: FileId,
        /// The path it was leased under.
        path: Arc<Path>,
        /// When the break had arrived.
        arrived: Instant,
        /// When the engine saw the lease gone.
        detected: Instant,
    },
    /// The lease is held again after a release (the breaker is done).
    Reacquired {
        /// The file.
        file: FileId,
        /// The path it was leased under.
        path: Arc<Path>,
        /// Time from the release to the new lease.
        after_release: Duration,
        /// `F_SETLEASE` attempts it took.
        attempts: u32,
    },
    /// The lease will not come back.
    Gone {
        /// The file.
        file: FileId,
        /// The path it was leased under.
        path: Arc<Path>,
        /// Why.
        reason: GoneReason,
    },
}

impl LeaseEvent {
    /// The file the event is about.
    pub fn file(&self) -> FileId {
        match self {
            LeaseEvent::Broken { file, .. }
            | LeaseEvent::Forced { file, .. }
            | LeaseEvent::Reacquired { file, .. }
            | LeaseEvent::Gone { file, .. } => *file,
        }
    }
}

/// What [`LeaseEngine::release`](super::LeaseEngine::release) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseReport {
    /// Time from the break's arrival to the release.
    pub since_break: Duration,
    /// True when the kernel had already broken the lease (the deadline had passed).
    pub forced: bool,
}

/// Counters of the engine (see [`LeaseEngine::stats`](super::LeaseEngine::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Leases currently held (distinct files).
    pub leases: usize,
    /// Lease signals that named their fd, since this engine started.
    pub signals: u64,
    /// Lease signals of those handled on the engine's break thread, which they are
    /// directed at (`F_SETOWN_EX`): the rest reached another thread (a break in the
    /// moment between taking a lease and directing it) and went through the pipe.
    pub direct_signals: u64,
    /// Plain `SIGIO`s or fd-less lease signals since this engine started: the
    /// queue-overflow path.
    pub overflow_signals: u64,
    /// Times the handler found the self-pipe full since this engine started; a rescan
    /// covers them.
    pub pipe_full: u64,
    /// `F_GETLEASE` rescans of all leases this engine ran.
    pub rescans: u64,
    /// Breaks delivered as [`LeaseEvent::Broken`].
    pub breaks: u64,
    /// Breaks of those found by a rescan.
    pub breaks_via_rescan: u64,
    /// Break notifications ignored because the break was already delivered (or was
    /// stale: no break pending on `F_GETLEASE`).
    pub duplicates: u64,
    /// Forced breaks detected.
    pub forced: u64,
    /// Leases reacquired.
    pub reacquired: u64,
}

/// A subscription to the engine's events (unbounded: no event is dropped while the
/// subscription lives). Events emitted before `subscribe` are not replayed.
#[derive(Debug)]
pub struct LeaseEvents {
    pub(crate) rx: mpsc::UnboundedReceiver<LeaseEvent>,
}

impl LeaseEvents {
    /// The next event; `None` once the engine is gone.
    pub async fn recv(&mut self) -> Option<LeaseEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<LeaseEvent> {
        self.rx.try_recv().ok()
    }
}
