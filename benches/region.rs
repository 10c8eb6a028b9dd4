//! Region benchmarks, reported as ratios:
//! - guard acquire+release against an uncontended `parking_lot::Mutex` lock/unlock
//!   (host, no device needed; target: faster);
//! - registration through the manager against raw `ibv_reg_mr` of a mapping of the same
//!   file range (needs an RDMA device, e.g. in the SoftRoCE guest; target ≤ 1.05×);
//! - revocation latency (lease break → lease released, as the `Revoked` event reports it)
//!   of one idle region with 1, 100 and 10 000 regions registered (needs a device).
//!
//! Run: `cargo bench --bench region`. Device benches use `FILEMR_RXE_DEVICE` (default
//! `rxe0`) and `FILEMR_PAGECACHE_DIR` (default the temp dir); without the device they
//! print why they are skipped.

#[path = "support/revocation.rs"]
mod support;

use std::hint::black_box;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use filemr::lease::LeaseKind;
use filemr::region::{Access, GuardWord, Manager, ManagerConfig, RegionEventKind};
use filemr::sys::{Mapping, Protection};
use filemr::verbs::MemoryRegion;

fn per_op(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e9 / n as f64
}

/// ns per guard acquire+release on each of `threads` threads sharing one word, against
/// the same with an uncontended (1 thread) or shared `parking_lot::Mutex`.
fn guard_and_mutex_ns(threads: usize, n: u64) -> (f64, f64) {
    let word = std::sync::Arc::new(GuardWord::new());
    let mutex = std::sync::Arc::new(parking_lot::Mutex::new(0u64));
    let timed = |f: std::sync::Arc<dyn Fn() + Send + Sync>| {
        let start = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let runs: Vec<_> = (0..threads)
            .map(|_| {
                let (f, start) = (f.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    f();
                    per_op(t.elapsed(), n)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).fold(0.0, f64::max)
    };
    let w = word.clone();
    let g = timed(std::sync::Arc::new(move || {
        for _ in 0..n {
            let g = black_box(&*w).guard();
            black_box(&g);
            drop(g);
        }
    }));
    let m = mutex.clone();
    let l = timed(std::sync::Arc::new(move || {
        for _ in 0..n {
            let g = black_box(&*m).lock();
            black_box(&g);
            drop(g);
        }
    }));
    (g, l)
}

pub fn guard_vs_mutex() -> String {
    const N: u64 = 10_000_000;
    let mut one = (f64::MAX, f64::MAX);
    let mut two = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let (g, m) = guard_and_mutex_ns(1, N);
        one = (one.0.min(g), one.1.min(m));
        let (g, m) = guard_and_mutex_ns(2, N);
        two = (two.0.min(g), two.1.min(m));
    }
    let fast = if filemr::region::fast_guards() { "per-thread slots" } else { "shared word" };
    format!(
        "guard acquire+release ({fast}): {:.2} ns; uncontended parking_lot::Mutex lock+unlock: {:.2} ns; \
         mutex/guard = {:.2} (target >= 2: {}); on 2 threads sharing the word: guard {:.2} ns = {:.2}x one thread \
         (target flat, within 1.2: {}), mutex {:.2} ns",
        one.0,
        one.1,
        one.1 / one.0,
        verdict(one.1 / one.0 >= 2.0),
        two.0,
        two.0 / one.0,
        verdict(two.0 / one.0 <= 1.2),
        two.1
    )
}

fn dir() -> PathBuf {
    std::env::var_os("FILEMR_PAGECACHE_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

fn file(dir: &Path, tag: &str, i: usize, len: usize) -> PathBuf {
    let p = dir.join(format!("filemr-bench-{tag}-{}-{i}", std::process::id()));
    std::fs::write(&p, vec![0u8; len]).unwrap();
    p
}

/// The memory the manager's `strategy` registers, mapped and registered raw: anonymous
/// memory for staging, the file through `fd` otherwise.
fn raw_registration(
    mgr: &Manager,
    strategy: filemr::region::Strategy,
    fd: std::os::fd::BorrowedFd<'_>,
    len: usize,
) -> (MemoryRegion, Arc<Mapping>) {
    let map = Arc::new(match strategy {
        filemr::region::Strategy::Staging => Mapping::anonymous(len).unwrap(),
        _ => Mapping::file(fd, 0, len, Protection::ReadWrite).unwrap(),
    });
    let mut acc = Access::ReadWrite.mr_access();
    if strategy == filemr::region::Strategy::Odp {
        acc |= filemr::verbs::Access::ON_DEMAND;
    }
    (MemoryRegion::register(&mgr.protection_domain().unwrap(), &map, acc).unwrap(), map)
}

/// The one-word verdict a line ends with.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One region of `len` bytes registered by the manager against the same memory
/// registered raw (medians of `iters`).
pub fn registration_in(mgr: &Manager, d: &Path, len: usize, iters: usize) -> String {
    let path = file(d, "reg", 0, len);
    // Warm the probe cache: the probe runs once per file system and access.
    drop(mgr.register(&path, 0, len, Access::ReadWrite).unwrap());
    let strategy = mgr.decision(&path, Access::ReadWrite).unwrap().strategy;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        let r = mgr.register(&path, 0, len, Access::ReadWrite).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        drop(r);
        // Raw: the same memory the strategy registers, through ibv_reg_mr directly.
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let t = Instant::now();
        let (mr, map) = raw_registration(mgr, strategy, f.as_fd(), len);
        raw.push(t.elapsed().as_secs_f64());
        drop((mr, map, f));
    }
    let (o, r) = (median(ours), median(raw));
    let _ = std::fs::remove_file(&path);
    format!(
        "registration of {} MiB ({}): manager {:.3} ms, raw mmap+ibv_reg_mr {:.3} ms, ratio {:.2} (target <= 1.05, in place: {})",
        len >> 20,
        strategy.label(),
        o * 1e3,
        r * 1e3,
        o / r,
        match strategy {
            filemr::region::Strategy::Staging => "staging copies the file in",
            _ => verdict(o / r <= 1.05),
        }
    )
}

/// Serial and N-thread times (medians of `rounds`) of `n` calls of `one(i)`; the N
/// threads are started before the clock.
fn serial_vs_parallel<T: Send>(
    n: usize,
    rounds: usize,
    one: impl Fn(usize) -> T + Sync,
) -> (f64, f64) {
    let (mut serial, mut parallel) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let done: Vec<T> = (0..n).map(&one).collect();
        serial.push(t.elapsed().as_secs_f64());
        drop(done);
        // The threads exist before the clock starts: their creation is not the work.
        let start = std::sync::Barrier::new(n + 1);
        let done: Vec<T> = std::thread::scope(|s| {
            let (one, start) = (&one, &start);
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    s.spawn(move || {
                        start.wait();
                        one(i)
                    })
                })
                .collect();
            start.wait();
            let t = Instant::now();
            let done = hs.into_iter().map(|h| h.join().unwrap()).collect();
            parallel.push(t.elapsed().as_secs_f64());
            done
        });
        drop(done);
    }
    (median(serial), median(parallel))
}

