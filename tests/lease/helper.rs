//! The child-process roles (`FILEMR_HELPER_ROLE`): breakers, and a lease holder with a
//! tiny signal queue. Each prints `KEY value` lines the parent test waits for.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::time::Duration;

use filemr::lease::{LeaseEngine, LeaseError, LeaseEvent, LeaseKind};

use crate::common::now_ns;

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("helper needs {k}"))
}

pub fn main(role: &str) {
    match role {
        "open_write" => open_write(),
        "truncate" => {
            let path = PathBuf::from(env("FILEMR_HELPER_PATH"));
            println!("START {}", now_ns());
            nix::unistd::truncate(&path, 0).expect("truncate");
            println!("TRUNCATED {}", now_ns());
        }
        "storm" => storm(),
        "overflow_holder" => overflow_holder(),
        "acquire_as_nobody" => acquire_as_nobody(),
        other => panic!("unknown helper role {other}"),
    }
}

/// Blocking open for writing (waits for the lease), hold, optionally unlink or rename,
/// close.
fn open_write() {
    let path = PathBuf::from(env("FILEMR_HELPER_PATH"));
    let hold: u64 = env("FILEMR_HELPER_MS").parse().unwrap();
    println!("START {}", now_ns());
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    println!("OPENED {}", now_ns());
    std::thread::sleep(Duration::from_millis(hold));
    match std::env::var("FILEMR_HELPER_THEN").as_deref() {
        Ok("unlink") => std::fs::remove_file(&path).unwrap(),
        Ok("rename") => std::fs::rename(&path, path.with_extension("moved")).unwrap(),
        _ => {}
    }
    drop(f);
    println!("CLOSED {}", now_ns());
}

/// One thread per file, each blocking in open(O_WRONLY) until its lease is released.
fn storm() {
    let dir = PathBuf::from(env("FILEMR_HELPER_PATH"));
    let n: usize = env("FILEMR_HELPER_N").parse().unwrap();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let p = dir.join(i.to_string());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || drop(OpenOptions::new().write(true).open(p).expect("open")))
                .expect("thread")
        })
        .collect();
    println!("STARTED {n}");
    for t in threads {
        t.join().unwrap();
    }
    println!("DONE {}", now_ns());
}

/// Holds N write leases with RLIMIT_SIGPENDING lowered, releases every break, and
/// reports what it saw.
fn overflow_holder() {
    use nix::sys::resource::{Resource, setrlimit};
    let dir = PathBuf::from(env("FILEMR_HELPER_PATH"));
    let n: usize = env("FILEMR_HELPER_N").parse().unwrap();
    let sigpending: u64 = env("FILEMR_HELPER_SIGPENDING").parse().unwrap();
    crate::common::raise_nofile();
    setrlimit(Resource::RLIMIT_SIGPENDING, sigpending, sigpending).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let engine = LeaseEngine::start().unwrap();
        let mut events = engine.subscribe();
        let leases: Vec<_> = (0..n)
            .map(|i| engine.acquire(dir.join(i.to_string()), LeaseKind::Write).unwrap())
            .collect();
        println!("READY {}", now_ns());
        let mut broken: HashMap<_, u32> = HashMap::new();
        let mut reacquired = 0usize;
        let mut total = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while reacquired < n {
            let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) => ev,
                _ => break,
            };
            match ev {
                LeaseEvent::Broken { file, .. } => {
                    total += 1;
                    *broken.entry(file).or_default() += 1;
                    engine.release(file).unwrap();
                }
                LeaseEvent::Reacquired { .. } => reacquired += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        // Anything late would be a duplicate.
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            if matches!(ev, LeaseEvent::Broken { .. }) {
                total += 1;
            }
        }
        let s = engine.stats();
        println!(
            "RESULT unique={} total={} reacquired={} overflow_signals={} rescans={} via_rescan={} signals={}",
            broken.len(),
            total,
            reacquired,
            s.overflow_signals,
            s.rescans,
            s.breaks_via_rescan,
            s.signals
        );
        drop(leases);
    });
}

/// Drops to `nobody` and tries to lease a file it does not own.
fn acquire_as_nobody() {
    let path = PathBuf::from(env("FILEMR_HELPER_PATH"));
    nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).unwrap();
    nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let engine = LeaseEngine::start().unwrap();
        match engine.acquire(&path, LeaseKind::Read) {
            Ok(_) => println!("RESULT ok"),
            Err(e @ LeaseError::PermissionDenied { .. }) => {
                println!("RESULT PermissionDenied errno={:?} msg={e}", e.errno())
            }
            Err(e) => println!("RESULT other {e}"),
        }
    });
}
