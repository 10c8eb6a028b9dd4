//! Many concurrent breaks: each delivered exactly once, every breaker finishes; and the
//! signal-queue overflow path (RLIMIT_SIGPENDING lowered in a holder child) loses none.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::time::{Duration, Instant};

use filemr::lease::{LeaseEngine, LeaseEvent, LeaseKind};

use crate::common::{TempDir, helper, next_event, raise_nofile, run};

const N: usize = 1000;

#[test]
fn thousand_concurrent_breaks_each_delivered_once() {
    raise_nofile();
    run(|| async {
        let dir = TempDir::new("storm");
        for i in 0..N {
            dir.file(&i.to_string(), 64);
        }
        let engine = LeaseEngine::start().unwrap();
        let mut events = engine.subscribe();
        let leases: Vec<_> = (0..N)
            .map(|i| engine.acquire(dir.0.join(i.to_string()), LeaseKind::Write).unwrap())
            .collect();
        let t0 = Instant::now();
        let breaker = helper(
            "storm",
            &[
                ("FILEMR_HELPER_PATH", dir.0.display().to_string()),
                ("FILEMR_HELPER_N", N.to_string()),
            ],
        );
        let mut broken: HashMap<_, u32> = HashMap::new();
        let mut reacquired = 0;
        while reacquired < N {
            match next_event(&mut events, Duration::from_secs(30)).await {
                LeaseEvent::Broken { file, .. } => {
                    *broken.entry(file).or_default() += 1;
                    engine.release(file).unwrap();
                }
                LeaseEvent::Reacquired { .. } => reacquired += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        breaker.finish(Duration::from_secs(30)).await;
        let elapsed = t0.elapsed();
        assert!(crate::common::quiet_for(&mut events, Duration::from_millis(200)).await.is_none());
        assert_eq!(broken.len(), N, "every file broken");
        assert!(broken.values().all(|&c| c == 1), "a break delivered twice");
        let s = engine.stats();
        assert_eq!(s.breaks, N as u64);
        assert_eq!(s.reacquired, N as u64);
        eprintln!("{N} breaks delivered, released and reacquired in {elapsed:?}; {s:?}");
        drop(leases);
        assert_eq!(engine.stats().leases, 0);
    });
}

/// The holder child lowers RLIMIT_SIGPENDING, so real-time lease signals fail to queue
/// and the kernel falls back to plain SIGIO; this process breaks all its leases with one
/// blocking opener thread each.
async fn overflow_run(sigpending: u64, n: usize) -> HashMap<String, u64> {
    let dir = TempDir::new("overflow");
    for i in 0..n {
        dir.file(&i.to_string(), 64);
    }
    let mut holder = helper(
        "overflow_holder",
        &[
            ("FILEMR_HELPER_PATH", dir.0.display().to_string()),
            ("FILEMR_HELPER_N", n.to_string()),
            ("FILEMR_HELPER_SIGPENDING", sigpending.to_string()),
        ],
    );
    holder.expect("READY", Duration::from_secs(20)).await;
    let openers: Vec<_> = (0..n)
        .map(|i| {
            let p = dir.0.join(i.to_string());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || drop(OpenOptions::new().write(true).open(p).expect("open")))
                .unwrap()
        })
        .collect();
    let line = holder.expect("RESULT", Duration::from_secs(40)).await;
    for t in openers {
        t.join().unwrap();
    }
    holder.finish(Duration::from_secs(10)).await;
    eprintln!("RLIMIT_SIGPENDING={sigpending}: {line}");
    line.split_whitespace()
        .skip(1)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn signal_queue_overflow_loses_nothing() {
    run(|| async {
        let n = 200u64;
        // No queue at all: every break takes the SIGIO + F_GETLEASE rescan path.
        let r = overflow_run(0, n as usize).await;
        assert_eq!(r["unique"], n, "{r:?}");
        assert_eq!(r["total"], n, "a break delivered twice: {r:?}");
        assert_eq!(r["reacquired"], n, "{r:?}");
        assert!(r["overflow_signals"] > 0 && r["rescans"] > 0, "overflow path not taken: {r:?}");
        assert_eq!(r["via_rescan"], n, "{r:?}");
        // A tiny queue: both paths mix, still exactly once.
        let r = overflow_run(2, n as usize).await;
        assert_eq!(r["unique"], n, "{r:?}");
        assert_eq!(r["total"], n, "a break delivered twice: {r:?}");
        assert_eq!(r["reacquired"], n, "{r:?}");
    });
}
