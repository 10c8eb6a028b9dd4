use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{
    MapFlags, MmapAdvise, MsFlags, ProtFlags, madvise, mmap, mmap_anonymous, msync, munmap,
};
use nix::unistd::{SysconfVar, sysconf};

use super::error::{SysError, SysResult};

/// How a mapping may be accessed by the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// `PROT_READ`.
    Read,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

impl Protection {
    fn flags(self) -> ProtFlags {
        match self {
            Protection::Read => ProtFlags::PROT_READ,
            Protection::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        }
    }
}

/// A memory mapping owned by this process: a `MAP_SHARED` window on a file range, or
/// anonymous private memory. Unmapped on drop.
///
/// The memory may change underneath at any time (an RDMA device writes into it, another
/// process writes the file), so it is never handed out as a Rust slice; use
/// [`Mapping::read_at`] and [`Mapping::write_at`], which copy.
///
/// Touching a file mapping beyond the file's end raises `SIGBUS`; callers keep the file
/// from shrinking (filemr holds a lease) while the mapping is in use.
pub struct Mapping {
    base: NonNull<u8>,
    map_len: usize,
    /// Offset of the caller's first byte inside the mapping (file offsets need not be
    /// page aligned).
    head: usize,
    len: usize,
    file_backed: bool,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through copies.
unsafe impl Send for Mapping {}
// SAFETY: as above: `read_at`/`write_at` copy; concurrent copies are at worst torn, which
// is what shared memory written by a device or another process gives anyway.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("addr", &self.as_ptr())
            .field("len", &self.len)
            .field("file_backed", &self.file_backed)
            .finish()
    }
}

/// The system page size.
pub fn page_size() -> usize {
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    }
}

/// How far `addr` lies into its page.
pub fn page_offset(addr: u64) -> usize {
    (addr % page_size() as u64) as usize
}

impl Mapping {
    /// Map `len` bytes of the file behind `fd` at `offset`, `MAP_SHARED`.
    pub fn file(fd: impl AsFd, offset: u64, len: usize, prot: Protection) -> SysResult<Mapping> {
        Mapping::file_placed(fd, offset, len, prot, Place::Anywhere)
    }

    /// [`Mapping::file`] with its first byte at the virtual address `at` (which must sit
    /// at the same offset in its page as `offset` in its own), without replacing
    /// anything mapped there (`MAP_FIXED_NOREPLACE`: `EEXIST` if the range is taken). A
    /// rebuilt ODP region needs this: rxe resolves an ODP MR's addresses against the
    /// mapping's own, so it can only be registered where its predecessor was.
    pub fn file_at(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        prot: Protection,
        at: u64,
    ) -> SysResult<Mapping> {
        Mapping::file_placed(fd, offset, len, prot, Place::At(at))
    }

    fn file_placed(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        prot: Protection,
        place: Place<'_>,
    ) -> SysResult<Mapping> {
        let detail = || format!("offset {offset} len {len} {prot:?} {place:?}");
        let page = page_size() as u64;
        let aligned = offset - offset % page;
        let head = (offset - aligned) as usize;
        let map_len = len
            .checked_add(head)
            .and_then(NonZeroUsize::new)
            .filter(|_| len > 0)
            .ok_or_else(|| SysError::new("mmap", Errno::EINVAL, detail()))?;
        let file_off = i64::try_from(aligned)
            .map_err(|_| SysError::new("mmap", Errno::EOVERFLOW, detail()))?;
        let at = |at: u64| {
            at.checked_sub(head as u64)
                .filter(|b| b % page == 0)
                .and_then(|b| NonZeroUsize::new(b as usize))
                .ok_or_else(|| SysError::new("mmap", Errno::EINVAL, detail()))
        };
        let (hint, flags) = match place {
            Place::Anywhere => (None, MapFlags::MAP_SHARED),
            Place::At(addr) => {
                (Some(at(addr)?), MapFlags::MAP_SHARED | MapFlags::MAP_FIXED_NOREPLACE)
            }
            Place::Into(held) if held.map_len == map_len.get() => {
                let base = NonZeroUsize::new(held.base.as_ptr() as usize).expect("mapped");
                (Some(base), MapFlags::MAP_SHARED | MapFlags::MAP_FIXED)
            }
            Place::Into(_) => return Err(SysError::new("mmap", Errno::EINVAL, detail())),
        };
        // SAFETY: a MAP_SHARED mapping chosen by the kernel, placed where nothing is
        // mapped (MAP_FIXED_NOREPLACE fails rather than replace), or replacing exactly a
        // placeholder the caller owns and nothing references (MAP_FIXED), so it cannot
        // alias any Rust object; the fd is borrowed only for the call.
        let base = unsafe { mmap(hint, map_len, prot.flags(), flags, fd, file_off) }
            .map_err(|e| SysError::new("mmap", e, detail()))?;
        let m = Mapping { base: base.cast(), map_len: map_len.get(), head, len, file_backed: true };
        if let (Place::At(_), Some(hint)) = (place, hint)
            && m.base.as_ptr() as usize != hint.get()
        {
            // Kernels before 4.17 treat the flag as a hint.
            return Err(SysError::new("mmap", Errno::EEXIST, detail()));
        }
        Ok(m)
    }

