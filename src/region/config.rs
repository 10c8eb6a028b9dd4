//! Manager configuration and the access a region grants peers.

use std::time::Duration;

use crate::lease::{EngineConfig, LeaseKind};
use crate::sys::Protection;
use crate::verbs::Access as MrAccess;

/// What peers may do with a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Peers RDMA READ the region. The file is protected by a read lease.
    Read,
    /// Peers RDMA WRITE the region. The file is protected by a write lease.
    Write,
    /// Both. Write lease.
    ReadWrite,
}

impl Access {
    /// Whether peers may write.
    pub fn is_writable(self) -> bool {
        !matches!(self, Access::Read)
    }

    /// Whether peers may read.
    pub fn is_readable(self) -> bool {
        !matches!(self, Access::Write)
    }

    pub(crate) fn lease_kind(self) -> LeaseKind {
        if self.is_writable() { LeaseKind::Write } else { LeaseKind::Read }
    }

    /// The access flags of a region's memory region (without `ON_DEMAND`): no remote
    /// rights at all (peers reach the region only through memory windows, see
    /// [`Access::mw_access`]), `MW_BIND`, and `LOCAL_WRITE` when peers may write (a
    /// writable window needs it on the region below).
    pub fn mr_access(self) -> MrAccess {
        if self.is_writable() {
            MrAccess::MW_BIND | MrAccess::LOCAL_WRITE
        } else {
            MrAccess::MW_BIND
        }
    }

    /// The remote rights of the memory windows granted to peers.
    pub fn mw_access(self) -> MrAccess {
        match self {
            Access::Read => MrAccess::REMOTE_READ,
            Access::Write => MrAccess::REMOTE_WRITE,
            Access::ReadWrite => MrAccess::REMOTE_WRITE | MrAccess::REMOTE_READ,
        }
    }

    /// CPU protection of a file mapping for this access (read leases hold a read-only fd).
    pub(crate) fn protection(self) -> Protection {
        if self.is_writable() { Protection::ReadWrite } else { Protection::Read }
    }
}

/// What revocation does to a grant whose peer did not return it by the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationMode {
    /// Invalidate the grant's memory window: the peer's next access with its key fails
    /// with a remote access error (and, RC being RC, its queue pair goes to the error
    /// state). The grant stays fenced: the peer needs a new one.
    Fence,
    /// Rebind the grant's window, same key and addresses, to scratch memory: the peer
    /// sees no error, its writes land in scratch and its reads return scratch bytes
    /// until the region is rebuilt, when the same key reaches the file again.
    Retarget,
}

impl RevocationMode {
    /// A short label (metrics).
    pub fn label(self) -> &'static str {
        match self {
            RevocationMode::Fence => "fence",
            RevocationMode::Retarget => "retarget",
        }
    }
}

/// How a [`Manager`](super::Manager) is set up.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// RDMA device name, e.g. `rxe0`.
    pub device: String,
    /// Port used by the functional strategy probe's loopback queue pairs.
    pub port: u8,
    /// Revocation gives up waiting for guards this long before the kernel's lease
    /// deadline, to leave time to commit, deregister and release.
    pub safety_margin: Duration,
    /// Capacity of the event broadcast channel (a slow subscriber that falls further
    /// behind loses events and is told how many).
    pub event_capacity: usize,
    /// What happens to grants not returned by the recall deadline.
    pub revocation: RevocationMode,
    /// RAM one region's scratch memory costs at most (retarget mode): one chunk of this
    /// size is mapped again and again over the region's length.
    pub scratch_chunk: usize,
    /// Register file mappings in place (ODP or pinned) where the probe finds it works;
    /// `false`: always stage in registered DRAM (no file page is ever pinned or faulted
    /// in by the device; every peer write reaches the file through a commit).
    pub in_place: bool,
    /// Bytes of locked memory (pinned and staging regions; ODP locks none) the manager's
    /// regions may hold at once: a registration beyond it is refused up front with
    /// [`RegionError::MemlockBudget`](super::RegionError::MemlockBudget), before anything
    /// is leased or registered. `None`: no budget of filemr's own (the kernel's
    /// `RLIMIT_MEMLOCK` still applies, and `ibv_reg_mr` fails with `ENOMEM` beyond it:
    /// [`RegionError::MemlockLimit`](super::RegionError::MemlockLimit)). Set it at or
    /// below `RLIMIT_MEMLOCK` minus what the application locks itself. Scratch memory of
    /// retargeted grants is not counted.
    pub memlock_budget: Option<u64>,
    /// The lease engine's settings, among them its break signal
    /// (`SIGRTMIN + rt_signal_offset`, which must be free in the process).
    pub lease: EngineConfig,
    /// How long [`Manager::new`](super::Manager::new) waits for `device` to appear when it
    /// is missing (a device being re-added, a driver still loading) before failing with
    /// `ENODEV`. Zero: fail at once.
    pub device_wait: Duration,
    /// How often the manager checks that its device still exists (`ibv_get_device_list`,
    /// from which a device being deleted disappears at once). When it is gone every region
    /// is lost ([`LostReason::DeviceGone`](super::LostReason::DeviceGone)), its grants
    /// fenced and what peers wrote committed; the manager then refuses registrations and
    /// must be dropped so the deletion can finish (unless `resume_on_device_return`).
    /// Zero: never check.
    pub device_poll: Duration,
    /// When the device is removed, keep the regions (suspended: registrations, grants and
    /// the device context released so the removal can finish; leases kept) and rebuild
    /// them when a device of the same name comes back (`Rebuilt`: same addresses, new
    /// keys; grant again on new queue pairs). Only for a manager that opened its device
    /// itself ([`Manager::new`](crate::region::Manager::new)); otherwise, and by
    /// default, every region is lost.
    pub resume_on_device_return: bool,
}

impl ManagerConfig {
    /// Defaults for `device`: port 1, a 500 ms safety margin, 65 536 buffered events,
    /// fence on the deadline, 1 MiB scratch chunks, in-place strategies allowed, no memlock
    /// budget, no wait for a missing device, a device check every 500 ms.
    pub fn new(device: impl Into<String>) -> ManagerConfig {
        ManagerConfig {
            device: device.into(),
            port: 1,
            safety_margin: Duration::from_millis(500),
            event_capacity: 65_536,
            revocation: RevocationMode::Fence,
            scratch_chunk: 1 << 20,
            in_place: true,
            memlock_budget: None,
            lease: EngineConfig::default(),
            device_wait: Duration::ZERO,
            device_poll: Duration::from_millis(500),
            resume_on_device_return: false,
        }
    }
}
