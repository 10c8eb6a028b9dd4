//! The break thread: takes the lease signal (and the self-pipe's words), routes each
//! break to its lease, rescans all leases with `F_GETLEASE` after a signal-queue
//! overflow, and watches break deadlines for forced breaks.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::LeaseEvent;
use super::engine::Inner;
use super::entry::{Entry, LeaseKind, LeaseState};
use crate::sys::lease::{self as raw, RawLease};
use crate::sys::signal::{self, RESCAN_MARK};

/// Slack after the deadline before checking for a forced break.
const FORCED_SLACK: Duration = Duration::from_millis(20);

/// True when `F_GETLEASE` shows a break pending (or done) on a lease of `kind`.
pub(crate) fn break_pending(kind: LeaseKind, now: RawLease) -> bool {
    match kind {
        LeaseKind::Read => now == RawLease::Unlocked,
        LeaseKind::Write => now != RawLease::Write,
    }
}

/// How long the break thread waits for a signal before it looks whether its engine is
/// gone (the engine's drop also wakes it) and at the pipe, as a safety net.
const WAIT: Duration = Duration::from_secs(1);

/// Starts the break thread. Leases direct their break signal `sig` at it
/// (`F_SETOWN_EX`, see [`raw::set_owner_thread`]); it blocks the signal and takes each
/// with `sigtimedwait`, `si_fd` and all: one wakeup from the break to the engine's
/// subscribers, whose handlers (`LeaseEngine::on_event`) run here too. Breaks that
/// reached another thread come through the self-pipe (`rd`, non-blocking), which the
/// handler there fills before waking this thread. Returns the thread's id; the thread
/// gets its engine through `weak_rx` and stops once the engine is gone.
pub(crate) fn spawn(
    rd: OwnedFd,
    sig: libc::c_int,
    weak_rx: std::sync::mpsc::Receiver<Weak<Inner>>,
) -> std::io::Result<libc::pid_t> {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("filemr-lease".into()).spawn(move || {
        let tid = signal::become_break_thread(sig).map_err(std::io::Error::from);
        let started = tid.is_ok();
        let _ = tid_tx.send(tid);
        if started && let Ok(weak) = weak_rx.recv() {
            run(&weak, &rd, sig);
        }
    })?;
    tid_rx.recv().map_err(|_| std::io::Error::other("the lease break thread did not start"))?
}

fn run(weak: &Weak<Inner>, pipe: &OwnedFd, sig: libc::c_int) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let taken = match signal::wait(sig, WAIT) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("waiting for the lease signal failed: {e}; the break thread stops");
                return;
            }
        };
        let mut fds = Vec::new();
        let mut marked = false;
        match taken {
            Some(fd) => fds.push(fd),
            None => marked = drain(pipe, &mut buf, &mut fds),
        }
        let rescan = signal::take_rescan() || marked;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if fds.is_empty() && !rescan {
            continue;
        }
        let arrived = Instant::now();
        let deadline = arrived + inner.break_time.now();
        for fd in fds {
            let entry = inner.table.lock().by_fd.get(&fd).cloned();
            match entry {
                Some(entry) => deliver(&inner, &entry, arrived, deadline, false),
                None => {
                    // A lease closed since, or a stale fd number.
                    inner.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if rescan {
            rescan_all(&inner, arrived, deadline);
        }
    }
}

/// Reads what the handler left in the pipe: lease fds into `fds`; whether a rescan mark
/// was among them.
fn drain(pipe: &OwnedFd, buf: &mut [u8], fds: &mut Vec<i32>) -> bool {
    let mut marked = false;
    loop {
        match nix::unistd::read(pipe.as_fd(), buf) {
            Ok(0) | Err(Errno::EAGAIN) => return marked,
            // Every write is one 4-byte word (atomic on a pipe): reads return whole words.
            Ok(n) => {
                for w in buf[..n].chunks_exact(4) {
                    let word = i32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
                    if word == RESCAN_MARK {
                        marked = true;
                    } else {
                        fds.push(word);
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::error!("lease signal pipe read failed: {e}; rescanning");
                return true;
            }
        }
    }
}

fn rescan_all(inner: &Arc<Inner>, arrived: Instant, deadline: Instant) {
    inner.counters.rescans.fetch_add(1, Ordering::Relaxed);
    let entries: Vec<Arc<Entry>> = inner.table.lock().by_fd.values().cloned().collect();
    tracing::debug!(leases = entries.len(), "rescanning leases after a signal overflow");
    for entry in entries {
        deliver(inner, &entry, arrived, deadline, true);
    }
}

/// Delivers a break of `entry` if it is held and `F_GETLEASE` confirms a pending break:
/// at most once per break, whichever path (signal or rescan) finds it first.
fn deliver(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    arrived: Instant,
    deadline: Instant,
    via_rescan: bool,
) {
    let mut st = entry.state.lock();
    if st.state != LeaseState::Held {
        if !via_rescan {
            inner.counters.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    match raw::get_lease(entry.fd.as_fd()) {
        Ok(now) if break_pending(entry.kind, now) => {}
        Ok(_) => {
            if !via_rescan {
                inner.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        Err(e) => {
            tracing::warn!(file = %entry.id, "F_GETLEASE failed: {e}");
            return;
        }
    }
    st.generation += 1;
    let generation = st.generation;
    st.state = LeaseState::Breaking { arrived, deadline };
    drop(st);
    inner.counters.breaks.fetch_add(1, Ordering::Relaxed);
    if via_rescan {
        inner.counters.breaks_via_rescan.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!(file = %entry.id, via_rescan, "lease break");
    inner.emit(LeaseEvent::Broken {
        file: entry.id,
        path: entry.path.clone(),
        arrived,
        deadline,
        via_rescan,
    });
    // A handler may have released the lease already (an idle region's revocation runs
    // on this thread): then there is no deadline to watch.
    let st = entry.state.lock();
    if st.generation != generation || !matches!(st.state, LeaseState::Breaking { .. }) {
        return;
    }
    drop(st);
    inner.rt.spawn(watch_deadline(
        Arc::downgrade(inner),
        Arc::downgrade(entry),
        arrived,
        deadline,
        generation,
    ));
}

/// At the deadline, if the break is still unreleased, the kernel has broken (or, for a
/// write lease broken by a reader, downgraded) the lease: report it as forced.
async fn watch_deadline(
    inner: Weak<Inner>,
    entry: Weak<Entry>,
    arrived: Instant,
    deadline: Instant,
    generation: u64,
) {
    tokio::time::sleep_until((deadline + FORCED_SLACK).into()).await;
    let (Some(inner), Some(entry)) = (inner.upgrade(), entry.upgrade()) else {
        return;
    };
    let mut st = entry.state.lock();
    if st.generation != generation || !matches!(st.state, LeaseState::Breaking { .. }) {
        return;
    }
    match raw::get_lease(entry.fd.as_fd()) {
        Ok(now) if now == entry.kind.raw() => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(file = %entry.id, "F_GETLEASE at the deadline failed: {e}");
            return;
        }
    }
    st.state = LeaseState::Forced { arrived };
    drop(st);
    inner.counters.forced.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(file = %entry.id, "lease break forced by the kernel");
    inner.emit(LeaseEvent::Forced {
        file: entry.id,
        path: entry.path.clone(),
        arrived,
        detected: Instant::now(),
    });
}
