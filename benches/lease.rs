//! Lease benchmark: break delivery latency (the breaker's open, which makes the kernel
//! send the signal, to the event observed: by the bare loop's `sigwaitinfo`, by an
//! engine's `on_event` handler) and release latency, with 1, 100 and 10 000
//! leases held; the engine against a bare `fcntl` + `sigwaitinfo` loop measured in the
//! same run. Prints medians, p99s and the engine/baseline ratios.
//!
//! Run: `cargo bench --bench lease` (`FILEMR_BENCH_ITERS` sets iterations per size).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filemr::lease::{LeaseEngine, LeaseEvent, LeaseKind};
use filemr::sys::lease_baseline as bare;

const SIZES: [usize; 3] = [1, 100, 10_000];

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The breaker: another process, reading a path per line, opening it
/// `O_WRONLY|O_NONBLOCK` (fails with EAGAIN and starts the break) and answering with the
/// time just before the open.
fn breaker_main() {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let path = PathBuf::from(line.unwrap());
        let t0 = now_ns();
        let r = open(&path, OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty());
        assert!(r.is_err(), "breaker open did not conflict with a lease");
        writeln!(out, "{t0}").unwrap();
        out.flush().unwrap();
    }
}

struct Breaker {
    child: Child,
    tx: ChildStdin,
    rx: BufReader<ChildStdout>,
}

impl Breaker {
    fn spawn() -> Breaker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("FILEMR_BENCH_ROLE", "breaker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let tx = child.stdin.take().unwrap();
        let rx = BufReader::new(child.stdout.take().unwrap());
        Breaker { child, tx, rx }
    }

    fn send(&mut self, path: &Path) {
        writeln!(self.tx, "{}", path.display()).unwrap();
        self.tx.flush().unwrap();
    }

    fn t0(&mut self) -> u64 {
        let mut l = String::new();
        self.rx.read_line(&mut l).unwrap();
        l.trim().parse().unwrap()
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Samples {
    delivery: Vec<Duration>,
    release: Vec<Duration>,
}

fn stats(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.99))
}

fn baseline(files: &[PathBuf], n: usize, iters: usize, sig: i32, br: &mut Breaker) -> Samples {
    let fds: Vec<OwnedFd> = files[..n]
        .iter()
        .map(|p| {
            let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
            let fd = OwnedFd::from(f);
            bare::setsig(fd.as_fd(), sig).unwrap();
            bare::setlease(fd.as_fd(), true).unwrap();
            fd
        })
        .collect();
    let by_fd: HashMap<i32, usize> =
        fds.iter().enumerate().map(|(i, f)| (f.as_raw_fd(), i)).collect();
    let mut s = Samples::default();
    for k in 0..iters {
        let i = (k * 7919) % n;
        br.send(&files[i]);
        let fd = bare::wait_fd(sig).unwrap();
        let t1 = now_ns();
        let idx = by_fd[&fd];
        assert_eq!(idx, i);
        let t0 = br.t0();
        let r0 = Instant::now();
        bare::setlease(fds[idx].as_fd(), false).unwrap();
        s.release.push(r0.elapsed());
        s.delivery.push(Duration::from_nanos(t1.saturating_sub(t0)));
        // Take it again (the breaker's open failed, so nothing conflicts). F_UNLCK
        // reset the fd's signal to SIGIO: set it again.
        bare::setsig(fds[idx].as_fd(), sig).unwrap();
        while bare::setlease(fds[idx].as_fd(), true).is_err() {
            std::thread::yield_now();
        }
        assert!(bare::holds_write(fds[idx].as_fd()).unwrap());
    }
    s
}

async fn engine_run(files: &[PathBuf], n: usize, iters: usize, br: &mut Breaker) -> Samples {
    let engine = LeaseEngine::start().unwrap();
    let mut events = engine.subscribe();
    // Delivery is timed where the region manager acts on a break: in an `on_event`
    // handler, on the engine's break thread (the subscription only paces the loop).
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(HashMap::new()));
    let s2 = seen.clone();
    engine.on_event(move |ev| {
        if let LeaseEvent::Broken { file, .. } = ev {
            s2.lock().insert(*file, now_ns());
        }
    });
    let leases: Vec<_> =
        files[..n].iter().map(|p| engine.acquire(p, LeaseKind::Write).unwrap()).collect();
    let mut s = Samples::default();
    for k in 0..iters {
        let i = (k * 7919) % n;
        br.send(&files[i]);
        let file = match events.recv().await.unwrap() {
            LeaseEvent::Broken { file, .. } => file,
            other => panic!("unexpected {other:?}"),
        };
        let t1 = seen.lock().remove(&file).expect("the handler saw the break");
        assert_eq!(file, leases[i].file_id());
        let t0 = br.t0();
        let r0 = Instant::now();
        engine.release(file).unwrap();
        s.release.push(r0.elapsed());
        s.delivery.push(Duration::from_nanos(t1.saturating_sub(t0)));
        match events.recv().await.unwrap() {
            LeaseEvent::Reacquired { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(leases);
    s
}

fn main() {
    if std::env::var("FILEMR_BENCH_ROLE").as_deref() == Ok("breaker") {
        return breaker_main();
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let iters: usize =
        std::env::var("FILEMR_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let base_sig = libc::SIGRTMIN() + 9;
    // Before any other thread exists, so every later thread inherits the mask.
    bare::block(base_sig).unwrap();
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        // 10 000 leases plus the baseline's fds: root may raise the hard limit (the
        // guests' default is 4096), others get what the hard limit allows.
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let want = hard.max(1 << 16);
        if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
        }
    }
    let dir = std::env::temp_dir().join(format!("filemr-lease-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let max = *SIZES.iter().max().unwrap();
    let files: Vec<PathBuf> = (0..max)
        .map(|i| {
            let p = dir.join(i.to_string());
            fs::write(&p, b"x").unwrap();
            p
        })
        .collect();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut br = Breaker::spawn();
    println!(
        "lease benchmark: {iters} breaks per size; medians (p99); ratio = engine / bare fcntl+sigwaitinfo"
    );
    println!(
        "{:>7} | {:>22} {:>22} {:>6} | {:>22} {:>22} {:>6}",
        "leases",
        "delivery bare",
        "delivery engine",
        "ratio",
        "release bare",
        "release engine",
        "ratio"
    );
    for &n in &SIZES {
        let mut b = baseline(&files, n, iters, base_sig, &mut br);
        let mut e = rt.block_on(engine_run(&files, n, iters, &mut br));
        let (bd, bd99) = stats(&mut b.delivery);
        let (ed, ed99) = stats(&mut e.delivery);
        let (br_, br99) = stats(&mut b.release);
        let (er, er99) = stats(&mut e.release);
        let f = |m: Duration, p: Duration| {
            format!("{:.1}µs ({:.1}µs)", m.as_secs_f64() * 1e6, p.as_secs_f64() * 1e6)
        };
        println!(
            "{n:>7} | {:>22} {:>22} {:>6.2} | {:>22} {:>22} {:>6.2}",
            f(bd, bd99),
            f(ed, ed99),
            ed.as_secs_f64() / bd.as_secs_f64(),
            f(br_, br99),
            f(er, er99),
            er.as_secs_f64() / br_.as_secs_f64()
        );
    }
    drop(br);
    let _ = fs::remove_dir_all(&dir);
}
