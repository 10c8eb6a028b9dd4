//! The lease signal: waited for by the engine's break thread, handled everywhere else.
//!
//! Each lease directs its break signal at the break thread (`F_SETOWN_EX`), which blocks
//! the signal and takes it with `sigtimedwait` ([`wait`]), `si_fd` and all, as a bare
//! `sigwaitinfo` loop does. A signal can still reach another thread: one sent to the
//! *process* (a break in the moment between `F_SETLEASE` and `F_SETOWN_EX`, a user's
//! `kill`), which the kernel gives to any thread that does not block it. A library inside
//! a multi-threaded tokio runtime cannot make every thread block it, so this module also
//! installs an `SA_SIGINFO` handler. The handler only performs async-signal-safe work: it
//! writes the break's `si_fd` (4 bytes, atomic for a pipe) into a non-blocking self-pipe
//! and wakes the break thread (`tgkill`), which then drains the pipe. A plain `SIGIO`
//! (what the kernel sends when the real-time signal queue is full), a real-time signal
//! sent by a user (`kill`, `sigqueue`: no `si_fd`), or a full pipe sets the `RESCAN` flag
//! instead, and the break thread then checks every lease with `F_GETLEASE`.
//!
//! This is the one piece of global state the lease layer needs: signal dispositions are
//! per process. Once installed the handlers stay installed (restoring the default action
//! of a real-time signal or `SIGIO` would let a late break kill the process); with no
//! listener attached they only count.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

use nix::errno::Errno;

/// Written into the pipe when a rescan is needed (never a valid fd).
pub(crate) const RESCAN_MARK: i32 = -1;

static PIPE_WR: AtomicI32 = AtomicI32::new(-1);
static LEASE_SIG: AtomicI32 = AtomicI32::new(0);
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
static CLAIMED: AtomicBool = AtomicBool::new(false);
static RESCAN: AtomicBool = AtomicBool::new(false);
static INSTALLED_SIG: AtomicI32 = AtomicI32::new(0);
static N_LEASE_SIGNALS: AtomicU64 = AtomicU64::new(0);
static N_SIGIO: AtomicU64 = AtomicU64::new(0);
static N_PIPE_FULL: AtomicU64 = AtomicU64::new(0);
static N_DIRECT: AtomicU64 = AtomicU64::new(0);
/// The break thread (0: none), which the handler wakes after writing the pipe.
static BREAK_TID: AtomicI32 = AtomicI32::new(0);
/// The `SIGIO` handler the process had before ours (`sa_sigaction` and `sa_flags`),
/// called after ours: an application's own `O_ASYNC` handling keeps working.
static PREV_SIGIO: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_SIGIO_FLAGS: AtomicI32 = AtomicI32::new(0);

/// The `siginfo_t` prefix the kernel fills for `SIGPOLL`-style signals (`F_SETSIG`).
/// `repr(C)` gives the same layout as glibc's union member on 32- and 64-bit targets.
#[repr(C)]
struct SigPollInfo {
    si_signo: libc::c_int,
    si_errno: libc::c_int,
    si_code: libc::c_int,
    si_band: libc::c_long,
    si_fd: libc::c_int,
}

/// Counters kept by the handler (process-wide, since the handler is).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HandlerCounts {
    /// Lease signals that carried an `si_fd`.
    pub lease_signals: u64,
    /// Plain `SIGIO`s and fd-less lease signals: the overflow path.
    pub sigio: u64,
    /// Times the pipe was full.
    pub pipe_full: u64,
    /// Lease signals handled on the break thread they were directed at.
    pub direct: u64,
}

pub(crate) fn counts() -> HandlerCounts {
    HandlerCounts {
        lease_signals: N_LEASE_SIGNALS.load(Ordering::Relaxed),
        sigio: N_SIGIO.load(Ordering::Relaxed),
        pipe_full: N_PIPE_FULL.load(Ordering::Relaxed),
        direct: N_DIRECT.load(Ordering::Relaxed),
    }
}

pub(crate) fn sigset_of(sig: libc::c_int) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    set
}

/// Blocks `sig` in the calling thread (threads it spawns later inherit the mask).
pub(crate) fn block(sig: libc::c_int) -> Result<(), Errno> {
    let set = sigset_of(sig);
    // SAFETY: `set` is initialised; the old-mask pointer may be null.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 { Ok(()) } else { Err(Errno::from_raw(rc)) }
}

/// Makes the calling thread the break thread: it blocks `sig` (so the signals directed
/// at it wait for [`wait`]) and is the one the handler wakes.
pub(crate) fn become_break_thread(sig: libc::c_int) -> Result<libc::pid_t, Errno> {
    block(sig)?;
    let tid = nix::unistd::gettid().as_raw();
    BREAK_TID.store(tid, Ordering::Release);
    Ok(tid)
}

