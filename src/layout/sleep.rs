//! How the layout threads sleep: in `poll(2)` on their CM channel, their connections'
//! completion channels and a wake-up eventfd, so that a frame, a finished transfer, a
//! CM event, a region event or the owner's request wakes them at once. (They used to
//! poll everything and sleep 1 ms when nothing happened: a recall round trip spent most
//! of its time in those sleeps.)

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// Wakes a sleeping layout thread from any thread.
#[derive(Debug)]
pub(crate) struct Waker(EventFd);

impl Waker {
    pub(crate) fn new() -> std::io::Result<Waker> {
        EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map(Waker)
            .map_err(std::io::Error::from)
    }

    /// Makes the next (or current) [`sleep`] return.
    pub(crate) fn wake(&self) {
        // Only fails when the counter would overflow: it is nonzero then, a wake pending.
        let _ = self.0.write(1);
    }

    fn clear(&self) {
        let _ = self.0.read();
    }
}

/// Sleeps until one of `fds` or `waker` is readable, or `timeout` passed; clears the
/// waker. The caller then takes what each fd has (non-blocking).
pub(crate) fn sleep(waker: &Waker, fds: &[BorrowedFd<'_>], timeout: Duration) {
    let mut set: Vec<PollFd<'_>> =
        fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)).collect();
    set.push(PollFd::new(waker.0.as_fd(), PollFlags::POLLIN));
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut set, PollTimeout::from(ms)) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => {
            tracing::warn!(error = %e, "poll of the layout thread's descriptors failed");
            std::thread::sleep(timeout);
        }
    }
    waker.clear();
}
