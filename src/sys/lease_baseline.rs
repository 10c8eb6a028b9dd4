//! The bare `fcntl` + `sigwaitinfo` lease loop, for the benchmark's baseline only
//! (`benches/lease.rs`). Not part of the supported API.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;

use super::lease::{RawLease, get_lease, set_lease, set_sig};

/// `F_SETSIG` on `fd`.
pub fn setsig(fd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    set_sig(fd, sig)
}

/// `F_SETLEASE`: `F_WRLCK` when `write`, else `F_UNLCK`.
pub fn setlease(fd: BorrowedFd<'_>, write: bool) -> Result<(), Errno> {
    set_lease(fd, if write { RawLease::Write } else { RawLease::Unlocked })
}

/// True when `F_GETLEASE` reports a write lease with no break pending.
pub fn holds_write(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    get_lease(fd).map(|l| l == RawLease::Write)
}

/// Blocks `sig` in the calling thread (threads it spawns later inherit the mask).
pub fn block(sig: i32) -> Result<(), Errno> {
    super::signal::block(sig)
}

/// Waits for `sig` (blocked beforehand) with `sigwaitinfo`; returns its `si_fd`.
pub fn wait_fd(sig: i32) -> Result<i32, Errno> {
    let set = super::signal::sigset_of(sig);
    loop {
        // SAFETY: a zeroed siginfo_t is valid output storage for sigwaitinfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` and `info` are valid for the call.
        let rc = unsafe { libc::sigwaitinfo(&set, &mut info) };
        match Errno::result(rc) {
            Ok(_) => return Ok(super::signal::si_fd(&info)),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}
