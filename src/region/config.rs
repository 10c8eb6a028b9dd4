//! Manager configuration and the access a region grants peers.

use std::time::Duration;

use crate::lease::LeaseKind;
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

    /// The memory-region access flags (without `ON_DEMAND`).
    pub fn mr_access(self) -> MrAccess {
        match self {
            Access::Read => MrAccess::REMOTE_READ,
            Access::Write => MrAccess::LOCAL_WRITE | MrAccess::REMOTE_WRITE,
            Access::ReadWrite => {
                MrAccess::LOCAL_WRITE | MrAccess::REMOTE_WRITE | MrAccess::REMOTE_READ
            }
        }
    }

    /// CPU protection of a file mapping for this access (read leases hold a read-only fd).
    pub(crate) fn protection(self) -> Protection {
        if self.is_writable() { Protection::ReadWrite } else { Protection::Read }
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
}

impl ManagerConfig {
    /// Defaults for `device`: port 1, a 500 ms safety margin, 65 536 buffered events.
    pub fn new(device: impl Into<String>) -> ManagerConfig {
        ManagerConfig {
            device: device.into(),
            port: 1,
            safety_margin: Duration::from_millis(500),
            event_capacity: 65_536,
        }
    }
}
