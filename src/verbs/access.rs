use rdma_sys::ibv_access_flags as F;

/// Memory access rights for a memory region or window (`IBV_ACCESS_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(u32);

impl Access {
    /// No rights beyond local read.
    pub const NONE: Access = Access(0);
    /// The local device may write into the memory (needed for RDMA READ targets, RECV).
    pub const LOCAL_WRITE: Access = Access(F::IBV_ACCESS_LOCAL_WRITE.0);
    /// Peers may RDMA WRITE into the memory (requires `LOCAL_WRITE`).
    pub const REMOTE_WRITE: Access = Access(F::IBV_ACCESS_REMOTE_WRITE.0);
    /// Peers may RDMA READ the memory.
    pub const REMOTE_READ: Access = Access(F::IBV_ACCESS_REMOTE_READ.0);
    /// Peers may run atomics on the memory.
    pub const REMOTE_ATOMIC: Access = Access(F::IBV_ACCESS_REMOTE_ATOMIC.0);
    /// Memory windows may be bound to the region.
    pub const MW_BIND: Access = Access(F::IBV_ACCESS_MW_BIND.0);
    /// On-Demand Paging: pages are faulted in by the device, nothing is pinned.
    pub const ON_DEMAND: Access = Access(F::IBV_ACCESS_ON_DEMAND.0);

    /// Both sets of rights (a `const` `|`).
    pub const fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    /// The rights named by raw `IBV_ACCESS_*` bits (unknown bits are kept).
    pub fn from_bits(bits: u32) -> Access {
        Access(bits)
    }

    /// The raw `IBV_ACCESS_*` bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the access lets the device write into the memory.
    pub fn is_writable(self) -> bool {
        self.0 & (Self::LOCAL_WRITE.0 | Self::REMOTE_WRITE.0 | Self::REMOTE_ATOMIC.0) != 0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Access {
    fn bitor_assign(&mut self, rhs: Access) {
        self.0 |= rhs.0;
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [(Access, &str); 6] = [
            (Access::LOCAL_WRITE, "LOCAL_WRITE"),
            (Access::REMOTE_WRITE, "REMOTE_WRITE"),
            (Access::REMOTE_READ, "REMOTE_READ"),
            (Access::REMOTE_ATOMIC, "REMOTE_ATOMIC"),
            (Access::MW_BIND, "MW_BIND"),
            (Access::ON_DEMAND, "ON_DEMAND"),
        ];
        let names: Vec<&str> =
            NAMES.iter().filter(|(a, _)| self.contains(*a)).map(|(_, n)| *n).collect();
        if names.is_empty() { f.write_str("NONE") } else { f.write_str(&names.join("|")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_match_verbs_header_values() {
        assert_eq!(Access::LOCAL_WRITE.bits(), 1);
        assert_eq!(Access::REMOTE_WRITE.bits(), 2);
        assert_eq!(Access::REMOTE_READ.bits(), 4);
        assert_eq!(Access::ON_DEMAND.bits(), 64);
        let rw = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
        assert!(rw.contains(Access::REMOTE_WRITE) && rw.is_writable());
        assert!(!Access::REMOTE_READ.is_writable());
        assert_eq!(format!("{rw:?}"), "LOCAL_WRITE|REMOTE_WRITE");
        assert_eq!(format!("{:?}", Access::NONE), "NONE");
    }
}
