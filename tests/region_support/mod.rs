//! Shared support of the region manager's guest tests: one manager per test process (the
//! lease engine is one per process), breaker child processes, event waiting.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filemr::grant::Grant;
use filemr::region::{Manager, ManagerConfig, Region, RegionEvent, RegionEventKind, RegionEvents};
use filemr::sys::Mapping;
use filemr::verbs::{
    Access as MrAccess, CompletionQueue, MemoryRegion, QueuePair, RemoteBuf, WcStatus,
};
use prometheus_client::registry::Registry;
use tokio::runtime::Runtime;

use crate::guest::GuestEnv;

pub const WAIT: Duration = Duration::from_secs(30);

pub static RT: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
});

pub struct Shared {
    pub mgr: Manager,
    pub registry: Mutex<Registry>,
}

/// Set before the first [`manager`] call to change the process's manager configuration
/// (a test binary whose tests all need, say, retarget mode sets it in each test).
pub static CONFIGURE: std::sync::OnceLock<fn(&mut ManagerConfig)> = std::sync::OnceLock::new();

static SHARED: LazyLock<Shared> = LazyLock::new(|| {
    init_logging();
    let env = GuestEnv::get();
    let mut registry = Registry::default();
    let _enter = RT.enter();
    let mut cfg = ManagerConfig::new(env.device);
    if let Some(f) = CONFIGURE.get() {
        f(&mut cfg);
    }
    let mgr = Manager::new(cfg, &mut registry).expect("manager");
    Shared { mgr, registry: Mutex::new(registry) }
});

/// filemr's logs on stderr (FILEMR_LOG, default info): they land in the test's log.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FILEMR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("filemr=info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The process's manager.
pub fn manager() -> &'static Manager {
    &SHARED.mgr
}

/// `manager().register`, retried while the write lease fails with "another open
/// exists": a breaker or helper that another test thread is forking right now holds a
/// copy of every fd of this process until its exec, including one of a file a test just
/// wrote and closed.
pub fn register(
    path: &Path,
    offset: u64,
    len: usize,
    access: filemr::region::Access,
) -> Result<filemr::region::Region, filemr::region::RegionError> {
    register_with(manager(), path, offset, len, access)
}

/// [`register`] with another manager than the process's (a test that builds its own).
pub fn register_with(
    mgr: &Manager,
    path: &Path,
    offset: u64,
    len: usize,
    access: filemr::region::Access,
) -> Result<filemr::region::Region, filemr::region::RegionError> {
    let mut tries = 0;
    loop {
        match mgr.register(path, offset, len, access) {
            Err(filemr::region::RegionError::Lease(
                filemr::lease::LeaseError::OtherOpenExists { .. }
                | filemr::lease::LeaseError::WriterHasFileOpen { .. },
            )) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The registry the manager's metrics are in (for other layers' metrics too).
pub fn registry() -> std::sync::MutexGuard<'static, Registry> {
    SHARED.registry.lock().unwrap()
}

/// The sum of the samples whose line starts with `series` (a name, or a name and the
/// start of its labels), e.g. `filemr_region_rebuilds_total`.
pub fn metric_sum(series: &str) -> f64 {
    metric_sum_in(&SHARED.registry.lock().unwrap(), series)
}

/// [`metric_sum`] over another registry (a test's own manager's).
pub fn metric_sum_in(registry: &Registry, series: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The metrics, encoded.
pub fn metrics_text() -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &SHARED.registry.lock().unwrap()).unwrap();
    s
}

/// A file of `len` bytes filled with `fill`.
pub fn make_file(dir: &Path, tag: &str, len: usize, fill: u8) -> PathBuf {
    let path = crate::guest::unique_path(dir, tag);
    std::fs::write(&path, vec![fill; len]).unwrap();
    path
}

/// The next event matching `want` within `timeout`, failing on events `bad` flags.
pub fn wait_event(
    events: &mut RegionEvents,
    timeout: Duration,
    what: &str,
    want: impl Fn(&RegionEvent) -> bool,
) -> RegionEvent {
    RT.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) if want(&ev) => return ev,
                Ok(Some(ev)) => eprintln!("(skipping event {ev:?} while waiting for {what})"),
                Ok(None) => panic!("event stream closed while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    })
}

