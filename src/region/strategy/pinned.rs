//! Pinned file: the file mapping registered as a plain MR (the kernel pins the pages;
//! the lease keeps the file from changing under them).

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use super::BuildError;
use crate::region::config::Access;
use crate::sys::Mapping;
use crate::verbs::{MemoryRegion, ProtectionDomain};

pub(super) fn build(
    pd: &Arc<ProtectionDomain>,
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    access: Access,
) -> Result<(MemoryRegion, Arc<Mapping>), BuildError> {
    let map =
        Arc::new(Mapping::file(fd, offset, len, access.protection()).map_err(BuildError::Map)?);
    let mr = MemoryRegion::register(pd, &map, access.mr_access()).map_err(BuildError::Register)?;
    Ok((mr, map))
}
