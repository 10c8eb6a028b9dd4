//! Shared test plumbing: serial engine runs, temp dirs, child processes, sysctl guards.

use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filemr::lease::{LeaseEvent, LeaseEvents};
use tokio::sync::mpsc;

/// One engine per process: tests that start one run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` on a fresh 2-worker runtime while holding the serial lock; the runtime (and
/// with it every engine task) is gone before the next test starts.
pub fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(f());
    drop(rt);
}

/// Wall-clock nanoseconds: comparable across processes (CLOCK_REALTIME).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Raises the soft fd limit to the hard one (a thousand leases are a thousand fds).
pub fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// A unique directory under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "filemr-lease-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// Creates a file of `len` bytes and returns its path.
    pub fn file(&self, name: &str, len: usize) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, vec![7u8; len]).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Restores a sysctl on drop (also when the test panics).
pub struct SysctlGuard {
    path: &'static str,
    old: String,
}

impl SysctlGuard {
    pub fn set(path: &'static str, value: &str) -> SysctlGuard {
        let old = fs::read_to_string(path).unwrap();
        fs::write(path, value).unwrap();
        SysctlGuard { path, old }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::write(self.path, self.old.trim()) {
            eprintln!("FAILED to restore {}: {e}", self.path);
        }
    }
}

/// A child process: this test binary re-executed in a helper role. Its stdout lines
/// arrive with the time they were read.
pub struct Helper {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

pub fn helper(role: &str, envs: &[(&str, String)]) -> Helper {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "lease_reexec_entry", "--nocapture", "--test-threads=1"])
        .env("FILEMR_HELPER_ROLE", role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn helper");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Helper { child, lines: rx }
}

impl Helper {
    /// The next output line containing `prefix`, from `prefix` on (other lines are libtest's).
    pub async fn expect(&mut self, prefix: &str, within: Duration) -> String {
        let fut = async {
            loop {
                match self.lines.recv().await {
                    // libtest prints "test lease_reexec_entry ... " without a newline first.
                    Some(l) => {
                        if let Some(i) = l.find(prefix) {
                            return l[i..].to_string();
                        }
                    }
                    None => panic!("helper exited before printing {prefix:?}"),
                }
            }
        };
        tokio::time::timeout(within, fut)
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} from the helper within {within:?}"))
    }

    /// The number after `prefix ` in the next line starting with `prefix`.
    pub async fn expect_ns(&mut self, prefix: &str, within: Duration) -> u64 {
        let l = self.expect(prefix, within).await;
        l[prefix.len()..].trim().parse().unwrap()
    }

    /// Waits for the child to exit successfully.
    pub async fn finish(mut self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "helper failed: {st}");
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("helper did not finish within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The next event, or a panic after `within`.
pub async fn next_event(events: &mut LeaseEvents, within: Duration) -> LeaseEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no lease event within {within:?}"))
        .expect("engine gone")
}

/// True when nothing is queued on `events` for `d`.
pub async fn quiet_for(events: &mut LeaseEvents, d: Duration) -> Option<LeaseEvent> {
    tokio::time::timeout(d, events.recv()).await.ok().flatten()
}

/// Whether `path` can be opened for writing right now without blocking on a lease.
pub fn open_write_nonblocking(path: &Path) -> nix::Result<()> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    open(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty()).map(drop)
}
