//! The engine: acquiring, sharing, releasing and dropping leases.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::inotify::{InitFlags, Inotify, WatchDescriptor};
use nix::sys::stat::{FileStat, Mode, SFlag};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::entry::{Entry, Lease, LeaseKind, LeaseState};
use super::{
    EngineConfig, EngineStats, FileId, LeaseError, LeaseEvent, LeaseEvents, LeaseResult,
    ReleaseReport, break_thread, config, reacquire,
};
use crate::sys::io_errno;
use crate::sys::lease::{self as raw, RawLease};
use crate::sys::reactor::{self, InotifyFd};
use crate::sys::signal::{self, ClaimError, SignalSlot};

/// A subscriber called where the event happens (`LeaseEngine::on_event`).
type Handler = Arc<dyn Fn(&LeaseEvent) + Send + Sync>;

/// Leases by file and by fd. The fd map is what break signals are routed through.
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) by_id: HashMap<FileId, Arc<Entry>>,
    pub(crate) by_fd: HashMap<RawFd, Arc<Entry>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) rescans: AtomicU64,
    pub(crate) breaks: AtomicU64,
    pub(crate) breaks_via_rescan: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) forced: AtomicU64,
    pub(crate) reacquired: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) cfg: EngineConfig,
    pub(crate) sig: libc::c_int,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) table: Mutex<Table>,
    acquire_gate: Mutex<()>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<LeaseEvent>>>,
    handlers: Mutex<Vec<Handler>>,
    /// The break thread (`break_thread`), which every lease's break signal is directed at.
    break_tid: libc::pid_t,
    pub(crate) break_time: config::BreakTime,
    pub(crate) counters: Counters,
    pub(crate) inotify: Arc<AsyncFd<InotifyFd>>,
    pub(crate) watches: Mutex<HashMap<WatchDescriptor, Arc<Entry>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Handler counts when this engine started (they are process-wide).
    counts_at_start: signal::HandlerCounts,
    _slot: SignalSlot,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().drain(..) {
            t.abort();
        }
        // The break thread finds the engine gone and stops.
        signal::wake_break_thread();
    }
}

/// The lease engine: a cheap, clonable handle. One engine (one break thread) runs per
/// process at a time, because the break signal's handler is process-wide; it stops when
/// the last engine handle and the last [`Lease`] are gone.
#[derive(Clone)]
pub struct LeaseEngine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaseEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseEngine")
            .field("signal", &self.inner.sig)
            .field("stats", &self.stats())
            .finish()
    }
}

fn setup(op: &'static str) -> impl Fn(Errno) -> LeaseError {
    move |errno| LeaseError::Setup { op, errno }
}

impl LeaseEngine {
    /// Starts the engine with the default [`EngineConfig`]. Must be called inside a
    /// tokio runtime with I/O and time enabled.
    pub fn start() -> LeaseResult<LeaseEngine> {
        Self::start_with(EngineConfig::default())
    }