/// Waits up to `timeout` for `sig`, blocked in the calling thread (see
/// [`become_break_thread`]). `Some(fd)`: a lease break the kernel signalled for this
/// lease fd. `None`: anything else (the signal without a lease fd, the handler's wake-up
/// or a user's; the timeout; an interruption by a `SIGIO` handled on this thread): look
/// at the pipe and the rescan flag.
pub(crate) fn wait(
    sig: libc::c_int,
    timeout: std::time::Duration,
) -> Result<Option<libc::c_int>, Errno> {
    let set = sigset_of(sig);
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: a zeroed siginfo_t is valid output storage.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set`, `info` and `ts` are valid for the call.
    let rc = unsafe { libc::sigtimedwait(&set, &mut info, &ts) };
    match Errno::result(rc) {
        Ok(_) => {
            let (code, fd) = poll_fields(&info);
            if code > 0 && fd >= 0 {
                N_LEASE_SIGNALS.fetch_add(1, Ordering::Relaxed);
                N_DIRECT.fetch_add(1, Ordering::Relaxed);
                Ok(Some(fd))
            } else {
                Ok(None)
            }
        }
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Wakes the break thread (from the handler, or when the engine stops).
pub(crate) fn wake_break_thread() {
    let tid = BREAK_TID.load(Ordering::Acquire);
    let sig = LEASE_SIG.load(Ordering::Relaxed);
    if tid == 0 || sig == 0 {
        return;
    }
    // SAFETY: getpid(2) and tgkill(2) are async-signal-safe and take plain integers; a
    // tid that is gone (or not of this process) makes tgkill fail with ESRCH.
    unsafe {
        libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig);
    }
}

/// Clears and returns the rescan flag.
pub(crate) fn take_rescan() -> bool {
    RESCAN.swap(false, Ordering::AcqRel)
}

fn write_word(fd: i32, word: i32) -> bool {
    let bytes = word.to_ne_bytes();
    // SAFETY: write(2) is async-signal-safe; the buffer is a live 4-byte local. The fd
    // is the pipe's write end, kept open until `IN_HANDLER` drops to zero (see
    // `SignalSlot::drop`).
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    n == bytes.len() as isize
}

/// `(si_code, si_fd)` of a siginfo filled for a `SIGPOLL`-style signal.
fn poll_fields(info: &libc::siginfo_t) -> (libc::c_int, libc::c_int) {
    let p = (info as *const libc::siginfo_t).cast::<SigPollInfo>();
    // SAFETY: SigPollInfo is a prefix of the kernel's siginfo_t layout (which is 128
    // bytes), so the read stays inside `info`.
    unsafe { ((*p).si_code, (*p).si_fd) }
}

/// `si_fd` of a signal sent because of `F_SETSIG` (meaningless for other signals).
pub(crate) fn si_fd(info: &libc::siginfo_t) -> libc::c_int {
    poll_fields(info).1
}

/// Calls the `SIGIO` handler that was installed before ours, if it was a function.
fn chain_sigio(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREV_SIGIO.load(Ordering::Acquire);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        return;
    }
    if PREV_SIGIO_FLAGS.load(Ordering::Acquire) & libc::SA_SIGINFO != 0 {
        type Action = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
        // SAFETY: `prev` is the `sa_sigaction` of a previous SA_SIGINFO disposition, a
        // function of this signature (neither SIG_DFL nor SIG_IGN, checked above).
        let f: Action = unsafe { std::mem::transmute::<usize, Action>(prev) };
        f(sig, info, ctx);
    } else {
        type Handler = extern "C" fn(libc::c_int);
        // SAFETY: `prev` is the `sa_handler` of a previous plain disposition, a function
        // of this signature (checked above).
        let f: Handler = unsafe { std::mem::transmute::<usize, Handler>(prev) };
        f(sig);
    }
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let saved_errno = Errno::last_raw();
    let fd = PIPE_WR.load(Ordering::SeqCst);
    let mut routed = false;
    if sig == LEASE_SIG.load(Ordering::Relaxed) && !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
        // si_code > 0 means the kernel filled the SIGPOLL fields (si_band, si_fd);
        // user-sent signals have si_code <= 0.
        let (code, si_fd) = poll_fields(unsafe { &*info });
        if code > 0 && si_fd >= 0 {
            N_LEASE_SIGNALS.fetch_add(1, Ordering::Relaxed);
            routed = true;
            if fd >= 0 && !write_word(fd, si_fd) {
                N_PIPE_FULL.fetch_add(1, Ordering::Relaxed);
                // The break thread rescans when it finds the flag.
                RESCAN.store(true, Ordering::Release);
            }
        }
    }
    if !routed {
        N_SIGIO.fetch_add(1, Ordering::Relaxed);
        RESCAN.store(true, Ordering::Release);
        if fd >= 0 && !write_word(fd, RESCAN_MARK) {
            N_PIPE_FULL.fetch_add(1, Ordering::Relaxed);
        }
    }
    if fd >= 0 {
        wake_break_thread();
    }
    if sig == libc::SIGIO {
        // A plain SIGIO may be the application's (O_ASYNC) as well as the overflow of
        // our queue: the kernel sends both the same way. Its handler runs too.
        Errno::set_raw(saved_errno);
        chain_sigio(sig, info, ctx);
    }
    Errno::set_raw(saved_errno);
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
}

/// The disposition of `sig` now (`sa_sigaction`/`sa_handler` and `sa_flags`).
fn current(sig: libc::c_int) -> Result<(usize, libc::c_int), Errno> {
    // SAFETY: an all-zero sigaction is a valid out-value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a NULL new action only queries; `old` is a valid out-pointer.
    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    Errno::result(rc).map(|_| (old.sa_sigaction, old.sa_flags))
}

/// Installs our handler for `sig`.
fn install(sig: libc::c_int) -> Result<(), Errno> {
    // SAFETY: an all-zero sigaction is a valid starting value (empty mask, no flags).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_signal as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa.sa_mask is a valid sigset_t owned by us.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised, the old-action pointer may be null, and the
    // handler only does async-signal-safe work (atomics, write(2), the previous SIGIO
    // handler).
    let rc = unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
    Errno::result(rc).map(drop)
}

/// Installs the `SIGIO` handler, keeping the one it replaces to chain to (recorded
/// before ours is in place, so no SIGIO finds ours without it).
fn install_sigio() -> Result<(), Errno> {
    let (prev, flags) = current(libc::SIGIO)?;
    PREV_SIGIO_FLAGS.store(flags, Ordering::Release);
    PREV_SIGIO.store(prev, Ordering::Release);
    install(libc::SIGIO)
}

/// The claim on the process's lease signal: at most one exists at a time. Dropping it
/// detaches the pipe (the handlers stay installed and just count).
#[derive(Debug)]
pub(crate) struct SignalSlot {
    wr: Option<OwnedFd>,
}

/// Why the slot could not be claimed.
#[derive(Debug)]
pub(crate) enum ClaimError {
    /// Another listener is attached in this process.
    Busy,
    /// A different lease signal was installed by an earlier listener.
    SignalChanged,
    /// The process already handles (or ignores) the lease signal: it is not free.
    SignalInUse,
    /// `sigaction` failed.
    Sys(Errno),
}

impl SignalSlot {
    /// Installs the handler for `sig` and `SIGIO` (once per process) and attaches `wr`,
    /// the non-blocking write end of the listener's pipe. `sig` must be free (its
    /// disposition the default); the `SIGIO` handler it replaces is called after ours.
    pub(crate) fn claim(sig: libc::c_int, wr: OwnedFd) -> Result<SignalSlot, ClaimError> {
        if CLAIMED.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(ClaimError::Busy);
        }
        let release = || CLAIMED.store(false, Ordering::Release);
        let installed = INSTALLED_SIG.load(Ordering::Acquire);
        if installed != 0 && installed != sig {
            release();
            return Err(ClaimError::SignalChanged);
        }
        LEASE_SIG.store(sig, Ordering::Release);
        if installed == 0 {
            match current(sig) {
                Ok((libc::SIG_DFL, _)) => {}
                Ok(_) => {
                    release();
                    return Err(ClaimError::SignalInUse);
                }
                Err(e) => {
                    release();
                    return Err(ClaimError::Sys(e));
                }
            }
            if let Err(e) = install_sigio().and_then(|()| install(sig)) {
                release();
                return Err(ClaimError::Sys(e));
            }
            INSTALLED_SIG.store(sig, Ordering::Release);
        }
        RESCAN.store(false, Ordering::Release);
        PIPE_WR.store(wr.as_raw_fd(), Ordering::SeqCst);
        Ok(SignalSlot { wr: Some(wr) })
    }
}

impl Drop for SignalSlot {
    fn drop(&mut self) {
        PIPE_WR.store(-1, Ordering::SeqCst);
        // A handler that loaded the old fd may still be writing to it: wait until no
        // handler runs before closing, so the fd number cannot be reused under it.
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        drop(self.wr.take());
        CLAIMED.store(false, Ordering::Release);
    }
}
