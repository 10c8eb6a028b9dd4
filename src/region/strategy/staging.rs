//! Staging: anonymous registered DRAM, filled from the file at build and written back
//! (pwrite + fdatasync through the lease's fd) on commit and before release.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use super::BuildError;
use crate::region::config::Access;
use crate::sys::{Mapping, SysError, page_offset};
use crate::verbs::{MemoryRegion, ProtectionDomain};

/// Bytes copied per pread/pwrite.
const CHUNK: usize = 1 << 20;

/// A failed pread/pwrite as the I/O error it is (`op` and its errno).
fn sys_io(op: &'static str) -> impl Fn(SysError) -> BuildError {
    move |e| BuildError::Io(op, e.errno)
}

pub(super) fn build(
    pd: &Arc<ProtectionDomain>,
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    access: Access,
    iova: Option<u64>,
) -> Result<(MemoryRegion, Arc<Mapping>), BuildError> {
    // Registered at `iova`, the memory must sit at the same offset into its page.
    let head = iova.map_or(0, page_offset);
    let map = Arc::new(Mapping::anonymous_at_offset(head, len).map_err(BuildError::Map)?);
    // One copy: pread straight into the registered memory (not through a bounce buffer).
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        let got = map.pread_into(done, n, fd, offset + done as u64).map_err(sys_io("pread"))?;
        if got == 0 {
            break; // past EOF: the rest stays zero
        }
        done += got;
    }
    let mr = super::register(pd, &map, access.mr_access(), iova)?;
    Ok((mr, map))
}

pub(super) fn write_back(
    map: &Mapping,
    fd: BorrowedFd<'_>,
    offset: u64,
    start: usize,
    end: usize,
) -> Result<(), BuildError> {
    // One copy: pwrite straight from the registered memory.
    let mut at = start;
    while at < end {
        let n = (end - at).min(CHUNK);
        map.pwrite_from(at, n, fd, offset + at as u64).map_err(sys_io("pwrite"))?;
        at += n;
    }
    super::fdatasync(fd)
}
