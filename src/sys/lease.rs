//! `fcntl` lease commands (`F_SETSIG`, `F_SETLEASE`, `F_GETLEASE`) that nix does not wrap.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// `F_SETSIG` from `<fcntl.h>` (Linux, every architecture but a few musl ports).
const F_SETSIG: libc::c_int = 10;

/// A lease type as `F_SETLEASE` takes it and `F_GETLEASE` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawLease {
    /// `F_RDLCK`.
    Read,
    /// `F_WRLCK`.
    Write,
    /// `F_UNLCK`: no lease (or, from `F_GETLEASE`, a break to "none" is pending).
    Unlocked,
}

impl RawLease {
    fn to_raw(self) -> libc::c_int {
        match self {
            RawLease::Read => libc::F_RDLCK,
            RawLease::Write => libc::F_WRLCK,
            RawLease::Unlocked => libc::F_UNLCK,
        }
    }
}

/// Makes the kernel send `sig` (with `si_fd` set) instead of `SIGIO` for events on `fd`.
pub(crate) fn set_sig(fd: BorrowedFd<'_>, sig: libc::c_int) -> Result<(), Errno> {
    // SAFETY: fcntl with F_SETSIG takes an int argument and touches no memory of ours;
    // the fd is valid for the lifetime of the borrow.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig) };
    Errno::result(rc).map(drop)
}

/// `fcntl(fd, F_SETLEASE, kind)`. Never blocks: a conflict is `EAGAIN`.
pub(crate) fn set_lease(fd: BorrowedFd<'_>, kind: RawLease) -> Result<(), Errno> {
    // SAFETY: F_SETLEASE takes an int argument and touches no memory of ours; the fd is
    // valid for the lifetime of the borrow.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, kind.to_raw()) };
    Errno::result(rc).map(drop)
}

/// `fcntl(fd, F_GETLEASE)`. While a break is pending the kernel reports the type the
/// lease is being broken *to* (`F_RDLCK` for a write lease downgraded by a reader,
/// `F_UNLCK` otherwise); it also times out overdue leases first, so after the break
/// deadline a forced break reads as `Unlocked`.
pub(crate) fn get_lease(fd: BorrowedFd<'_>) -> Result<RawLease, Errno> {
    // SAFETY: F_GETLEASE takes no argument and touches no memory of ours; the fd is
    // valid for the lifetime of the borrow.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLEASE) };
    match Errno::result(rc)? {
        libc::F_RDLCK => Ok(RawLease::Read),
        libc::F_WRLCK => Ok(RawLease::Write),
        _ => Ok(RawLease::Unlocked),
    }
}
