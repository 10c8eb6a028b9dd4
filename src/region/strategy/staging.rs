//! Staging: anonymous registered DRAM, filled from the file at build and written back
//! (pwrite + fdatasync through the lease's fd) on commit and before release.

use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{BuildError, dup_file};
use crate::region::config::Access;
use crate::sys::{Mapping, io_errno, page_offset};
use crate::verbs::{MemoryRegion, ProtectionDomain};

/// Bytes copied per pread/pwrite.
const CHUNK: usize = 1 << 20;

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
    let file = dup_file(fd)?;
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        let got = file
            .read_at(&mut buf[..n], offset + done as u64)
            .map_err(|e| BuildError::Io("pread", io_errno(&e)))?;
        if got == 0 {
            break; // past EOF: the rest stays zero
        }
        map.write_at(done, &buf[..got]).map_err(BuildError::Map)?;
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
    let file = dup_file(fd)?;
    let mut buf = vec![0u8; CHUNK.min(end - start)];
    let mut at = start;
    while at < end {
        let n = (end - at).min(CHUNK);
        map.read_at(at, &mut buf[..n]).map_err(BuildError::Map)?;
        file.write_all_at(&buf[..n], offset + at as u64)
            .map_err(|e| BuildError::Io("pwrite", io_errno(&e)))?;
        at += n;
    }
    super::fdatasync(fd)
}