    /// Starts the engine: installs the process-wide break signal handler (once per
    /// process), starts the break thread, and spawns the inotify reader on the current
    /// tokio runtime. Fails with [`LeaseError::AlreadyRunning`] while another engine
    /// lives in this process.
    pub fn start_with(cfg: EngineConfig) -> LeaseResult<LeaseEngine> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| LeaseError::NoRuntime)?;
        let sig = libc::SIGRTMIN().saturating_add(cfg.rt_signal_offset);
        if cfg.rt_signal_offset < 0 || sig > libc::SIGRTMAX() {
            return Err(LeaseError::Setup {
                op: "choose the lease signal (SIGRTMIN + rt_signal_offset)",
                errno: Errno::EINVAL,
            });
        }
        let (rd, wr) =
            nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(setup("pipe2"))?;
        let cap = i32::try_from(cfg.pipe_capacity).unwrap_or(i32::MAX);
        if let Err(e) = nix::fcntl::fcntl(&wr, FcntlArg::F_SETPIPE_SZ(cap)) {
            tracing::debug!("F_SETPIPE_SZ({cap}) failed: {e}; keeping the default pipe size");
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(setup("inotify_init1"))?;
        let inotify = {
            let _guard = rt.enter();
            reactor::register_inotify(inotify).map_err(|e| LeaseError::Setup {
                op: "register inotify with tokio",
                errno: io_errno(&e),
            })?
        };
        let slot = SignalSlot::claim(sig, wr).map_err(|e| match e {
            ClaimError::Busy => LeaseError::AlreadyRunning,
            ClaimError::SignalChanged => LeaseError::Setup {
                op: "use a lease signal other than the one installed earlier in this process",
                errno: Errno::EINVAL,
            },
            ClaimError::SignalInUse => LeaseError::Setup {
                op: "claim the lease signal SIGRTMIN + rt_signal_offset: the process already \
                     handles or ignores it; choose a free one (EngineConfig::rt_signal_offset)",
                errno: Errno::EBUSY,
            },
            ClaimError::Sys(errno) => LeaseError::Setup { op: "sigaction", errno },
        })?;
        // Started after the claim; it stops once the engine is gone (`Inner::drop` wakes
        // it).
        let (weak_tx, weak_rx) = std::sync::mpsc::channel();
        let break_tid = break_thread::spawn(rd, sig, weak_rx).map_err(|e| LeaseError::Setup {
            op: "start the lease break thread",
            errno: io_errno(&e),
        })?;
        let inner = Arc::new(Inner {
            cfg,
            sig,
            rt: rt.clone(),
            table: Mutex::new(Table::default()),
            acquire_gate: Mutex::new(()),
            subscribers: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
            break_tid,
            break_time: config::BreakTime::open(),
            counters: Counters::default(),
            inotify: Arc::new(inotify),
            watches: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            counts_at_start: signal::counts(),
            _slot: slot,
        });
        let weak = Arc::downgrade(&inner);
        let _ = weak_tx.send(weak.clone());
        let ino = rt.spawn(reacquire::inotify_reader(weak, inner.inotify.clone()));
        inner.tasks.lock().push(ino);
        tracing::debug!(signal = sig, "lease engine started");
        Ok(LeaseEngine { inner })
    }

    /// Takes a lease on `path` (following symlinks), or shares the lease this engine
    /// already holds on the same file. A read acquisition shares an existing write
    /// lease; a write acquisition of a file leased for reading fails with
    /// [`LeaseError::UpgradeUnsupported`].
    pub fn acquire(&self, path: impl AsRef<Path>, kind: LeaseKind) -> LeaseResult<Lease> {
        self.inner
            .acquire(path.as_ref(), kind)
            .map(|entry| Lease { inner: self.inner.clone(), entry })
    }

    /// Releases the lease on `file` after a break (`F_UNLCK`), reports how long it took
    /// from the break, and starts reacquiring it once the breaker is done (see
    /// [`LeaseEvent::Reacquired`] and [`LeaseEvent::Gone`]).
    pub fn release(&self, file: FileId) -> LeaseResult<ReleaseReport> {
        let entry = self.inner.table.lock().by_id.get(&file).cloned();
        match entry {
            Some(entry) => self.inner.release_entry(&entry),
            None => Err(LeaseError::UnknownFile { file }),
        }
    }

    /// Subscribes to the engine's events. Subscribe before acquiring: events are not
    /// replayed.
    pub fn subscribe(&self) -> LeaseEvents {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.subscribers.lock().push(tx);
        LeaseEvents { rx }
    }

    /// Calls `handler` with every event from now on, where the event happens: on the
    /// engine's break thread for [`LeaseEvent::Broken`] (before the engine looks at the
    /// break's deadline), on a runtime worker for the others. A handler must return soon
    /// and never block on the runtime: the next break waits for it. This is how the
    /// region manager revokes an idle region without a hop through the runtime.
    pub fn on_event(&self, handler: impl Fn(&LeaseEvent) + Send + Sync + 'static) {
        self.inner.handlers.lock().push(Arc::new(handler));
    }

    /// The state of the lease on `file`, if this engine holds one.
    pub fn state(&self, file: FileId) -> Option<LeaseState> {
        let entry = self.inner.table.lock().by_id.get(&file).cloned();
        entry.map(|e| e.state.lock().state)
    }

    /// The real-time signal number breaks are delivered with.
    pub fn signal(&self) -> i32 {
        self.inner.sig
    }

    /// Counters (see [`EngineStats`]).
    pub fn stats(&self) -> EngineStats {
        let c = &self.inner.counters;
        let h = signal::counts();
        let h0 = self.inner.counts_at_start;
        EngineStats {
            leases: self.inner.table.lock().by_id.len(),
            signals: h.lease_signals - h0.lease_signals,
            direct_signals: h.direct - h0.direct,
            overflow_signals: h.sigio - h0.sigio,
            pipe_full: h.pipe_full - h0.pipe_full,
            rescans: c.rescans.load(Ordering::Relaxed),
            breaks: c.breaks.load(Ordering::Relaxed),
            breaks_via_rescan: c.breaks_via_rescan.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            forced: c.forced.load(Ordering::Relaxed),
            reacquired: c.reacquired.load(Ordering::Relaxed),
        }
    }
}

