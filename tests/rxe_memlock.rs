//! `RLIMIT_MEMLOCK` for real: a child process of this test gives up root (uid and gid
//! 65534, so no `CAP_IPC_LOCK`) under a 1 MiB locked-memory limit. Without a budget, a
//! 4 MiB staging registration fails in `ibv_reg_mr` and the error names the limit; with
//! `ManagerConfig::memlock_budget` the registration beyond it is refused up front, and
//! the budget comes back when a region is dropped.

#[path = "guest/mod.rs"]
mod guest;

use std::time::Duration;

use filemr::region::{Access, Manager, ManagerConfig, RegionError};
use guest::GuestEnv;
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
use prometheus_client::registry::Registry;

const LIMIT: u64 = 1 << 20;
const NOBODY: u32 = 65534;
const KIB: usize = 1024;

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn memlock_limit_and_budget_as_an_unprivileged_user() {
    let env = GuestEnv::get();
    for dir in [&env.pagecache_dir, &env.dax_dir] {
        let path = guest::unique_path(dir, "memlock");
        std::fs::write(&path, vec![7u8; 4096 * KIB]).unwrap();
        // The lease needs the file's owner (or CAP_LEASE).
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["memlock_reexec_entry", "--exact", "--ignored", "--nocapture"])
            .arg("--test-threads=1")
            .env("FILEMR_MEMLOCK_FILE", &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {}\n{stdout}\n{stderr}", dir.display(), out.status);
        assert!(stdout.contains("memlock checks passed"), "{stdout}\n{stderr}");
        std::fs::remove_file(&path).unwrap();
    }
}

/// The unprivileged side, run in a child process when `FILEMR_MEMLOCK_FILE` is set; a
/// no-op otherwise (the harness skips `*reexec_entry`).
#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn memlock_reexec_entry() {
    let Some(file) = std::env::var_os("FILEMR_MEMLOCK_FILE") else { return };
    let file = std::path::PathBuf::from(file);
    setrlimit(Resource::RLIMIT_MEMLOCK, LIMIT, LIMIT).unwrap();
    setgroups(&[]).unwrap();
    setgid(Gid::from_raw(NOBODY)).unwrap();
    setuid(Uid::from_raw(NOBODY)).unwrap();
    assert_eq!(Uid::effective().as_raw(), NOBODY);
    let device = GuestEnv::get().device;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let manager = |budget: Option<u64>| {
        let mut cfg = ManagerConfig::new(&device);
        cfg.in_place = false; // staging: every region locks its length
        cfg.memlock_budget = budget;
        Manager::new(cfg, &mut Registry::default()).expect("manager as uid 65534")
    };

    // No budget: the kernel's limit stops ibv_reg_mr, and the error says so.
    let mgr = manager(None);
    match mgr.register(&file, 0, 4096 * KIB, Access::ReadWrite) {
        Err(e @ RegionError::MemlockLimit { limit: LIMIT, .. }) => {
            let msg = e.to_string();
            assert_eq!(e.errno(), nix::errno::Errno::ENOMEM);
            assert!(msg.contains("RLIMIT_MEMLOCK is 1048576 bytes"), "{msg}");
            assert!(msg.contains("range 0+4194304"), "{msg}");
            println!("without a budget: {msg}");
        }
        other => panic!("a 4 MiB staging region under a 1 MiB limit: {other:?}"),
    }
    assert_eq!(mgr.locked_bytes(), 0, "a failed registration gives its reservation back");
    // Within the limit it works (the process is really unprivileged, not broken).
    let small = mgr.register(&file, 0, 256 * KIB, Access::ReadWrite).unwrap();
    drop(small);
    drop(mgr);
    std::thread::sleep(Duration::from_millis(50));

    // A budget of 512 KiB: refused up front, before ibv_reg_mr, and given back on drop.
    let mgr = manager(Some(512 * KIB as u64));
    let a = mgr.register(&file, 0, 256 * KIB, Access::ReadWrite).unwrap();
    assert_eq!(mgr.locked_bytes(), 256 * KIB as u64);
    match mgr.register(&file, 256 * KIB as u64, 512 * KIB, Access::ReadWrite) {
        Err(e @ RegionError::MemlockBudget { needed, used, budget, .. }) => {
            assert_eq!((needed, used, budget), (512 * 1024, 256 * 1024, 512 * 1024));
            assert_eq!(e.errno(), nix::errno::Errno::ENOMEM);
            println!("with a budget: {e}");
        }
        other => panic!("beyond the budget: {other:?}"),
    }
    assert_eq!(mgr.locked_bytes(), 256 * KIB as u64, "the refusal reserved nothing");
    drop(a);
    assert_eq!(mgr.locked_bytes(), 0);
    let b = mgr.register(&file, 256 * KIB as u64, 512 * KIB, Access::ReadWrite).unwrap();
    assert_eq!(mgr.locked_bytes(), 512 * KIB as u64);
    drop(b);
    drop(mgr);
    println!("memlock checks passed");
}
