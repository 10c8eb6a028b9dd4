//! Reacquiring a lease after its breaker is done, and the shared inotify reader that
//! wakes the reacquire loops.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use super::engine::Inner;
use super::entry::{Entry, LeaseState};
use super::{FileId, GoneReason, LeaseEvent};
use crate::sys::lease as raw;
use crate::sys::reactor::InotifyFd;

/// Events that may mean the breaker is done (close, or for a `truncate()` breaker, which
/// never opens the file, the modification itself), or that the file is gone.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CLOSE_NOWRITE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

/// Reads inotify events and wakes the reacquire loop of the watched lease.
pub(crate) async fn inotify_reader(weak: Weak<Inner>, ino: Arc<AsyncFd<InotifyFd>>) {
    loop {
        let Ok(mut guard) = ino.readable().await else {
            return;
        };
        loop {
            match ino.get_ref().0.read_events() {
                Ok(events) => {
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    let watches = inner.watches.lock();
                    for ev in events {
                        if let Some(entry) = watches.get(&ev.wd) {
                            entry.wake.notify_one();
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    tracing::error!("inotify read failed: {e}; reacquire falls back to backoff");
                    return;
                }
            }
        }
    }
}

/// Whether the leased file is gone: unlinked, or no longer at its path.
fn gone_reason(entry: &Entry) -> Option<GoneReason> {
    match nix::sys::stat::fstat(&entry.fd) {
        Ok(st) if st.st_nlink == 0 => return Some(GoneReason::Deleted),
        Ok(_) => {}
        Err(_) => return Some(GoneReason::ReacquireFailed),
    }
    match nix::sys::stat::stat(&*entry.path) {
        Ok(st) if FileId::from_stat(&st) == entry.id => None,
        Ok(_) => Some(GoneReason::Replaced),
        Err(_) => Some(GoneReason::Renamed),
    }
}

enum Outcome {
    Reacquired(u32),
    Gone(GoneReason),
    Closed,
}

/// Waits for the breaker to finish and takes the lease again: retries `F_SETLEASE` at
/// once on every inotify event on the file, and otherwise after an exponential backoff
/// bounded by `backoff_max`, while it fails with `EAGAIN`.
///
/// `EAGAIN` is what keeps this from coming back too early: a breaker that opened the
/// file keeps it open (write lease: any open conflicts; read lease: a writer does), and
/// a `truncate()` breaker holds write access to the inode until its truncate is done.
pub(crate) async fn run(inner: Arc<Inner>, entry: Arc<Entry>, released: Instant) {
    let proc_path = format!("/proc/self/fd/{}", entry.fd.as_raw_fd());
    let wd: Option<WatchDescriptor> = match inner
        .inotify
        .get_ref()
        .0
        .add_watch(proc_path.as_str(), watch_mask())
    {
        Ok(wd) => {
            inner.watches.lock().insert(wd, entry.clone());
            Some(wd)
        }
        Err(e) => {
            tracing::warn!(file = %entry.id, "inotify_add_watch failed: {e}; retrying on backoff only");
            None
        }
    };
    let mut delay = inner.cfg.backoff_min;
    let mut attempts = 0u32;
    let outcome = loop {
        let gone = gone_reason(&entry);
        {
            let mut st = entry.state.lock();
            if !matches!(st.state, LeaseState::Reacquiring { .. }) {
                break Outcome::Closed;
            }
            if let Some(reason) = gone {
                st.state = LeaseState::Gone(reason);
                break Outcome::Gone(reason);
            }
            attempts += 1;
            // Under the state lock: a break of the new lease is only routed after the
            // state says Held. F_UNLCK (ours or the kernel's forced one) resets the
            // fd's F_SETSIG signal to 0 (plain SIGIO): set it again first.
            let r = raw::set_sig(entry.fd.as_fd(), inner.sig)
                .and_then(|()| raw::set_lease(entry.fd.as_fd(), entry.kind.raw()));
            match r {
                Ok(()) => {
                    inner.direct_breaks(entry.fd.as_fd());
                    st.state = LeaseState::Held;
                    break Outcome::Reacquired(attempts);
                }
                Err(Errno::EAGAIN) => {}
                Err(e) => {
                    tracing::warn!(file = %entry.id, "reacquire F_SETLEASE failed: {e}");
                    st.state = LeaseState::Gone(GoneReason::ReacquireFailed);
                    break Outcome::Gone(GoneReason::ReacquireFailed);
                }
            }
        }
        tokio::select! {
            () = entry.wake.notified() => {}
            () = tokio::time::sleep(delay) => {
                delay = (delay * 2).min(inner.cfg.backoff_max);
            }
        }
    };
    if let Some(wd) = wd {
        inner.watches.lock().remove(&wd);
        let _ = inner.inotify.get_ref().0.rm_watch(wd);
    }
    let (file, path) = (entry.id, entry.path.clone());
    let event = match outcome {
        Outcome::Reacquired(attempts) => {
            inner.counters.reacquired.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%file, attempts, "lease reacquired");
            LeaseEvent::Reacquired { file, path, after_release: released.elapsed(), attempts }
        }
        Outcome::Gone(reason) => {
            // A later acquire of the path starts afresh; handles keep the old entry.
            Inner::unlink(&mut inner.table.lock(), &entry);
            tracing::debug!(%file, ?reason, "lease gone");
            LeaseEvent::Gone { file, path, reason }
        }
        Outcome::Closed => return,
    };
    // Let go of the entry (and, if it was the last reference, its fd) before anyone
    // hears of it.
    drop(entry);
    inner.emit(event);
}