pub fn is_revoked(ev: &RegionEvent) -> bool {
    matches!(ev.kind, RegionEventKind::Revoked { .. })
}

pub fn is_rebuilt(ev: &RegionEvent) -> bool {
    matches!(ev.kind, RegionEventKind::Rebuilt { .. })
}

/// Nanoseconds since the epoch.
pub fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// A peer: a loopback RC pair in the manager's PD (`qa` is the peer's end, `server` the
/// server's, on which grants are bound) and a registered local buffer.
pub struct Peer {
    pub cq: Arc<CompletionQueue>,
    pub qa: QueuePair,
    pub server: Arc<QueuePair>,
    pub buf: Arc<Mapping>,
    pub mr: MemoryRegion,
}

impl Peer {
    pub fn new(len: usize) -> Peer {
        let pd = manager().protection_domain().expect("the device is there");
        let cq = CompletionQueue::new(pd.context(), 64).unwrap();
        let (qa, qb) = QueuePair::loopback_pair(&pd, &cq, 1).unwrap();
        let buf = Arc::new(Mapping::anonymous(len).unwrap());
        let mr = MemoryRegion::register(&pd, &buf, MrAccess::LOCAL_WRITE).unwrap();
        Peer { cq, qa, server: Arc::new(qb), buf, mr }
    }

    /// A grant of `region` to this peer.
    pub fn grant(&self, region: &Region) -> Grant {
        region.grant(&self.server).expect("grant")
    }

    /// RDMA WRITE `data` at `off` bytes into the grant.
    pub fn write_to(&self, g: &Grant, off: u64, data: &[u8]) -> WcStatus {
        let i = g.info();
        self.write(data, i.addr + off, i.rkey)
    }

    /// RDMA READ `len` bytes at `off` bytes into the grant.
    pub fn read_from(&self, g: &Grant, off: u64, len: usize) -> (WcStatus, Vec<u8>) {
        let i = g.info();
        self.read(len, i.addr + off, i.rkey)
    }

    /// RDMA WRITE `data` (copied to the local buffer first) to `addr`/`rkey`.
    pub fn write(&self, data: &[u8], addr: u64, rkey: u32) -> WcStatus {
        self.buf.write_at(0, data).unwrap();
        self.qa.post_write(1, &self.mr, 0, data.len(), RemoteBuf { addr, rkey }).unwrap();
        self.cq.wait_one(WAIT).unwrap().status
    }

    /// RDMA READ `len` bytes at `addr`/`rkey`.
    pub fn read(&self, len: usize, addr: u64, rkey: u32) -> (WcStatus, Vec<u8>) {
        self.qa.post_read(2, &self.mr, 0, len, RemoteBuf { addr, rkey }).unwrap();
        let st = self.cq.wait_one(WAIT).unwrap().status;
        let mut got = vec![0; len];
        self.buf.read_at(0, &mut got).unwrap();
        (st, got)
    }
}

/// Spawns this test binary again as a breaker (see [`breaker_reexec_entry`]).
pub fn breaker(mode: &str, file: &Path, args: &[&str]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "region_support::breaker_reexec_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FILEMR_BREAKER", mode)
        .env("FILEMR_BREAKER_FILE", file)
        .env("FILEMR_BREAKER_ARGS", args.join("\u{1f}"))
        // The child's libtest chatter would confuse the harness's tally of this binary.
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn breaker")
}

/// A `truncate-write` breaker of `file` that writes `content` after the truncate; returns
/// it and the paths of the content, the file as the breaker found it and the truncate's
/// time stamp (see [`breaker_reexec_entry`]).
pub fn truncate_writer(file: &Path, content: &[u8]) -> (Child, [PathBuf; 3]) {
    let tmp = std::env::temp_dir();
    let paths = ["src", "seen", "stamp"].map(|t| crate::guest::unique_path(&tmp, t));
    std::fs::write(&paths[0], content).unwrap();
    let args = paths.each_ref().map(|p| p.to_str().unwrap());
    (breaker("truncate-write", file, &args), paths)
}