/// N regions (N = the CPUs) registered concurrently on N threads against the same N
/// serially, each on its own file: the speedup (target >= 0.8 x N); and, as the bound,
/// the same for raw mmap + `ibv_reg_mr` of the memory the strategy registers.
pub fn parallel_registration_in(mgr: &Manager, d: &Path) -> Vec<String> {
    const LEN: usize = 8 << 20;
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    let paths: Vec<PathBuf> = (0..n).map(|i| file(d, "par", i, LEN)).collect();
    drop(mgr.register(&paths[0], 0, LEN, Access::ReadWrite).unwrap()); // warm the probe
    let strategy = mgr.decision(&paths[0], Access::ReadWrite).unwrap().strategy;
    let (s, p) =
        serial_vs_parallel(n, 5, |i| mgr.register(&paths[i], 0, LEN, Access::ReadWrite).unwrap());
    let (rs, rp) = serial_vs_parallel(n, 5, |i| {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&paths[i]).unwrap();
        (raw_registration(mgr, strategy, f.as_fd(), LEN), f)
    });
    // Where the manager's time goes, the same way: the lease alone, and the lease plus
    // the raw registration through the lease's fd.
    let engine = mgr.lease_engine();
    let (ls, lp) =
        serial_vs_parallel(n, 5, |i| engine.acquire(&paths[i], LeaseKind::Write).unwrap());
    let (bs, bp) = serial_vs_parallel(n, 5, |i| {
        let lease = engine.acquire(&paths[i], LeaseKind::Write).unwrap();
        (raw_registration(mgr, strategy, lease.fd(), LEN), lease)
    });
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    vec![
        format!(
            "  lease alone: serially {:.3} ms, on {n} threads {:.3} ms; lease + the raw registration: serially {:.3} ms, on {n} threads {:.3} ms, speedup {:.2}",
            ls * 1e3,
            lp * 1e3,
            bs * 1e3,
            bp * 1e3,
            bs / bp
        ),
        format!(
            "registration of {n} x 8 MiB ({}): serially {:.3} ms, on {n} threads {:.3} ms, speedup {:.2} (target >= {:.1}: {})",
            strategy.label(),
            s * 1e3,
            p * 1e3,
            s / p,
            0.8 * n as f64,
            verdict(s / p >= 0.8 * n as f64)
        ),
        format!(
            "  the bound, raw mmap+ibv_reg_mr of {n} x 8 MiB: serially {:.3} ms, on {n} threads {:.3} ms, speedup {:.2}",
            rs * 1e3,
            rp * 1e3,
            rs / rp
        ),
    ]
}

