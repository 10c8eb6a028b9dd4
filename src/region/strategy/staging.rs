//! Staging: anonymous registered DRAM, filled from the file at build and written back
//! (pwrite + fdatasync through the lease's fd) on commit and before release.
//!
//! Several regions may stage the same bytes of one file (two peers' layouts of one file
//! are two regions), each in its own copy. So a write-back writes only the bytes that
//! changed in *this* copy since it last met the file (its [`Shadow`]), merged over the
//! file's current bytes: writing the whole copy back would put its stale bytes over what
//! the others committed meanwhile (the soak found exactly that: a revocation's write-back
//! erasing other peers' commits).

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use parking_lot::Mutex;

use super::BuildError;
use crate::region::config::Access;
use crate::sys::{Mapping, SysError, page_offset};
use crate::verbs::{MemoryRegion, ProtectionDomain};

/// Bytes copied per pread/pwrite.
const CHUNK: usize = 1 << 20;

/// What a staging copy held when it last met the file (filled, or written back): the
/// base a write-back diffs against. Plain memory, not registered (no locked bytes).
#[derive(Debug)]
pub(crate) struct Shadow(Mutex<ShadowState>);

#[derive(Debug)]
struct ShadowState {
    bytes: Vec<u8>,
    /// Written back but not yet fdatasynced successfully: the next write-back syncs even
    /// if nothing changed since.
    unsynced: bool,
}

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
) -> Result<(MemoryRegion, Arc<Mapping>, Shadow), BuildError> {
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
    let mut shadow = vec![0u8; len];
    map.read_at(0, &mut shadow).map_err(BuildError::Map)?;
    let mr = super::register(pd, &map, access.mr_access(), iova)?;
    Ok((mr, map, Shadow(Mutex::new(ShadowState { bytes: shadow, unsynced: false }))))
}

/// Writes bytes `start..end` of the copy back, merged: per 1 MiB chunk that changed since
/// the shadow, the file's current bytes with this copy's changed bytes laid over them,
/// in one pread and one pwrite (a pwrite per changed run would cost a syscall per peer
/// write: 67 000 of them for 8-byte writes outlasted a 3 s lease break). Then the shadow
/// takes the copy's bytes, and the file is fdatasynced if anything was written (or a
/// previous sync failed). The caller serialises write-backs of one file
/// (`ManagerInner::writeback_lock`): the merge reads, then writes, the file.
///
/// Always merged, even with no other staging region of the file alive: one that was torn
/// down a moment ago may have written back bytes this copy holds stale (a "write the copy
/// as it is when alone" shortcut lost records in the soak exactly so).
pub(super) fn write_back(
    map: &Mapping,
    shadow: &Shadow,
    fd: BorrowedFd<'_>,
    offset: u64,
    start: usize,
    end: usize,
) -> Result<(), BuildError> {
    let mut state = shadow.0.lock();
    let ShadowState { bytes: base, unsynced } = &mut *state;
    let size = CHUNK.min(end.saturating_sub(start));
    let (mut snap, mut file) = (vec![0u8; size], vec![0u8; size]);
    let mut at = start;
    while at < end {
        let n = (end - at).min(CHUNK);
        let (now, merged) = (&mut snap[..n], &mut file[..n]);
        map.read_at(at, now).map_err(BuildError::Map)?;
        let old = &mut base[at..at + n];
        let file_off = offset + at as u64;
        if now != old {
            pread_full(fd, merged, file_off)?;
            merge(merged, now, old);
            pwrite_all(fd, merged, file_off)?;
            old.copy_from_slice(now);
            *unsynced = true;
        }
        at += n;
    }
    // Nothing changed since the last write-back, which synced: nothing to make durable
    // (an idle region's revocation then costs no fdatasync).
    if *unsynced {
        super::fdatasync(fd)?;
        *unsynced = false;
    }
    Ok(())
}

/// Lays the bytes where `now` differs from `old` over `file` (all the same length), a
/// word at a time without branches (a byte loop cost 10 ms per MiB in the TCG guests).
fn merge(file: &mut [u8], now: &[u8], old: &[u8]) {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
    let mut f = file.chunks_exact_mut(8);
    let (mut n, mut o) = (now.chunks_exact(8), old.chunks_exact(8));
    for ((f, n), o) in (&mut f).zip(&mut n).zip(&mut o) {
        let (fw, nw) = (word(f), word(n));
        let diff = nw ^ word(o);
        // High bit of each byte of `diff` that is non-zero, spread to the whole byte.
        let high = ((diff & LOW7).wrapping_add(LOW7) | diff) & !LOW7;
        let mask = (high >> 7) * 0xFF;
        f.copy_from_slice(&((fw & !mask) | (nw & mask)).to_ne_bytes());
    }
    for ((f, n), o) in f.into_remainder().iter_mut().zip(n.remainder()).zip(o.remainder()) {
        if n != o {
            *f = *n;
        }
    }
}

/// Fills `buf` from the file at `at`; past its end, zeros.
fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], at: u64) -> Result<(), BuildError> {
    let mut done = 0;
    while done < buf.len() {
        let off = i64::try_from(at + done as u64)
            .map_err(|_| BuildError::Io("pread", nix::errno::Errno::EINVAL))?;
        match nix::sys::uio::pread(fd, &mut buf[done..], off) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(BuildError::Io("pread", e)),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

fn pwrite_all(fd: BorrowedFd<'_>, mut data: &[u8], mut at: u64) -> Result<(), BuildError> {
    while !data.is_empty() {
        let off =
            i64::try_from(at).map_err(|_| BuildError::Io("pwrite", nix::errno::Errno::EINVAL))?;
        match nix::sys::uio::pwrite(fd, data, off) {
            Ok(0) => return Err(BuildError::Io("pwrite", nix::errno::Errno::EIO)),
            Ok(n) => {
                data = &data[n..];
                at += n as u64;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(BuildError::Io("pwrite", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merge_takes_only_this_copys_changes() {
        // The file has another copy's change at 2; this copy changed 0 and 9..12.
        let old = [0u8; 20];
        let mut now = old;
        now[0] = 1;
        now[9..12].copy_from_slice(&[7, 7, 7]);
        let mut file = [0u8; 20];
        file[2] = 5;
        merge(&mut file, &now, &old);
        let mut want = [0u8; 20];
        want[0] = 1;
        want[2] = 5;
        want[9..12].copy_from_slice(&[7, 7, 7]);
        assert_eq!(file, want);
        // A byte written back with its old value is not a change: the file's stays.
        let mut file = [9u8; 20];
        merge(&mut file, &old, &old);
        assert_eq!(file, [9u8; 20]);
        // Every byte value, in every position of a word.
        for v in 0..=255u8 {
            for at in 0..8 {
                let (old, mut now, mut file) = ([0u8; 8], [0u8; 8], [0xAAu8; 8]);
                now[at] = v;
                merge(&mut file, &now, &old);
                let mut want = [0xAAu8; 8];
                if v != 0 {
                    want[at] = v;
                }
                assert_eq!(file, want, "value {v} at {at}");
            }
        }
    }
}