/// Maps an `F_SETLEASE` failure to the typed error.
pub(crate) fn classify_setlease(
    path: &Path,
    kind: LeaseKind,
    errno: Errno,
    leases_enabled: Option<bool>,
) -> LeaseError {
    let path = path.to_path_buf();
    match errno {
        Errno::EAGAIN => match kind {
            LeaseKind::Write => LeaseError::OtherOpenExists { path, errno },
            LeaseKind::Read => LeaseError::WriterHasFileOpen { path, errno },
        },
        Errno::EACCES => LeaseError::PermissionDenied { path, errno },
        Errno::EINVAL if leases_enabled == Some(false) => {
            LeaseError::LeasesDisabled { path, errno }
        }
        Errno::EINVAL => LeaseError::Unsupported { path, errno },
        _ => LeaseError::Sys { path, op: "fcntl(F_SETLEASE)", errno },
    }
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

impl Inner {
    pub(crate) fn emit(&self, ev: LeaseEvent) {
        let handlers = self.handlers.lock().clone();
        for h in handlers {
            h(&ev);
        }
        self.subscribers.lock().retain(|tx| tx.send(ev.clone()).is_ok());
    }

    /// Directs the break signal of `fd`'s new lease at the break thread (best effort:
    /// the handler routes a break that reaches another thread through the pipe too).
    pub(crate) fn direct_breaks(&self, fd: BorrowedFd<'_>) {
        if let Err(e) = raw::set_owner_thread(fd, self.break_tid) {
            tracing::debug!("F_SETOWN_EX failed: {e}; breaks reach any thread");
        }
    }

    fn acquire(&self, path: &Path, kind: LeaseKind) -> LeaseResult<Arc<Entry>> {
        let sys =
            |op: &'static str| move |errno| LeaseError::Sys { path: path.to_path_buf(), op, errno };
        let not_regular =
            || LeaseError::NotRegularFile { path: path.to_path_buf(), errno: Errno::EINVAL };
        // Serialise acquisitions: two concurrent first acquisitions of one file would
        // both open it, and the second open would break the first one's lease.
        let _gate = self.acquire_gate.lock();
        for _ in 0..3 {
            // Look the file up *before* opening it: our own open would break our lease.
            let st = nix::sys::stat::stat(path).map_err(sys("stat"))?;
            if !is_regular(&st) {
                return Err(not_regular());
            }
            let id = FileId::from_stat(&st);
            if let Some(entry) = self.share(path, id, kind)? {
                return Ok(entry);
            }
            let access = match kind {
                LeaseKind::Read => OFlag::O_RDONLY,
                LeaseKind::Write => OFlag::O_RDWR,
            };
            let fd: OwnedFd = nix::fcntl::open(
                path,
                access | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
                Mode::empty(),
            )
            .map_err(|errno| match errno {
                Errno::EAGAIN => LeaseError::LeasedElsewhere { path: path.to_path_buf(), errno },
                _ => LeaseError::Sys { path: path.to_path_buf(), op: "open", errno },
            })?;
            let st = nix::sys::stat::fstat(&fd).map_err(sys("fstat"))?;
            if !is_regular(&st) {
                return Err(not_regular());
            }
            if FileId::from_stat(&st) != id {
                // The path changed between stat and open: look again.
                continue;
            }
            nix::fcntl::fcntl(&fd, FcntlArg::F_SETFL(access)).map_err(sys("fcntl(F_SETFL)"))?;
            // Hold the table lock across F_SETLEASE and the insertion, so the break thread
            // cannot see a break for this fd before the entry is routable.
            let mut table = self.table.lock();
            raw::set_sig(fd.as_fd(), self.sig).map_err(sys("fcntl(F_SETSIG)"))?;
            raw::set_lease(fd.as_fd(), kind.raw())
                .map_err(|e| classify_setlease(path, kind, e, config::leases_enabled()))?;
            self.direct_breaks(fd.as_fd());
            let raw_fd = fd.as_raw_fd();
            let entry = Arc::new(Entry::new(id, Arc::from(path), kind, fd));
            table.by_id.insert(id, entry.clone());
            table.by_fd.insert(raw_fd, entry.clone());
            tracing::debug!(file = %id, path = %path.display(), ?kind, "lease acquired");
            return Ok(entry);
        }
        Err(LeaseError::Sys {
            path: path.to_path_buf(),
            op: "open (the path kept changing)",
            errno: Errno::EAGAIN,
        })
    }

    /// Adds a reference to the lease on `id` if this engine holds one.
    fn share(&self, path: &Path, id: FileId, kind: LeaseKind) -> LeaseResult<Option<Arc<Entry>>> {
        let table = self.table.lock();
        let Some(entry) = table.by_id.get(&id) else {
            return Ok(None);
        };
        if entry.kind == LeaseKind::Read && kind == LeaseKind::Write {
            return Err(LeaseError::UpgradeUnsupported { path: path.to_path_buf() });
        }
        entry.refs.fetch_add(1, Ordering::AcqRel);
        Ok(Some(entry.clone()))
    }

    pub(crate) fn release_entry(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
    ) -> LeaseResult<ReleaseReport> {
        let now = Instant::now();
        let mut st = entry.state.lock();
        let (arrived, was_forced) = match st.state {
            LeaseState::Breaking { arrived, .. } => (arrived, false),
            LeaseState::Forced { arrived } => (arrived, true),
            _ => {
                return Err(LeaseError::NoBreakPending { path: entry.path.to_path_buf() });
            }
        };
        // F_UNLCK on a lease the kernel already removed fails with EAGAIN: that is how
        // a forced break shows up here if the deadline timer has not seen it yet.
        let forced = match raw::set_lease(entry.fd.as_fd(), RawLease::Unlocked) {
            Ok(()) => was_forced,
            Err(Errno::EAGAIN) => true,
            Err(errno) => {
                return Err(LeaseError::Sys {
                    path: entry.path.to_path_buf(),
                    op: "fcntl(F_SETLEASE, F_UNLCK)",
                    errno,
                });
            }
        };
        st.state = LeaseState::Reacquiring { released: now };
        drop(st);
        if forced && !was_forced {
            // Counted, not announced: the releaser learns it from the report. An event
            // here would start a second revocation racing the rebuild that follows this
            // release (it could revoke the rebuilt region with no break pending).
            self.counters.forced.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(file = %entry.id, forced, "lease released");
        self.rt.spawn(reacquire::run(self.clone(), entry.clone(), now));
        Ok(ReleaseReport { since_break: now.saturating_duration_since(arrived), forced })
    }

    pub(crate) fn drop_ref(&self, entry: &Arc<Entry>) {
        let mut table = self.table.lock();
        if entry.refs.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        Self::unlink(&mut table, entry);
        drop(table);
        let mut st = entry.state.lock();
        let old = std::mem::replace(&mut st.state, LeaseState::Closed);
        if matches!(old, LeaseState::Held | LeaseState::Breaking { .. }) {
            // Closing the fd would release it too, but a reacquire task may briefly
            // keep the entry (and its fd) alive.
            let _ = raw::set_lease(entry.fd.as_fd(), RawLease::Unlocked);
        }
        drop(st);
        entry.wake.notify_one();
        tracing::debug!(file = %entry.id, "lease closed");
    }

    /// Removes `entry` from the table if it is the one registered there.
    pub(crate) fn unlink(table: &mut Table, entry: &Arc<Entry>) {
        if table.by_id.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            table.by_id.remove(&entry.id);
        }
        let fd = entry.fd.as_raw_fd();
        if table.by_fd.get(&fd).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            table.by_fd.remove(&fd);
        }
    }
}