/// A writer closes the file -> the region is `Rebuilt`, against a bare inotify watcher's
/// wakeup for the same close (`IN_CLOSE_WRITE`) in the same process: filemr's own time is
/// what comes after that wakeup (target <= 5 ms).
pub fn rebuild_in(rt: &tokio::runtime::Runtime, mgr: &Manager, d: &Path) -> String {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    const ROUNDS: usize = 10;
    let path = file(d, "rebuild", 0, 4096);
    let region = mgr.register(&path, 0, 4096, Access::ReadWrite).unwrap();
    let mut events = region.events();
    let watch = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
    watch.add_watch(&path, AddWatchFlags::IN_CLOSE_WRITE).unwrap();
    let mut own = Vec::new();
    for _ in 0..ROUNDS {
        let woke = std::thread::scope(|s| {
            let waker = s.spawn(|| {
                watch.read_events().unwrap();
                std::time::SystemTime::now()
            });
            // The writer: opens (waiting for the release), closes at once.
            let st = Command::new("sh")
                .arg("-c")
                .arg(format!("{{ :; }} 3>>'{}'", path.display()))
                .status()
                .unwrap();
            assert!(st.success());
            waker.join().unwrap()
        });
        let rebuilt = next_event(rt, &mut events, "Rebuilt", |ev| {
            matches!(ev.kind, RegionEventKind::Rebuilt { .. }).then_some(ev.at)
        });
        let after = rebuilt
            .duration_since(woke)
            .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64());
        own.push(after);
    }
    drop(region);
    let _ = std::fs::remove_file(&path);
    let m = median(own);
    format!(
        "rebuild (writer's close -> Rebuilt) beyond a bare inotify wakeup on the same close: median {:.3} ms over {ROUNDS} (target <= 5 ms: {})",
        m * 1e3,
        verdict(m <= 0.005)
    )
}

/// The first event `pick` takes something from, within a minute.
fn next_event<T>(
    rt: &tokio::runtime::Runtime,
    events: &mut filemr::region::RegionEvents,
    what: &str,
    pick: impl Fn(&filemr::region::RegionEvent) -> Option<T>,
) -> T {
    rt.block_on(async {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), events.recv())
                .await
                .unwrap_or_else(|_| panic!("{what} in time"))
                .unwrap();
            if let Some(t) = pick(&ev) {
                break t;
            }
        }
    })
}

/// Breaks of one idle region of `path` by the breaker, `ROUNDS` times, each waiting for the
/// rebuild: the medians of the breaker's blocked open and of filemr's own break -> release.
fn idle_revocations(
    rt: &tokio::runtime::Runtime,
    mgr: &Manager,
    br: &mut support::BlockingBreaker,
    path: &Path,
    access: Access,
) -> (f64, f64) {
    const ROUNDS: usize = 9;
    let victim = mgr.register(path, 0, 4096, access).unwrap();
    let mut events = victim.events();
    let (mut own, mut blocked) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        br.send(path);
        let since = next_event(rt, &mut events, "Revoked", |ev| match ev.kind {
            RegionEventKind::Revoked { since_break, .. } => Some(since_break),
            _ => None,
        });
        own.push(since.as_secs_f64());
        blocked.push(br.blocked().as_secs_f64());
        next_event(rt, &mut events, "Rebuilt", |ev| {
            matches!(ev.kind, RegionEventKind::Rebuilt { .. }).then_some(())
        });
    }
    (median(blocked), median(own))
}

