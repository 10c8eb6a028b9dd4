//! Staging: anonymous registered DRAM, filled from the file at build and written back
//! (pwrite + fdatasync through the lease's fd) on commit and before release.

use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{BuildError, dup_file};
use crate::region::config::Access;
use crate::sys::{Mapping, io_errno};
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
    let map = Arc::new(
        match iova {
            // Same in-page offset as the addresses peers know (anonymous memory starts on a
            // page): map one byte more per head byte and use the tail.
            Some(iova) => {
                Mapping::anonymous_at_offset(iova as usize % crate::sys::page_size(), len)
            }
            None => Mapping::anonymous(len),
        }
        .map_err(BuildError::Map)?,
    );
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
