//! After the release the lease comes back once the breaker is done, not before, and a
//! deleted or renamed file ends as gone.

use std::time::Duration;

use filemr::lease::{EngineConfig, GoneReason, LeaseEngine, LeaseEvent, LeaseKind, LeaseState};

use crate::common::{TempDir, helper, next_event, now_ns, quiet_for, run};

const T: Duration = Duration::from_secs(10);

#[test]
fn comes_back_after_the_breaker_closes_and_not_before() {
    run(|| async {
        let dir = TempDir::new("reacq");
        let path = dir.file("f", 4096);
        let cfg = EngineConfig::default();
        let bound = cfg.backoff_max;
        let engine = LeaseEngine::start_with(cfg).unwrap();
        let mut events = engine.subscribe();
        let lease = engine.acquire(&path, LeaseKind::Write).unwrap();
        let mut breaker = helper(
            "open_write",
            &[
                ("FILEMR_HELPER_PATH", path.display().to_string()),
                ("FILEMR_HELPER_MS", "400".into()),
            ],
        );
        let ev = next_event(&mut events, T).await;
        assert!(matches!(ev, LeaseEvent::Broken { .. }), "{ev:?}");
        engine.release(lease.file_id()).unwrap();
        breaker.expect("OPENED", T).await;
        // The breaker keeps the file open: no reacquire meanwhile.
        let early = quiet_for(&mut events, Duration::from_millis(250)).await;
        assert!(early.is_none(), "lease came back while the breaker had the file open: {early:?}");
        assert!(matches!(lease.state(), LeaseState::Reacquiring { .. }));
        let closed = breaker.expect_ns("CLOSED", T).await;
        let ev = next_event(&mut events, T).await;
        let seen = now_ns();
        let LeaseEvent::Reacquired { file, after_release, attempts, .. } = ev else {
            panic!("expected Reacquired, got {ev:?}");
        };
        assert_eq!(file, lease.file_id());
        let lag = Duration::from_nanos(seen.saturating_sub(closed));
        eprintln!(
            "reacquired {lag:?} after the breaker closed ({attempts} attempts, {after_release:?} after release)"
        );
        assert!(
            lag <= bound + Duration::from_millis(150),
            "reacquire lag {lag:?} beyond the backoff bound {bound:?}"
        );
        assert_eq!(lease.state(), LeaseState::Held);
        breaker.finish(T).await;
        // And the new lease works: a second break is delivered too.
        let again = helper(
            "open_write",
            &[("FILEMR_HELPER_PATH", path.display().to_string()), ("FILEMR_HELPER_MS", "0".into())],
        );
        let ev = next_event(&mut events, T).await;
        // Routed by its signal, not found by a rescan: the reacquire re-armed F_SETSIG
        // (F_UNLCK resets it to plain SIGIO).
        assert!(matches!(ev, LeaseEvent::Broken { via_rescan: false, .. }), "{ev:?}");
        assert_eq!(engine.stats().overflow_signals, 0);
        engine.release(lease.file_id()).unwrap();
        again.finish(T).await;
    });
}

async fn ends_gone(then: &str, want: GoneReason) {
    let dir = TempDir::new("gone");
    let path = dir.file("f", 4096);
    let engine = LeaseEngine::start().unwrap();
    let mut events = engine.subscribe();
    let lease = engine.acquire(&path, LeaseKind::Read).unwrap();
    let breaker = helper(
        "open_write",
        &[
            ("FILEMR_HELPER_PATH", path.display().to_string()),
            ("FILEMR_HELPER_MS", "50".into()),
            ("FILEMR_HELPER_THEN", then.into()),
        ],
    );
    let ev = next_event(&mut events, T).await;
    assert!(matches!(ev, LeaseEvent::Broken { .. }), "{ev:?}");
    engine.release(lease.file_id()).unwrap();
    let ev = next_event(&mut events, T).await;
    let LeaseEvent::Gone { file, reason, .. } = ev else {
        panic!("expected Gone, got {ev:?}");
    };
    assert_eq!(file, lease.file_id());
    assert_eq!(reason, want);
    assert_eq!(lease.state(), LeaseState::Gone(want));
    // A gone lease is out of the table: releasing it again is an error, not a panic.
    assert!(engine.release(file).is_err());
    breaker.finish(T).await;
}

#[test]
fn deleted_file_ends_gone() {
    run(|| ends_gone("unlink", GoneReason::Deleted));
}

#[test]
fn renamed_file_ends_gone() {
    run(|| ends_gone("rename", GoneReason::Renamed));
}