pub fn revocation_in(rt: &tokio::runtime::Runtime, mgr: &Manager, d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut br = support::BlockingBreaker::spawn();
    let bare_path = file(d, "bare", 0, 4096);
    // A real-time signal of its own (the manager's engine uses another), blocked in every
    // thread by `main` before any thread existed; `sigwaitinfo` takes it here.
    let sig = support::bare_signal();
    const SZ: usize = 4096;
    let line = |what: &str, (ours, own): (f64, f64), theirs: f64| {
        format!(
            "revocation of {what}: the breaker's open blocked {:.3} ms (filemr's own break -> \
             release {:.3} ms); bare fcntl+sigwaitinfo+F_UNLCK {:.3} ms; ratio {:.2} (target \
             <= 1.5: {})",
            ours * 1e3,
            own * 1e3,
            theirs * 1e3,
            ours / theirs,
            verdict(ours / theirs <= 1.5)
        )
    };
    for n in [1usize, 100, 10_000] {
        let files = n.div_ceil(100).max(1);
        let per = n.div_ceil(files);
        let mut paths = Vec::new();
        let mut regions = Vec::new();
        for i in 0..files {
            let p = file(d, "rev", i, per * SZ);
            for j in 0..per {
                if regions.len() + 1 < n {
                    regions.push(mgr.register(&p, (j * SZ) as u64, SZ, Access::ReadWrite).unwrap());
                }
            }
            paths.push(p);
        }
        let victim_path = file(d, "victim", n, SZ);
        let ours = idle_revocations(rt, mgr, &mut br, &victim_path, Access::ReadWrite);
        let theirs = support::bare_revocation(&bare_path, sig, &mut br, 20);
        out.push(line(&format!("1 idle region with {n} registered"), ours, theirs));
        drop(regions);
        for p in paths.into_iter().chain([victim_path]) {
            let _ = std::fs::remove_file(p);
        }
    }
    // The same without the commit: what the rest of the path costs.
    let victim_path = file(d, "victim-ro", 0, SZ);
    let ours = idle_revocations(rt, mgr, &mut br, &victim_path, Access::Read);
    let theirs = support::bare_revocation(&bare_path, sig, &mut br, 20);
    out.push(line("1 idle read-only region (nothing to commit), 1 registered", ours, theirs));
    let _ = std::fs::remove_file(&victim_path);
    let _ = std::fs::remove_file(&bare_path);
    out
}

#[allow(dead_code)]
fn main() {
    if support::breaker_role() {
        return;
    }
    // Before any other thread exists, so every later thread inherits the mask (a lease
    // signal delivered to a thread that does not block it would kill the process).
    filemr::sys::lease_baseline::block(support::bare_signal()).unwrap();
    println!("{}", guard_vs_mutex());
    let device = std::env::var("FILEMR_RXE_DEVICE").unwrap_or_else(|_| "rxe0".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let mgr = {
        let _enter = rt.enter();
        Manager::new(ManagerConfig::new(device.clone()), &mut registry)
    };
    match mgr {
        Ok(mgr) => {
            // 192 MiB: the largest that fits the guests' 256 MiB page-cache file system
            // (the issue asks for 1 GiB; the ratio is what is compared).
            println!("{}", registration_in(&mgr, &dir(), 8 << 20, 20));
            println!("{}", registration_in(&mgr, &dir(), 192 << 20, 3));
            for line in parallel_registration_in(&mgr, &dir()) {
                println!("{line}");
            }
            println!("{}", rebuild_in(&rt, &mgr, &dir()));
            for line in revocation_in(&rt, &mgr, &dir()) {
                println!("{line}");
            }
        }
        Err(e) => println!(
            "registration and revocation benches skipped: no RDMA device {device:?} here ({e}); run them in the SoftRoCE guest"
        ),
    }
}