    /// Map `len` bytes of zeroed anonymous private memory, left out of forked children
    /// (`MADV_DONTFORK`): it is registered memory (staging, peers' buffers), and a child
    /// never needs it, while copying it at every `fork` would cost its whole length (the
    /// kernels copy pinned private pages for the child rather than share them).
    pub fn anonymous(len: usize) -> SysResult<Mapping> {
        let map_len = NonZeroUsize::new(len)
            .ok_or_else(|| SysError::new("mmap", Errno::EINVAL, "anonymous len 0"))?;
        // SAFETY: a fresh anonymous mapping chosen by the kernel aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                map_len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(|e| SysError::new("mmap", e, format!("anonymous len {len}")))?;
        let m = Mapping { base: base.cast(), map_len: len, head: 0, len, file_backed: false };
        // SAFETY: the range is the mapping just made, owned by `m`; the advice changes only
        // what a fork copies.
        unsafe { madvise(base, len, MmapAdvise::MADV_DONTFORK) }
            .map_err(|e| SysError::new("madvise(MADV_DONTFORK)", e, format!("len {len}")))?;
        Ok(m)
    }

    /// `len` bytes of scratch memory whose first byte sits `head` bytes into a page,
    /// costing at most `chunk` bytes of RAM whatever `len` is: one shared memory
    /// (`memfd`) chunk mapped `MAP_SHARED` again and again over a reserved address range.
    /// What is written anywhere lands in the chunk and is seen at every repetition:
    /// memory for I/O whose bytes nobody keeps. `chunk` is rounded up to whole pages.
    pub fn scratch(head: usize, len: usize, chunk: usize) -> SysResult<Mapping> {
        let page = page_size();
        let detail = || format!("scratch head {head} len {len} chunk {chunk}");
        let round = |n: usize| n.checked_add(page - 1).map(|n| n / page * page);
        let map_len = head
            .checked_add(len)
            .filter(|_| head < page && len > 0 && chunk > 0)
            .and_then(round)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| SysError::new("mmap", Errno::EINVAL, detail()))?;
        let chunk = round(chunk).unwrap_or(page).min(map_len.get());
        let fd = nix::sys::memfd::memfd_create(
            c"filemr-scratch",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| SysError::new("memfd_create", e, detail()))?;
        nix::unistd::ftruncate(&fd, chunk as i64)
            .map_err(|e| SysError::new("ftruncate", e, detail()))?;
        // SAFETY: a fresh PROT_NONE reservation chosen by the kernel aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                map_len,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|e| SysError::new("mmap", e, detail()))?;
        let mapping =
            Mapping { base: base.cast(), map_len: map_len.get(), head, len, file_backed: false };
        let mut at = 0;
        while at < map_len.get() {
            let n = chunk.min(map_len.get() - at);
            let addr = NonZeroUsize::new(base.as_ptr() as usize + at);
            // SAFETY: MAP_FIXED replaces pages of our own reservation only (`at + n` stays
            // inside it); nothing references them yet. On error `mapping` unmaps it all.
            unsafe {
                mmap(
                    addr,
                    NonZeroUsize::new(n).expect("n > 0"),
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                    &fd,
                    0,
                )
            }
            .map_err(|e| SysError::new("mmap", e, detail()))?;
            at += n;
        }
        Ok(mapping)
    }

    /// `len` bytes of zeroed anonymous private memory whose first byte sits `head` bytes
    /// into a page (`head` < the page size).
    pub fn anonymous_at_offset(head: usize, len: usize) -> SysResult<Mapping> {
        if head >= page_size() {
            return Err(SysError::new("mmap", Errno::EINVAL, format!("anonymous head {head}")));
        }
        let total = head
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| SysError::new("mmap", Errno::EINVAL, format!("anonymous len {len}")))?;
        let mut m = Mapping::anonymous(total)?;
        m.head = head;
        m.len = len;
        Ok(m)
    }

    /// Address of the first byte the caller asked for.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: `head < map_len`, so the result stays inside the mapping.
        unsafe { self.base.as_ptr().add(self.head) }
    }

    /// Length in bytes the caller asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true: zero-length mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this maps a file (`MAP_SHARED`) rather than anonymous memory.
    pub fn is_file_backed(&self) -> bool {
        self.file_backed
    }

    fn check(&self, off: usize, n: usize, what: &'static str) -> SysResult<()> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(SysError::new(
                what,
                Errno::ERANGE,
                format!("range {off}+{n} outside mapping of {} bytes", self.len),
            )),
        }
    }

    /// Copy bytes out of the mapping, starting `off` bytes in.
    pub fn read_at(&self, off: usize, buf: &mut [u8]) -> SysResult<()> {
        self.check(off, buf.len(), "read_at")?;
        // SAFETY: the range was bounds-checked; `buf` is a distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// The 8-byte words of bytes `off..off + 8 * count`, read one at a time as the loop
    /// asks for them (native endian, unaligned): a pass over memory a peer may be
    /// writing without copying it first.
    pub fn words(&self, off: usize, count: usize) -> SysResult<impl Iterator<Item = u64> + '_> {
        let n = count
            .checked_mul(8)
            .ok_or_else(|| SysError::new("words", Errno::ERANGE, format!("{count} words")))?;
        self.check(off, n, "words")?;
        let base = self.as_ptr().wrapping_add(off);
        Ok((0..count).map(move |i| {
            // SAFETY: word `i` lies inside `off..off + n`, bounds-checked above, and the
            // mapping lives as long as the iterator borrows it; unaligned reads are
            // allowed. (A peer's concurrent write makes a word old or new, as with
            // `read_at`.)
            unsafe { base.add(i * 8).cast::<u64>().read_unaligned() }
        }))
    }

    /// Copy bytes into the mapping, starting `off` bytes in.
    pub fn write_at(&self, off: usize, data: &[u8]) -> SysResult<()> {
        self.check(off, data.len(), "write_at")?;
        // SAFETY: bounds-checked; the mapping is writable for anonymous memory and for file
        // mappings made with `ReadWrite` (a read-only one faults: callers choose prot).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(off), data.len()) };
        Ok(())
    }

    /// `pread(2)` of up to `n` bytes of `fd` at `file_off` straight into the mapping at
    /// `off` (one copy, no bounce buffer); returns the bytes read (0 at end of file).
    pub fn pread_into(
        &self,
        off: usize,
        n: usize,
        fd: BorrowedFd<'_>,
        file_off: u64,
    ) -> SysResult<usize> {
        self.check(off, n, "pread")?;
        let at = libc::off_t::try_from(file_off)
            .map_err(|_| SysError::new("pread", Errno::EINVAL, format!("offset {file_off}")))?;
        loop {
            // SAFETY: `off..off + n` is inside the mapping (checked), which is writable
            // anonymous memory or a read-write file mapping; the kernel writes at most `n`
            // bytes there.
            let got = unsafe { libc::pread(fd.as_raw_fd(), self.as_ptr().add(off).cast(), n, at) };
            match Errno::result(got) {
                Ok(got) => return Ok(got as usize),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(SysError::new("pread", e, format!("{n} bytes at {file_off}")));
                }
            }
        }
    }

    /// `msync(MS_SYNC)` the whole mapping: file data written through it reaches the file.
    pub fn sync(&self) -> SysResult<()> {
        self.sync_range(0, self.len)
    }

    /// `msync(MS_SYNC)` the pages holding bytes `start..end` of the mapping.
    pub fn sync_range(&self, start: usize, end: usize) -> SysResult<()> {
        if start > end {
            return Err(SysError::new("msync", Errno::EINVAL, format!("range {start}..{end}")));
        }
        self.check(start, end - start, "msync")?;
        if start == end {
            return Ok(());
        }
        let page = page_size();
        let first = (self.head + start) / page * page;
        let last = self.head + end;
        // SAFETY: `first..last` lies inside the live mapping (bounds-checked above) and
        // `first` is page aligned.
        unsafe { msync(self.base.byte_add(first).cast(), last - first, MsFlags::MS_SYNC) }
            .map_err(|e| SysError::new("msync", e, format!("range {start}..{end} of {}", self.len)))
    }
}

