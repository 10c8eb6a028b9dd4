//! Region events for C: a queue per manager and an eventfd that is readable while the
//! queue holds events, so a server's epoll loop wakes for them without callbacks from
//! foreign threads.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Instant, UNIX_EPOCH};

use filemr_core::lease::GoneReason;
use filemr_core::region::{LostReason, RegionEvent, RegionEventKind};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;

/// The lease broke: new guards are refused, the region is being quiesced.
pub const FILEMR_EVENT_REVOKING: u32 = 1;
/// Ask the peer holding `grant` to finish, commit and return by `deadline_ms`; then call
/// `filemr_grant_returned`.
pub const FILEMR_EVENT_RECALL: u32 = 2;
/// The peer returned `grant` (`filemr_grant_returned` was called).
pub const FILEMR_EVENT_RETURNED: u32 = 3;
/// `grant` was not returned in time and is fenced: its key fails from now on.
pub const FILEMR_EVENT_FENCED: u32 = 4;
/// `grant` was not returned in time and now points at scratch memory.
pub const FILEMR_EVENT_RETARGETED: u32 = 5;
/// The region is deregistered and the lease released (`forced`: guards or grants were
/// still active at the deadline; `commit_failed`: what peers wrote may be missing).
pub const FILEMR_EVENT_REVOKED: u32 = 6;
/// The region is registered again at the same address (`generation`, `len`, `lkey`).
pub const FILEMR_EVENT_REBUILT: u32 = 7;
/// `grant` is bound again with the same key: tell its peer to resume.
pub const FILEMR_EVENT_AVAILABLE: u32 = 8;
/// The region is gone for good (`lost_reason`): free it.
pub const FILEMR_EVENT_LOST: u32 = 9;
/// The device went away and the region waits for it (`FILEMR_RESUME`): grants fenced,
/// nothing registered; `FILEMR_EVENT_REBUILT` follows when the device is back.
pub const FILEMR_EVENT_SUSPENDED: u32 = 10;

/// `lost_reason`: the file shrank below the region.
pub const FILEMR_LOST_SHRUNK: u32 = 1;
/// `lost_reason`: the file was deleted.
pub const FILEMR_LOST_DELETED: u32 = 2;
/// `lost_reason`: the lease could not be taken again.
pub const FILEMR_LOST_LEASE_GONE: u32 = 3;
/// `lost_reason`: registering again failed.
pub const FILEMR_LOST_REBUILD_FAILED: u32 = 4;
/// `lost_reason`: committing before the release failed.
pub const FILEMR_LOST_COMMIT_FAILED: u32 = 5;
/// `lost_reason`: the RDMA device was removed; close the manager so the removal finishes.
pub const FILEMR_LOST_DEVICE_GONE: u32 = 6;

/// One region event. Fields a kind does not use are 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct filemr_event {
    /// `FILEMR_EVENT_*`.
    pub kind: u32,
    /// `FILEMR_LOST_*` for `FILEMR_EVENT_LOST`.
    pub lost_reason: u32,
    /// The region's id (`filemr_region_get_info`).
    pub region: u64,
    /// The grant's id (`filemr_grant_get_info`) for RECALL, RETURNED, FENCED, RETARGETED and
    /// AVAILABLE.
    pub grant: u64,
    /// The region's generation (REBUILT, AVAILABLE).
    pub generation: u64,
    /// The region's length in bytes (REBUILT, AVAILABLE).
    pub len: u64,
    /// The region's address (REBUILT).
    pub addr: u64,
    /// The region's new local key (REBUILT).
    pub lkey: u32,
    /// REVOKED: the revocation was forced.
    pub forced: bool,
    /// REVOKED: committing failed.
    pub commit_failed: bool,
    /// RECALL: milliseconds left until the recall deadline when the event was queued.
    pub deadline_ms: u64,
    /// REVOKED: microseconds from the lease break to its release.
    pub since_break_us: u64,
    /// When it happened, in microseconds since the Unix epoch.
    pub at_us: u64,
}

impl filemr_event {
    fn from_region(ev: &RegionEvent) -> filemr_event {
        let mut c = filemr_event {
            region: ev.region,
            at_us: ev.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64),
            ..Default::default()
        };
        match &ev.kind {
            RegionEventKind::Revoking => c.kind = FILEMR_EVENT_REVOKING,
            RegionEventKind::Recall { grant, deadline } => {
                c.kind = FILEMR_EVENT_RECALL;
                c.grant = *grant;
                c.deadline_ms =
                    deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
            }
            RegionEventKind::Returned { grant } => {
                (c.kind, c.grant) = (FILEMR_EVENT_RETURNED, *grant)
            }
            RegionEventKind::Fenced { grant } => (c.kind, c.grant) = (FILEMR_EVENT_FENCED, *grant),
            RegionEventKind::Retargeted { grant } => {
                (c.kind, c.grant) = (FILEMR_EVENT_RETARGETED, *grant)
            }
            RegionEventKind::Available { grant, generation, len } => {
                (c.kind, c.grant, c.generation, c.len) =
                    (FILEMR_EVENT_AVAILABLE, *grant, *generation, *len as u64)
            }
            RegionEventKind::Revoked { forced, since_break, commit_error, .. } => {
                c.kind = FILEMR_EVENT_REVOKED;
                c.forced = *forced;
                c.commit_failed = commit_error.is_some();
                c.since_break_us = since_break.as_micros() as u64;
            }
            RegionEventKind::Rebuilt { lkey, addr, len, generation } => {
                (c.kind, c.lkey, c.addr, c.len, c.generation) =
                    (FILEMR_EVENT_REBUILT, *lkey, *addr, *len as u64, *generation)
            }
            RegionEventKind::Lost { reason } => {
                c.kind = FILEMR_EVENT_LOST;
                c.lost_reason = match reason {
                    LostReason::Shrunk { .. } => FILEMR_LOST_SHRUNK,
                    LostReason::LeaseGone(GoneReason::Deleted) => FILEMR_LOST_DELETED,
                    LostReason::LeaseGone(_) => FILEMR_LOST_LEASE_GONE,
                    LostReason::RebuildFailed(_) => FILEMR_LOST_REBUILD_FAILED,
                    LostReason::CommitFailed(_) => FILEMR_LOST_COMMIT_FAILED,
                    LostReason::DeviceGone { .. } => FILEMR_LOST_DEVICE_GONE,
                    _ => 0,
                };
            }
            RegionEventKind::Suspended { .. } => c.kind = FILEMR_EVENT_SUSPENDED,
            _ => {}
        }
        c
    }
}

/// A manager's queue of events for C and its eventfd.
pub(crate) struct EventQueue {
    fd: EventFd,
    queue: Mutex<VecDeque<filemr_event>>,
}

impl EventQueue {
    pub(crate) fn new() -> nix::Result<EventQueue> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(EventQueue { fd, queue: Mutex::new(VecDeque::new()) })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// Queues `ev` and makes the fd readable.
    pub(crate) fn push(&self, ev: &RegionEvent) {
        let mut q = self.queue.lock();
        q.push_back(filemr_event::from_region(ev));
        if let Err(e) = self.fd.write(1) {
            // One write per event cannot overflow the counter; say so if it ever fails.
            tracing::warn!(error = %e, "eventfd write failed");
        }
    }

    /// The oldest event; the fd stops being readable when the queue is empty.
    pub(crate) fn pop(&self) -> Option<filemr_event> {
        let mut q = self.queue.lock();
        let ev = q.pop_front();
        if q.is_empty() {
            // Non-blocking: EAGAIN when the counter is already 0.
            let _ = self.fd.read();
        }
        ev
    }
}
