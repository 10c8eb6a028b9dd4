//! A break arrives for the right file, the breaker waits for the release, then
//! proceeds; the break-to-release time is reported.

use std::time::Duration;

use filemr::lease::{LeaseEngine, LeaseEvent, LeaseKind, LeaseState};

use crate::common::{TempDir, helper, next_event, now_ns, run};

const T: Duration = Duration::from_secs(10);

#[test]
fn open_for_write_breaker_waits_for_release() {
    run(|| async {
        let dir = TempDir::new("openw");
        let other = dir.file("other", 4096);
        let path = dir.file("f", 4096);
        let engine = LeaseEngine::start().unwrap();
        let mut events = engine.subscribe();
        let _other = engine.acquire(&other, LeaseKind::Read).unwrap();
        let lease = engine.acquire(&path, LeaseKind::Read).unwrap();
        let mut breaker = helper(
            "open_write",
            &[("FILEMR_HELPER_PATH", path.display().to_string()), ("FILEMR_HELPER_MS", "0".into())],
        );
        let started = breaker.expect_ns("START", T).await;
        let ev = next_event(&mut events, T).await;
        let LeaseEvent::Broken { file, arrived, deadline, via_rescan, .. } = ev else {
            panic!("expected Broken, got {ev:?}");
        };
        assert_eq!(file, lease.file_id(), "the break names the right file");
        assert!(!via_rescan);
        let budget = filemr::lease::lease_break_time();
        let d = deadline - arrived;
        assert!(d.abs_diff(budget) < Duration::from_millis(5), "deadline {d:?} vs {budget:?}");
        assert!(matches!(lease.state(), LeaseState::Breaking { .. }));
        // The breaker stays blocked while we hold the lease.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(breaker.child.try_wait().unwrap().is_none(), "breaker got through before release");
        let released_ns = now_ns();
        let report = engine.release(file).unwrap();
        assert!(!report.forced);
        assert!(report.since_break >= Duration::from_millis(100), "{report:?}");
        let opened = breaker.expect_ns("OPENED", T).await;
        assert!(opened >= released_ns, "breaker opened before the release");
        eprintln!(
            "break after {:.1} ms, released {:?} after break, breaker proceeded {:.1} ms after release",
            (now_ns() - started) as f64 / 1e6,
            report.since_break,
            (opened - released_ns) as f64 / 1e6
        );
        breaker.finish(T).await;
        // The other lease was untouched.
        assert_eq!(engine.state(_other.file_id()), Some(LeaseState::Held));
        // The break's signal was handled on the engine's break thread, not elsewhere.
        let stats = engine.stats();
        assert_eq!((stats.signals, stats.direct_signals), (1, 1), "{stats:?}");
    });
}

#[test]
fn truncate_breaker_waits_and_reacquire_sees_the_new_size() {
    run(|| async {
        let dir = TempDir::new("trunc");
        let path = dir.file("f", 1 << 16);
        let engine = LeaseEngine::start().unwrap();
        let mut events = engine.subscribe();
        let lease = engine.acquire(&path, LeaseKind::Write).unwrap();
        let mut breaker = helper("truncate", &[("FILEMR_HELPER_PATH", path.display().to_string())]);
        let ev = next_event(&mut events, T).await;
        assert!(matches!(ev, LeaseEvent::Broken { file, .. } if file == lease.file_id()), "{ev:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            nix::sys::stat::fstat(lease.fd()).unwrap().st_size,
            1 << 16,
            "truncated before release"
        );
        let released_ns = now_ns();
        let report = engine.release(lease.file_id()).unwrap();
        let truncated = breaker.expect_ns("TRUNCATED", T).await;
        assert!(truncated >= released_ns);
        let ev = next_event(&mut events, T).await;
        assert!(matches!(ev, LeaseEvent::Reacquired { .. }), "{ev:?}");
        // Never back before the truncate took effect.
        assert_eq!(nix::sys::stat::fstat(lease.fd()).unwrap().st_size, 0);
        assert_eq!(lease.state(), LeaseState::Held);
        eprintln!(
            "truncate: released {:?} after break; truncate done {:.1} ms after release",
            report.since_break,
            (truncated - released_ns) as f64 / 1e6
        );
        breaker.finish(T).await;
    });
}
