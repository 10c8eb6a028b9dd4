//! What the revocation benches share: a breaker in a process of its own that times its
//! blocking open, and the bare `fcntl`+`sigwaitinfo`+`F_UNLCK` baseline it is compared
//! with. A bench binary includes this with `#[path]`, calls [`breaker_role`] first thing
//! in `main`, and blocks [`bare_signal`] before it starts any thread.
#![allow(dead_code)]

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The bare baseline's signal (the manager's engine uses another).
pub fn bare_signal() -> i32 {
    libc::SIGRTMIN() + 9
}

/// If this process was started as the breaker, runs it and returns true.
pub fn breaker_role() -> bool {
    if std::env::var("FILEMR_BENCH_ROLE").as_deref() == Ok("blocking-breaker") {
        blocking_breaker_main();
        return true;
    }
    false
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The breaker of the revocation lines, in a process of its own: reads a path per line,
/// opens it for writing (which blocks until the lease holder lets go), and answers with
/// how long the open took in ns.
fn blocking_breaker_main() {
    use std::io::{BufRead, Write};
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let path = PathBuf::from(line.unwrap());
        let t = Instant::now();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let ns = t.elapsed().as_nanos();
        drop(f);
        writeln!(out, "{ns}").unwrap();
        out.flush().unwrap();
    }
}

/// A [`blocking_breaker_main`] process.
pub struct BlockingBreaker {
    child: std::process::Child,
    tx: std::process::ChildStdin,
    rx: std::io::BufReader<std::process::ChildStdout>,
}

impl BlockingBreaker {
    pub fn spawn() -> BlockingBreaker {
        use std::process::Stdio;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("FILEMR_BENCH_ROLE", "blocking-breaker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let tx = child.stdin.take().unwrap();
        let rx = std::io::BufReader::new(child.stdout.take().unwrap());
        BlockingBreaker { child, tx, rx }
    }

    /// Asks for an open of `path`, without waiting.
    pub fn send(&mut self, path: &Path) {
        use std::io::Write;
        writeln!(self.tx, "{}", path.display()).unwrap();
        self.tx.flush().unwrap();
    }

    /// How long the open took.
    pub fn blocked(&mut self) -> Duration {
        use std::io::BufRead;
        let mut l = String::new();
        self.rx.read_line(&mut l).unwrap();
        Duration::from_nanos(l.trim().parse().unwrap())
    }
}

impl Drop for BlockingBreaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bare baseline of the revocation lines: a write lease held with `fcntl`, its break
/// taken with `sigwaitinfo` and released with `F_UNLCK` at once, as the breaker's open
/// sees it (median over `iters`). `sig` is blocked in every thread.
pub fn bare_revocation(path: &Path, sig: i32, br: &mut BlockingBreaker, iters: usize) -> f64 {
    use filemr::sys::lease_baseline as bare;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut samples = Vec::new();
    for _ in 0..iters {
        bare::setsig(f.as_fd(), sig).unwrap();
        // The breaker's previous open may still be closing: retry until the lease is ours.
        while bare::setlease(f.as_fd(), true).is_err() {
            std::thread::yield_now();
        }
        br.send(path);
        bare::wait_fd(sig).unwrap();
        bare::setlease(f.as_fd(), false).unwrap();
        samples.push(br.blocked().as_secs_f64());
    }
    median(samples)
}
