//! A holder that never releases: the kernel breaks the lease at lease-break-time and the
//! engine reports it as forced. Needs root (lowers the sysctl).

use std::time::{Duration, Instant};

use filemr::lease::{LEASE_BREAK_TIME, LeaseEngine, LeaseEvent, LeaseKind, LeaseState};

use crate::common::{SysctlGuard, TempDir, helper, is_root, next_event, run};

#[test]
#[ignore = "needs root: lowers /proc/sys/fs/lease-break-time; cargo xtask test runs it in the guest"]
fn kernel_forced_break_is_reported() {
    assert!(
        is_root(),
        "kernel_forced_break_is_reported needs root (it is ignored unless asked for)"
    );
    run(|| async {
        let _restore = SysctlGuard::set(LEASE_BREAK_TIME, "1");
        let dir = TempDir::new("forced");
        let path = dir.file("f", 4096);
        let engine = LeaseEngine::start().unwrap();
        let mut events = engine.subscribe();
        let lease = engine.acquire(&path, LeaseKind::Write).unwrap();
        let mut breaker = helper(
            "open_write",
            &[
                ("FILEMR_HELPER_PATH", path.display().to_string()),
                ("FILEMR_HELPER_MS", "300".into()),
            ],
        );
        let ev = next_event(&mut events, Duration::from_secs(5)).await;
        let LeaseEvent::Broken { arrived, deadline, .. } = ev else {
            panic!("expected Broken, got {ev:?}");
        };
        assert!((deadline - arrived).abs_diff(Duration::from_secs(1)) < Duration::from_millis(5));
        // Never release: the kernel gives up on us after a second.
        let ev = next_event(&mut events, Duration::from_secs(5)).await;
        let LeaseEvent::Forced { file, detected, .. } = ev else {
            panic!("expected Forced, got {ev:?}");
        };
        assert_eq!(file, lease.file_id());
        assert!(detected >= deadline, "forced reported before the deadline");
        assert!(detected - deadline < Duration::from_millis(500));
        breaker.expect("OPENED", Duration::from_secs(5)).await;
        assert!(matches!(lease.state(), LeaseState::Forced { .. }));
        let report = engine.release(file).unwrap();
        assert!(report.forced, "{report:?}");
        assert!(report.since_break >= Duration::from_secs(1));
        let t = Instant::now();
        let ev = next_event(&mut events, Duration::from_secs(5)).await;
        assert!(matches!(ev, LeaseEvent::Reacquired { .. }), "{ev:?}");
        eprintln!(
            "forced after {:?}; reacquired {:?} after release",
            report.since_break,
            t.elapsed()
        );
        assert_eq!(engine.stats().forced, 1);
        breaker.finish(Duration::from_secs(5)).await;
    });
}