/// An address range held by an inaccessible placeholder (`PROT_NONE`, no memory behind
/// it) so nothing else is mapped there: where a revoked ODP region's file mapping was,
/// until its rebuild maps the file there again ([`Mapping::file_in`]). Unmapped on drop.
#[derive(Debug)]
pub struct AddressReservation {
    base: NonNull<u8>,
    map_len: usize,
}

// SAFETY: an inaccessible range owned by this value; nothing reads or writes it.
unsafe impl Send for AddressReservation {}
// SAFETY: as above.
unsafe impl Sync for AddressReservation {}

impl Mapping {
    /// Replaces this mapping, atomically, by a placeholder over the same addresses (one
    /// `mmap(MAP_FIXED)`: at no moment is the range free for another mapping).
    pub fn into_reservation(self) -> SysResult<AddressReservation> {
        let len = NonZeroUsize::new(self.map_len)
            .ok_or_else(|| SysError::new("mmap", Errno::EINVAL, "empty mapping"))?;
        // SAFETY: the range is exactly this mapping's, which this value owns and nothing
        // else references (its memory regions were dropped by the caller); MAP_FIXED
        // replaces it with inaccessible, unbacked memory.
        let base = unsafe {
            mmap_anonymous(
                Some(NonZeroUsize::new(self.base.as_ptr() as usize).expect("mapped address")),
                len,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|e| SysError::new("mmap", e, format!("placeholder of {} bytes", self.map_len)))?;
        let reservation = AddressReservation { base: base.cast(), map_len: self.map_len };
        // The range now belongs to the reservation: the mapping must not unmap it.
        std::mem::forget(self);
        Ok(reservation)
    }

    /// [`Mapping::file_at`] into the range `reservation` holds (which must be exactly the
    /// range the new mapping needs), replacing its placeholder: the rebuilt mapping gets
    /// its predecessor's addresses whatever else was mapped meanwhile. On failure the
    /// reservation is given up.
    pub fn file_in(
        reservation: AddressReservation,
        fd: impl AsFd,
        offset: u64,
        len: usize,
        prot: Protection,
    ) -> SysResult<Mapping> {
        let m = Mapping::file_placed(fd, offset, len, prot, Place::Into(&reservation))?;
        // The range now belongs to the mapping.
        std::mem::forget(reservation);
        Ok(m)
    }
}

/// Where [`Mapping::file_placed`] maps.
#[derive(Debug, Clone, Copy)]
enum Place<'a> {
    /// Where the kernel chooses.
    Anywhere,
    /// At this address of the first byte, if nothing is mapped there.
    At(u64),
    /// Over this placeholder, which must span exactly the mapping.
    Into(&'a AddressReservation),
}

impl Drop for AddressReservation {
    fn drop(&mut self) {
        // SAFETY: exactly the placeholder this value owns.
        if let Err(e) = unsafe { munmap(self.base.cast(), self.map_len) } {
            tracing::error!(error = %e, "munmap of a reservation failed");
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/map_len are exactly what mmap returned; nothing borrows the memory
        // (memory regions over it hold an Arc to this value and are dropped first).
        if let Err(e) = unsafe { munmap(self.base.cast(), self.map_len) } {
            tracing::error!(error = %e, "munmap failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_mapping_at_unaligned_offset_reads_and_writes_file() {
        let path = std::env::temp_dir().join(format!("filemr-map-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let m = Mapping::file(&f, 4100, 5000, Protection::ReadWrite).unwrap();
        let mut buf = vec![0; 5000];
        m.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, data[4100..9100]);
        m.write_at(10, b"hello").unwrap();
        m.sync().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[4110..4115], b"hello");
        assert_eq!(m.read_at(4999, &mut [0; 2]).unwrap_err().errno, Errno::ERANGE);
        assert_eq!(Mapping::file(&f, 0, 0, Protection::Read).unwrap_err().errno, Errno::EINVAL);
        // Placed where a predecessor was (a rebuilt ODP region), never over a live mapping.
        let at = m.as_ptr() as u64;
        let taken = Mapping::file_at(&f, 4100, 5000, Protection::ReadWrite, at).unwrap_err();
        assert_eq!(taken.errno, Errno::EEXIST);
        drop(m);
        let again = Mapping::file_at(&f, 4100, 5000, Protection::ReadWrite, at).unwrap();
        assert_eq!(again.as_ptr() as u64, at);
        let mut back = vec![0; 5];
        again.read_at(10, &mut back).unwrap();
        assert_eq!(&back, b"hello");
        let misplaced = Mapping::file_at(&f, 4100, 5000, Protection::ReadWrite, at + 1);
        assert_eq!(
            misplaced.unwrap_err().errno,
            Errno::EINVAL,
            "not at the offset's place in its page"
        );
        // Revoked: a placeholder holds the addresses (nothing else can map there), and
        // the rebuild maps the file into it.
        let held = again.into_reservation().unwrap();
        let taken = Mapping::file_at(&f, 4100, 5000, Protection::ReadWrite, at).unwrap_err();
        assert_eq!(taken.errno, Errno::EEXIST, "the placeholder keeps the range");
        let rebuilt = Mapping::file_in(held, &f, 4100, 5000, Protection::ReadWrite).unwrap();
        assert_eq!(rebuilt.as_ptr() as u64, at);
        let mut back = vec![0; 5];
        rebuilt.read_at(10, &mut back).unwrap();
        assert_eq!(&back, b"hello");
        drop(rebuilt);
        let wrong = Mapping::anonymous(4096).unwrap().into_reservation().unwrap();
        let e = Mapping::file_in(wrong, &f, 4100, 5000, Protection::ReadWrite).unwrap_err();
        assert_eq!(e.errno, Errno::EINVAL, "a reservation of another size");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn scratch_repeats_one_chunk_over_its_whole_length() {
        let page = page_size();
        let m = Mapping::scratch(100, 64 * page, 4 * page).unwrap();
        assert_eq!(m.len(), 64 * page);
        assert_eq!(m.as_ptr() as usize % page, 100);
        m.write_at(0, b"abc").unwrap();
        let mut got = [0u8; 3];
        // Byte 0 sits 100 bytes into the chunk, so does byte 4 pages on.
        m.read_at(4 * page, &mut got).unwrap();
        assert_eq!(&got, b"abc");
        m.read_at(60 * page, &mut got).unwrap();
        assert_eq!(&got, b"abc");
        assert_eq!(Mapping::scratch(page, 1, page).unwrap_err().errno, Errno::EINVAL);
        assert_eq!(Mapping::scratch(0, 0, page).unwrap_err().errno, Errno::EINVAL);
    }

    #[test]
    fn sync_range_checks_bounds() {
        let m = Mapping::anonymous(3 * page_size()).unwrap();
        assert_eq!(m.sync_range(0, 3 * page_size() + 1).unwrap_err().errno, Errno::ERANGE);
        assert_eq!(m.sync_range(2, 1).unwrap_err().errno, Errno::EINVAL);
        m.sync_range(5, 5).unwrap();
    }

    #[test]
    fn anonymous_mapping_is_zeroed() {
        let m = Mapping::anonymous(8192).unwrap();
        let mut buf = vec![1; 8192];
        m.read_at(0, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        assert!(!m.is_file_backed());
    }
}