/// Waits for a child, failing after `timeout`.
pub fn wait_child(mut child: Child, timeout: Duration) {
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "breaker failed: {st}");
            return;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("breaker still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The breaker side, run in a child process when `FILEMR_BREAKER` is set; a no-op
/// otherwise. Modes:
/// - `truncate-write SRC BEFORE TIME`: open the file read-write (blocks until the lease
///   is released), save its content to BEFORE, truncate it to 0, save the time the
///   truncate returned to TIME (ns since the epoch), write SRC's bytes, close.
/// - `truncate-to SIZE`: open read-write, truncate to SIZE, close.
/// - `open-write TIME`: open write-only (blocks), save the time, close.
/// - `open-save BEFORE TIME [MS]`: open read-write (blocks), save the time, save the
///   content to BEFORE, keep the file open MS milliseconds, close (the file is left as
///   it was).
/// - `open-unlink`: open write-only (blocks), delete the file, close.
/// - `write-loop N`: N times: open write-only (blocks), write the iteration number
///   (u64, little-endian) at offset 0, close.
#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn breaker_reexec_entry() {
    let Ok(mode) = std::env::var("FILEMR_BREAKER") else {
        return;
    };
    let file = PathBuf::from(std::env::var("FILEMR_BREAKER_FILE").unwrap());
    let args: Vec<String> =
        std::env::var("FILEMR_BREAKER_ARGS").unwrap().split('\u{1f}').map(String::from).collect();
    let stamp = |path: &str| std::fs::write(path, nanos(SystemTime::now()).to_string()).unwrap();
    match mode.as_str() {
        "truncate-write" => {
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&file).unwrap();
            let len = f.metadata().unwrap().len() as usize;
            let mut before = vec![0; len];
            f.read_exact_at(&mut before, 0).unwrap();
            std::fs::write(&args[1], before).unwrap();
            f.set_len(0).unwrap();
            stamp(&args[2]);
            f.write_all_at(&std::fs::read(&args[0]).unwrap(), 0).unwrap();
            f.sync_all().unwrap();
        }
        "truncate-to" => {
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&file).unwrap();
            f.set_len(args[0].parse().unwrap()).unwrap();
        }
        "open-unlink" => {
            let _f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            std::fs::remove_file(&file).unwrap();
        }
        "write-loop" => {
            for i in 1..=args[0].parse::<u64>().unwrap() {
                let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
                f.write_all_at(&i.to_le_bytes(), 0).unwrap();
            }
        }
        "open-write" => {
            let _f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            stamp(&args[0]);
        }
        "open-save" => {
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&file).unwrap();
            stamp(&args[1]);
            let mut before = vec![0; f.metadata().unwrap().len() as usize];
            f.read_exact_at(&mut before, 0).unwrap();
            std::fs::write(&args[0], before).unwrap();
            if let Some(ms) = args.get(2) {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            }
        }
        other => panic!("unknown breaker mode {other}"),
    }
}

/// Lines of `rdma resource show mr` that carry `lkey`.
pub fn mr_lines_with_lkey(lkey: u32) -> Vec<String> {
    // Keys are per device: another device's MR may have the same one.
    let dev = format!("dev {} ", manager().device());
    mr_lines()
        .into_iter()
        .filter(|l| l.contains(&dev) && format!("{l} ").contains(&format!("lkey 0x{lkey:x} ")))
        .collect()
}

/// Every line of `rdma resource show mr`.
pub fn mr_lines() -> Vec<String> {
    crate::guest::resource_lines("mr")
}

/// The next `Recall` of grant `g`: the region tells the server to recall it.
pub fn wait_recall(events: &mut RegionEvents, g: &Grant) {
    let id = g.id();
    wait_event(
        events,
        WAIT,
        "Recall",
        |e| matches!(e.kind, RegionEventKind::Recall { grant, .. } if grant == id),
    );
}

/// The report notes (see [`crate::guest::note`]), for the binaries that glob-import this.
#[allow(unused_imports)]
pub use crate::guest::note;
