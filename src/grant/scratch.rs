//! Scratch memory for retargeted grants: registered at the region's addresses, costing at
//! most `ManagerConfig::scratch_chunk` bytes of RAM however long the region is.

use std::sync::Arc;

use crate::sys::{Mapping, SysError, page_offset};
use crate::verbs::{Access, MemoryRegion, ProtectionDomain, VerbsError};

/// Why scratch could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScratchError {
    #[error(transparent)]
    Map(#[from] SysError),
    #[error(transparent)]
    Register(#[from] VerbsError),
}

/// A memory region of `len` bytes at `iova` over one repeated chunk of shared memory
/// (see [`Mapping::scratch`]), writable by windows bound to it.
pub(crate) fn build(
    pd: &Arc<ProtectionDomain>,
    iova: u64,
    len: usize,
    chunk: usize,
) -> Result<MemoryRegion, ScratchError> {
    let map = Arc::new(Mapping::scratch(page_offset(iova), len, chunk)?);
    Ok(MemoryRegion::register_at(pd, &map, iova, Access::LOCAL_WRITE | Access::MW_BIND)?)
}
