//! How a region's memory is registered: in place with ODP, in place pinned, or staged in
//! registered DRAM. Chosen per device, file system and access by [`probe`], never by
//! kernel version.

mod in_place;
pub(crate) mod probe;
mod staging;

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use super::config::Access;
use crate::sys::{AddressReservation, Mapping, SysError};
use crate::verbs::{MemoryRegion, ProtectionDomain, VerbsError};

/// A registration strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The file mapping registered with `IBV_ACCESS_ON_DEMAND`.
    Odp,
    /// The file mapping registered as a plain (pinned) MR.
    Pinned,
    /// Anonymous registered DRAM, filled from the file and written back on commit.
    Staging,
}

impl Strategy {
    /// A short label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Odp => "odp",
            Strategy::Pinned => "pinned",
            Strategy::Staging => "staging",
        }
    }
}

/// A probe's decision and why it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The strategy.
    pub strategy: Strategy,
    /// What each strategy tried did, in order, e.g.
    /// `odp: ...; pinned: ibv_reg_mr failed: EFAULT; staging: chosen`.
    pub reason: String,
    /// An in-place strategy that moves correct bytes only when every transfer is
    /// page-aligned (offset and length): what regions whose peers promise such I/O get
    /// instead of `strategy` (rxe ODP on 6.18 misplaces transfers off page boundaries).
    /// `None` when `strategy` needs no alignment or nothing better exists.
    pub aligned: Option<Strategy>,
}

impl Decision {
    /// The strategy for I/O aligned to `alignment` bytes at a file offset `offset`:
    /// [`Decision::aligned`] when both are multiples of the page size, `strategy`
    /// otherwise.
    pub fn for_alignment(&self, alignment: usize, offset: u64) -> Strategy {
        let page = crate::sys::page_size();
        match self.aligned {
            Some(s)
                if alignment >= page
                    && alignment.is_multiple_of(page)
                    && offset.is_multiple_of(page as u64) =>
            {
                s
            }
            _ => self.strategy,
        }
    }

    /// This decision as taken for one region: `strategy` is what the region uses for
    /// I/O aligned to `alignment` at `offset` (see [`Decision::for_alignment`]).
    pub(crate) fn for_region(mut self, alignment: usize, offset: u64) -> Decision {
        let chosen = self.for_alignment(alignment, offset);
        if chosen != self.strategy {
            self.reason = format!("{}; aligned I/O promised: {}", self.reason, chosen.label());
            self.strategy = chosen;
        }
        self
    }
}

/// A built registration: the MR and the memory it covers.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) mr: MemoryRegion,
    pub(crate) mapping: Arc<Mapping>,
    pub(crate) strategy: Strategy,
    /// Staging only: what the copy held when it last met the file.
    pub(crate) shadow: Option<staging::Shadow>,
}

/// Why building failed.
#[derive(Debug)]
pub(crate) enum BuildError {
    Map(SysError),
    Register(VerbsError),
    Io(&'static str, nix::errno::Errno),
}

/// Build `len` bytes at `offset` of the file behind `fd` with `strategy`, registered at
/// `iova` (a rebuild keeps the addresses peers know) or at the memory's own address.
pub(crate) fn build(
    strategy: Strategy,
    pd: &Arc<ProtectionDomain>,
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    access: Access,
    iova: Option<u64>,
) -> Result<Built, BuildError> {
    rebuild(strategy, pd, fd, offset, len, access, iova, None)
}

/// [`build`] of a rebuild: an ODP region maps the file into `reserved`, the placeholder
/// holding its predecessor's addresses (taken up whether or not the build succeeds).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rebuild(
    strategy: Strategy,
    pd: &Arc<ProtectionDomain>,
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    access: Access,
    iova: Option<u64>,
    reserved: Option<AddressReservation>,
) -> Result<Built, BuildError> {
    let ((mr, mapping), shadow) = match strategy {
        Strategy::Odp => {
            (in_place::build(pd, fd, offset, len, access, true, iova, reserved)?, None)
        }
        Strategy::Pinned => {
            (in_place::build(pd, fd, offset, len, access, false, iova, None)?, None)
        }
        Strategy::Staging => {
            let (mr, map, shadow) = staging::build(pd, fd, offset, len, access, iova)?;
            ((mr, map), Some(shadow))
        }
    };
    Ok(Built { mr, mapping, strategy, shadow })
}

/// Registers `map` at `iova`, or at its own address.
fn register(
    pd: &Arc<ProtectionDomain>,
    map: &Arc<Mapping>,
    access: crate::verbs::Access,
    iova: Option<u64>,
) -> Result<MemoryRegion, BuildError> {
    match iova {
        Some(iova) => MemoryRegion::register_at(pd, map, iova, access),
        None => MemoryRegion::register(pd, map, access),
    }
    .map_err(BuildError::Register)
}

/// Make bytes `start..end` of a built region durable in the file (in place: msync of
/// just those pages; staging: merged with the file, see `staging::write_back`).
pub(crate) fn commit(
    built: &Built,
    fd: BorrowedFd<'_>,
    offset: u64,
    (start, end): (usize, usize),
) -> Result<(), BuildError> {
    match (built.strategy, &built.shadow) {
        (Strategy::Staging, Some(shadow)) => {
            staging::write_back(&built.mapping, shadow, fd, offset, start, end)
        }
        // `msync(MS_SYNC)` of a shared file mapping is `fdatasync` of that range
        // (`vfs_fsync_range`): the range's pages written back, the file's metadata and
        // the device's cache flushed. A second `fdatasync` would flush again for nothing.
        _ => built.mapping.sync_range(start, end).map_err(BuildError::Map),
    }
}

/// `fdatasync` through `fd`.
pub(crate) fn fdatasync(fd: BorrowedFd<'_>) -> Result<(), BuildError> {
    nix::unistd::fdatasync(fd).map_err(|e| BuildError::Io("fdatasync", e))
}

/// The file's current length, `fstat` through `fd` (the lease's: no new open).
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> Result<u64, BuildError> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| BuildError::Io("fstat", e))?;
    Ok(st.st_size as u64)
}
