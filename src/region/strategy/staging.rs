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
    let mut file = vec![0u8; CHUNK.min(end.saturating_sub(start))];
    let mut undo = Undo::default();
    let mut at = start;
    while at < end {
        let n = (end - at).min(CHUNK);
        let old = &mut base[at..at + n];
        if changed(map, at, old)? {
            let file_off = offset + at as u64;
            let merged = &mut file[..n];
            pread_full(fd, merged, file_off)?;
            undo.clear();
            let written = merge_from(map, at, merged, old, &mut undo)
                .and_then(|()| pwrite_all(fd, merged, file_off));
            if let Err(e) = written {
                // Not written: the shadow must still show these bytes as changed, so
                // that the next write-back tries them again (and fails the same way).
                undo.apply(old);
                return Err(e);
            }
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

fn word(b: &[u8]) -> u64 {
    u64::from_ne_bytes(b.try_into().expect("8 bytes"))
}

/// Whether the copy's bytes `at..at + old.len()` differ from `old` (stops at the first
/// word that does).
fn changed(map: &Mapping, at: usize, old: &[u8]) -> Result<bool, BuildError> {
    let words = old.len() / 8;
    let mut olds = old.chunks_exact(8);
    if map.words(at, words).map_err(BuildError::Map)?.zip(&mut olds).any(|(w, o)| w != word(o)) {
        return Ok(true);
    }
    let tail = olds.remainder();
    let mut now = [0u8; 8];
    map.read_at(at + 8 * words, &mut now[..tail.len()]).map_err(BuildError::Map)?;
    Ok(now[..tail.len()] != *tail)
}

/// The shadow's words (and tail bytes) a merge replaced, by offset: put back when the
/// write that follows fails.
#[derive(Default)]
struct Undo {
    words: Vec<(usize, u64)>,
    bytes: Vec<(usize, u8)>,
}

impl Undo {
    fn clear(&mut self) {
        self.words.clear();
        self.bytes.clear();
    }

    fn apply(&self, old: &mut [u8]) {
        for &(i, w) in &self.words {
            old[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        }
        for &(i, b) in &self.bytes {
            old[i] = b;
        }
    }
}

/// One pass over the copy's bytes `at..at + file.len()`: the bytes that differ from
/// `old` are laid over `file` (the file's current bytes), and `old` takes the copy's
/// bytes (what it replaced goes to `undo`). Reading the copy once, as it is now, keeps
/// `old` equal to what went into `file` even while a peer writes: a byte it changes after
/// its word was read differs at the next write-back.
fn merge_from(
    map: &Mapping,
    at: usize,
    file: &mut [u8],
    old: &mut [u8],
    undo: &mut Undo,
) -> Result<(), BuildError> {
    let words = file.len() / 8;
    let mut f = file.chunks_exact_mut(8);
    let mut o = old.chunks_exact_mut(8);
    let copy = map.words(at, words).map_err(BuildError::Map)?;
    for (i, ((now, f), o)) in copy.zip(&mut f).zip(&mut o).enumerate() {
        let was = word(o);
        if now != was {
            f.copy_from_slice(&merge_word(word(f), now, was).to_ne_bytes());
            o.copy_from_slice(&now.to_ne_bytes());
            undo.words.push((i * 8, was));
        }
    }
    let (f, o) = (f.into_remainder(), o.into_remainder());
    let mut now = [0u8; 8];
    map.read_at(at + 8 * words, &mut now[..f.len()]).map_err(BuildError::Map)?;
    for (i, ((f, o), n)) in f.iter_mut().zip(o.iter_mut()).zip(now).enumerate() {
        if n != *o {
            undo.bytes.push((8 * words + i, *o));
            *f = n;
            *o = n;
        }
    }
    Ok(())
}

/// The bytes of `now` that differ from `old` laid over `file`, without branches (a byte
/// loop cost 10 ms per MiB in the TCG guests).
fn merge_word(file: u64, now: u64, old: u64) -> u64 {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let diff = now ^ old;
    // High bit of each byte of `diff` that is non-zero, spread to the whole byte.
    let high = ((diff & LOW7).wrapping_add(LOW7) | diff) & !LOW7;
    let mask = (high >> 7) * 0xFF;
    (file & !mask) | (now & mask)
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
    use super::{changed, merge_from};
    use crate::sys::Mapping;

    #[test]
    fn a_write_back_that_fails_leaves_its_bytes_changed() {
        use super::{Shadow, ShadowState, write_back};
        use std::os::fd::AsFd;
        let path = std::env::temp_dir().join(format!("filemr-wb-{}", std::process::id()));
        std::fs::write(&path, [0u8; 100]).unwrap();
        let ro = std::fs::File::open(&path).unwrap();
        let map = Mapping::anonymous(100).unwrap();
        map.write_at(3, &[7; 20]).unwrap();
        let shadow =
            Shadow(parking_lot::Mutex::new(ShadowState { bytes: vec![0; 100], unsynced: false }));
        // A read-only fd: the pwrite fails.
        let err = write_back(&map, &shadow, ro.as_fd(), 0, 0, 100).unwrap_err();
        assert!(matches!(err, super::BuildError::Io("pwrite", _)), "{err:?}");
        assert!(changed(&map, 0, &shadow.0.lock().bytes).unwrap(), "still to be written");
        let rw = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        write_back(&map, &shadow, rw.as_fd(), 0, 0, 100).unwrap();
        assert!(!changed(&map, 0, &shadow.0.lock().bytes).unwrap());
        assert_eq!(std::fs::read(&path).unwrap()[3..23], [7; 20]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_change_is_seen_in_any_word_and_in_the_tail() {
        let map = Mapping::anonymous(4096).unwrap();
        let old = vec![0u8; 21];
        assert!(!changed(&map, 100, &old).unwrap());
        for at in [100, 107, 115, 120] {
            map.write_at(at, &[1]).unwrap();
            assert!(changed(&map, 100, &old).unwrap(), "a change at {at}");
            map.write_at(at, &[0]).unwrap();
        }
        assert!(!changed(&map, 100, &old).unwrap());
    }

    /// `merge_from` over a copy holding `now`.
    fn merge(file: &mut [u8], now: &[u8], old: &[u8]) {
        let map = Mapping::anonymous(now.len()).unwrap();
        map.write_at(0, now).unwrap();
        let mut old = old.to_vec();
        let before = old.clone();
        let mut undo = super::Undo::default();
        merge_from(&map, 0, file, &mut old, &mut undo).unwrap();
        assert_eq!(old, now, "the shadow takes the copy's bytes");
        undo.apply(&mut old);
        assert_eq!(old, before, "undone, the shadow is as it was");
    }

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
