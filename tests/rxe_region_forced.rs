//! The forced revocation path, in its own process: it lowers the system-wide
//! `lease-break-time`, which would shorten every other test's deadline.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;

use std::time::{Duration, Instant};

use filemr::region::{Access, RegionEventKind, RevokeReason};
use guest::GuestEnv;
use region_support::*;

const BREAK_TIME: &str = "/proc/sys/fs/lease-break-time";

/// Sets `lease-break-time` and restores it on drop (also when the test panics).
struct BreakTime(String);

impl BreakTime {
    fn set(secs: u32) -> BreakTime {
        let old = std::fs::read_to_string(BREAK_TIME).unwrap();
        std::fs::write(BREAK_TIME, secs.to_string()).unwrap();
        BreakTime(old.trim().to_string())
    }
}

impl Drop for BreakTime {
    fn drop(&mut self) {
        let _ = std::fs::write(BREAK_TIME, &self.0);
    }
}

/// MR lines of `rdma resource show mr` that carry `rkey`.
fn mr_lines_with(rkey: u32) -> Vec<String> {
    let out = std::process::Command::new("rdma")
        .args(["resource", "show", "mr"])
        .output()
        .expect("run rdma resource show mr");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = format!("rkey 0x{rkey:x} ");
    text.lines().filter(|l| format!("{l} ").contains(&key)).map(String::from).collect()
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn guard_held_forever_is_forced_and_no_mr_remains() {
    let env = GuestEnv::get();
    let _bt = BreakTime::set(2);
    for dir in [&env.pagecache_dir, &env.dax_dir] {
        let path = make_file(dir, "forced", 65536, 4);
        let region = register(&path, 0, 65536, Access::ReadWrite).unwrap();
        let info = region.info();
        assert_eq!(
            mr_lines_with(info.rkey).len(),
            1,
            "the region's MR is listed by rdma resource show mr"
        );
        let mut events = region.events();
        let held = region.guard().unwrap();
        let stamp = guest::unique_path(&std::env::temp_dir(), "forced-stamp");
        let start = Instant::now();
        let child = breaker("open-write", &path, &[stamp.to_str().unwrap()]);
        let ev = wait_event(&mut events, Duration::from_secs(10), "Revoked", is_revoked);
        let RegionEventKind::Revoked { reason, forced, .. } = ev.kind else { unreachable!() };
        assert_eq!(reason, RevokeReason::LeaseBroken);
        assert!(forced, "a guard was held past the deadline: must be forced");
        assert!(start.elapsed() < Duration::from_secs(4));
        assert!(
            mr_lines_with(info.rkey).is_empty(),
            "an MR with the revoked rkey remains: {:?}",
            mr_lines_with(info.rkey)
        );
        // The breaker proceeds.
        wait_child(child, Duration::from_secs(10));
        assert!(stamp.exists());
        let ev = wait_event(&mut events, WAIT, "Rebuilt", is_rebuilt);
        let RegionEventKind::Rebuilt { rkey, .. } = ev.kind else { unreachable!() };
        assert_ne!(rkey, info.rkey);
        // The stale guard does not hold the new generation.
        drop(held);
        assert_eq!(region.guards_held(), 0);
        drop(region.guard().unwrap());
        drop(region);
        let m = metrics_text();
        assert!(
            m.contains("filemr_region_revocations_total{reason=\"lease_broken\",forced=\"true\"}"),
            "{m}"
        );
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(stamp);
    }
}
