//! Registering the lease layer's inotify fd with tokio (`AsyncFd::register` is unsafe since
//! tokio 1.54: the fd must stay open and the same for the `AsyncFd`'s lifetime).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::inotify::Inotify;
use tokio::io::unix::AsyncFd;

/// An owned inotify instance, as `AsRawFd` for `AsyncFd`.
#[derive(Debug)]
pub(crate) struct InotifyFd(pub(crate) Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers an owned inotify instance. Needs a runtime with I/O enabled.
pub(crate) fn register_inotify(ino: Inotify) -> io::Result<AsyncFd<InotifyFd>> {
    // SAFETY: Inotify owns its fd (an OwnedFd inside) and never replaces it, so the fd
    // stays open and unchanged until the AsyncFd drops the wrapper.
    unsafe { AsyncFd::register(InotifyFd(ino)) }.map_err(io::Error::from)
}
