//! The lease engine beside an application's own signal handlers (one process-wide
//! setup, so its own test binary): the engine refuses a break signal the application
//! already handles and takes another one chosen by config; the application's `SIGIO`
//! handler (for its `O_ASYNC` descriptors) is chained and keeps running; its real-time
//! handler is untouched; and breaks still arrive. Real leases on the host's file system.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use filemr::lease::{EngineConfig, LeaseEngine, LeaseError, LeaseEvent, LeaseKind};

static APP_SIGIO: AtomicU64 = AtomicU64::new(0);
static APP_RT: AtomicU64 = AtomicU64::new(0);

extern "C" fn app_sigio(_: libc::c_int) {
    APP_SIGIO.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn app_rt(_: libc::c_int) {
    APP_RT.fetch_add(1, Ordering::Relaxed);
}

fn handle(sig: libc::c_int, f: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with a plain handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn application_signal_handlers_keep_working_beside_the_lease_engine() {
    handle(libc::SIGIO, app_sigio);
    let default_sig = libc::SIGRTMIN() + EngineConfig::default().rt_signal_offset;
    handle(default_sig, app_rt);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();

    // The default break signal is the application's: refused, naming the setting.
    match LeaseEngine::start() {
        Err(LeaseError::Setup { op, errno }) => {
            assert_eq!(errno, nix::errno::Errno::EBUSY);
            assert!(op.contains("rt_signal_offset"), "{op}");
        }
        other => panic!("the engine took the application's signal: {other:?}"),
    }
    let cfg = EngineConfig { rt_signal_offset: 7, ..EngineConfig::default() };
    let engine = LeaseEngine::start_with(cfg).expect("a free signal");
    assert_eq!(engine.signal(), libc::SIGRTMIN() + 7);

    // The application's O_ASYNC pipe: its SIGIO reaches its handler through ours.
    let (rd, mut wr) = std::io::pipe().unwrap();
    // SAFETY: fcntl on a live fd of ours.
    unsafe {
        assert_eq!(libc::fcntl(rd.as_raw_fd(), libc::F_SETOWN, libc::getpid()), 0);
        let fl = libc::fcntl(rd.as_raw_fd(), libc::F_GETFL);
        assert_eq!(libc::fcntl(rd.as_raw_fd(), libc::F_SETFL, fl | libc::O_ASYNC), 0);
    }
    let before = APP_SIGIO.load(Ordering::Relaxed);
    wr.write_all(b"x").unwrap();
    wait_for("the application's SIGIO", || APP_SIGIO.load(Ordering::Relaxed) > before);

    // Its real-time handler is still its own.
    let before = APP_RT.load(Ordering::Relaxed);
    // SAFETY: raising a signal the process handles.
    assert_eq!(unsafe { libc::raise(default_sig) }, 0);
    wait_for("the application's real-time signal", || APP_RT.load(Ordering::Relaxed) > before);

    // Breaks still reach the engine, on its own signal.
    let dir = std::env::temp_dir().join(format!("filemr-signals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f");
    std::fs::write(&path, b"data").unwrap();
    let mut events = engine.subscribe();
    // A writer opens `lease`'s file: its break arrives (the `Reacquired` of an earlier
    // lease may come first), and is released.
    let mut break_and_release = |lease: &filemr::lease::Lease| {
        let path = lease.path().to_path_buf();
        let mut writer = std::process::Command::new("sh")
            .args(["-c", "exec 3>>\"$0\"", path.to_str().unwrap()])
            .spawn()
            .unwrap();
        let ev = rt
            .block_on(tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match events.recv().await {
                        Some(LeaseEvent::Reacquired { .. }) => {}
                        other => break other,
                    }
                }
            }))
            .expect("a break within 10 s")
            .expect("the engine's events");
        assert!(
            matches!(ev, LeaseEvent::Broken { file, via_rescan: false, .. } if file == lease.file_id()),
            "{ev:?}"
        );
        engine.release(lease.file_id()).unwrap();
        assert!(writer.wait().unwrap().success());
    };
    let lease = engine.acquire(&path, LeaseKind::Read).unwrap();
    break_and_release(&lease);
    drop(lease);
    let stats = engine.stats();
    assert_eq!((stats.signals, stats.direct_signals), (1, 1), "taken on the break thread");

    // A break signalled to the process instead (as in the moment between F_SETLEASE and
    // F_SETOWN_EX) lands on another thread: its handler passes it on, and it arrives.
    let path = dir.join("g");
    std::fs::write(&path, b"data").unwrap();
    let lease = engine.acquire(&path, LeaseKind::Read).unwrap();
    // SAFETY: fcntl on the lease's live fd.
    assert_eq!(unsafe { libc::fcntl(lease.fd().as_raw_fd(), libc::F_SETOWN, libc::getpid()) }, 0);
    break_and_release(&lease);
    let stats = engine.stats();
    assert_eq!((stats.signals, stats.direct_signals), (2, 1), "through the handler: {stats:?}");
    drop(lease);
    std::fs::remove_dir_all(&dir).unwrap();
}
