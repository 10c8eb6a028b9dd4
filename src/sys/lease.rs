//! `fcntl` lease commands (`F_SETSIG`, `F_SETLEASE`, `F_GETLEASE`) that nix does not wrap.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// `F_SETSIG` from `<fcntl.h>` (Linux, every architecture but a few musl ports).
const F_SETSIG: libc::c_int = 10;

/// `F_SETOWN_EX` and `F_OWNER_TID` from `<fcntl.h>` (Linux; the libc crate has them
/// only for some targets).
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

/// `struct f_owner_ex`.
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

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

/// `fcntl(fd, F_SETOWN_EX, {F_OWNER_TID, tid})`: the signals of `fd` (a lease's break)
/// go to that thread alone instead of any thread of the process. Taking a new lease
/// resets the owner to the process, so this follows every `F_SETLEASE` that takes one.
pub(crate) fn set_owner_thread(fd: BorrowedFd<'_>, tid: libc::pid_t) -> Result<(), Errno> {
    let owner = FOwnerEx { kind: F_OWNER_TID, pid: tid };
    // SAFETY: F_SETOWN_EX reads one `struct f_owner_ex` through the pointer, a live
    // local of that layout here; the fd is valid for the lifetime of the borrow.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &owner as *const FOwnerEx) };
    Errno::result(rc).map(drop)
}
