//! filemrd for real, in the guest: started with a config on the server device, told
//! ready through a real sd_notify socket, used through the `filemr` CLI and the client
//! library from the peer device, scraped over HTTP and by a real Prometheus while a
//! revocation happens, reloaded with SIGHUP, drained with SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/guest/mod.rs"]
mod guest;

use filemr::layout::{ClientConfig, LayoutClient, LayoutEvent};
use filemr::region::Access;
use guest::{BreakTime, pattern, var};

const PORT: u16 = 20049;
const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9091";

/// The daemon's systemd notifications, received on a real datagram socket.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Notify { sock, path }
    }

    /// Waits for a notification containing `want` (e.g. `READY=1`).
    fn wait(&self, want: &str) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = self.sock.recv(&mut buf).unwrap_or_else(|e| panic!("no {want}: {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == want) {
                return msg;
            }
        }
    }
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

/// The value of the first sample of `query` (Prometheus HTTP API), if any.
fn prom_value(query: &str) -> Option<f64> {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (_, body) = http_get(PROMETHEUS, &format!("/api/v1/query?query={q}"));
    let at = body.find("\"value\":[")?;
    let rest = &body[at..];
    let v = rest.split('"').nth(3)?;
    v.parse().ok()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_filemr"))
        .args(["--device", &var("FILEMR_PEER_DEVICE"), "--source", &var("FILEMR_PEER_ADDR")])
        .args(args)
        .output()
        .unwrap()
}

fn url(path: &str) -> String {
    format!("rdma://{}:{PORT}/{path}", var("FILEMR_SERVER_ADDR"))
}

fn config(dir: &Path, exports: &[(&str, &Path)]) -> PathBuf {
    let mut text = format!(
        "device = \"{}\"\nlisten = \"{}:{PORT}\"\nmetrics = \"{METRICS}\"\nshutdown_grace_ms = 5000\n",
        var("FILEMR_SERVER_DEVICE"),
        var("FILEMR_SERVER_ADDR")
    );
    for (name, path) in exports {
        text.push_str(&format!("[[export]]\nname = \"{name}\"\npath = \"{}\"\n", path.display()));
    }
    let p = dir.join("filemrd.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A test directory with two export directories: `data` holding `f` (1 MiB of zeros) and
/// `second` holding `g` (8 KiB of `fill`).
fn exports(tag: &str, second: &str, fill: u8) -> (PathBuf, PathBuf, PathBuf) {
    let dir =
        PathBuf::from(var("FILEMR_PAGECACHE_DIR")).join(format!("{tag}-{}", std::process::id()));
    let (data, other) = (dir.join("data"), dir.join(second));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(data.join("f"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(other.join("g"), vec![fill; 8192]).unwrap();
    (dir, data, other)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens `file` for writing from another thread (breaking the daemon's lease); returns
/// when the open returned.
fn break_lease(file: &Path) -> std::thread::JoinHandle<()> {
    let file = file.to_path_buf();
    std::thread::spawn(move || {
        let _f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    })
}

fn client() -> LayoutClient {
    let server: SocketAddr = format!("{}:{PORT}", var("FILEMR_SERVER_ADDR")).parse().unwrap();
    let mut cfg = ClientConfig::new(var("FILEMR_PEER_DEVICE"), server);
    cfg.source = Some(var("FILEMR_PEER_ADDR").parse().unwrap());
    LayoutClient::connect(cfg).expect("connect to filemrd")
}

/// A held layout through which the client writes, across a lease break; returns the
/// events the client saw.
fn revocation_with_a_peer(file: &Path, path: &str, seed: u8) -> Vec<LayoutEvent> {
    let c = client();
    let layout = c.get(path, 0, 0, Access::ReadWrite).unwrap();
    layout.write(0, &pattern(4096, seed)).unwrap();
    break_lease(file).join().unwrap();
    // The layout comes back; writing through it again works.
    layout.write(4096, &pattern(4096, seed + 1)).unwrap();
    layout.commit().unwrap();
    let mut events = Vec::new();
    while let Some(ev) = c.next_event(Duration::from_millis(100)) {
        events.push(ev);
    }
    layout.give_back().unwrap();
    c.close();
    events
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn filemrd_serves_reloads_reports_and_drains() {
    let (dir, data, more) = exports("filemrd", "more", 7);

    // Bad configurations are refused with the key and the line.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "device = \"rxe_srv\"\nlisten = \"10.77.0.1:1\"\nbogus = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_filemrd"))
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 3") && err.contains("bogus"), "{err}");
    let cfg = config(&dir, &[("data", &data)]);
    let out = Command::new(env!("CARGO_BIN_EXE_filemrd"))
        .args(["--check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Start; READY=1 through sd_notify.
    let notify = Notify::new(&dir);
    let log = std::fs::File::create(dir.join("filemrd.log")).unwrap();
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_filemrd"))
            .arg("--config")
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = notify.wait("READY=1");
    assert!(ready.contains("STATUS=serving 0 layout(s)"), "{ready}");

    // The CLI: put, get, stat, and clear refusals.
    let local = dir.join("local");
    std::fs::write(&local, pattern(300_000, 3)).unwrap();
    let out = cli(&["put", &url("data/f"), local.to_str().unwrap(), "--offset", "4096"]);
    assert!(out.status.success(), "put: {}", String::from_utf8_lossy(&out.stderr));
    let copy = dir.join("copy");
    let out = cli(&[
        "get",
        &url("data/f"),
        "-o",
        copy.to_str().unwrap(),
        "--offset",
        "4096",
        "--len",
        "300000",
    ]);
    assert!(out.status.success(), "get: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&copy).unwrap() == pattern(300_000, 3), "get returns what put wrote");
    let out = cli(&["stat", &url("data/f")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("size 1048576"), "{out:?}");
    for (path, says) in [
        ("data/../../etc/passwd", "escapes its export"),
        ("nope/f", "no such export or file"),
        ("data/missing", "no such export or file"),
    ] {
        let out = cli(&["stat", &url(path)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{path}: {err}");
    }
    assert!(
        std::fs::read(data.join("f")).unwrap()[4096..4096 + 300_000] == pattern(300_000, 3)[..]
    );

    // /metrics over HTTP, OpenMetrics.
    let (head, body) = http_get(METRICS, "/metrics");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.contains("filemr_build_info{version=\"0.1.0\"} 1"), "{body}");
    assert!(body.contains("filemr_layout_requests_total{op=\"get\",result=\"EXDEV\"} 1"), "{body}");
    assert!(http_get(METRICS, "/other").0.contains("404"));

    // A real Prometheus scrapes it every second while a revocation happens.
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: filemrd\n    static_configs:\n      - targets: ['{METRICS}']\n"),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", prom_dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(prom_dir.join("log")).unwrap())
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");
    wait_until("prometheus scraping filemrd", Duration::from_secs(120), || {
        TcpStream::connect(PROMETHEUS).is_ok() && prom_value("up{job=\"filemrd\"}") == Some(1.0)
    });
    let revocations = "sum(filemr_region_revocations_total)";
    let before = prom_value(revocations).unwrap_or(0.0);
    let seen = revocation_with_a_peer(&data.join("f"), "data/f", 5);
    let kinds: Vec<String> = seen
        .iter()
        .map(|e| format!("{e:?}").split([' ', '{']).next().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["Recalled", "Returned", "Available"], "{seen:?}");
    wait_until("the revocation counter going up in Prometheus", Duration::from_secs(30), || {
        prom_value(revocations).is_some_and(|v| v >= before + 1.0)
    });
    wait_until("the revocation histogram's count going up", Duration::from_secs(30), || {
        prom_value("filemr_region_revocation_seconds_count").is_some_and(|v| v >= 1.0)
            && prom_value("filemr_grant_recall_seconds_count").is_some_and(|v| v >= 1.0)
    });
    let (_, meta) =
        http_get(PROMETHEUS, "/api/v1/metadata?metric=filemr_region_revocation_seconds");
    assert!(meta.contains("\"type\":\"histogram\""), "{meta}");
    let (_, meta) = http_get(PROMETHEUS, "/api/v1/metadata?metric=filemr_region_revocations");
    assert!(meta.contains("\"type\":\"counter\""), "{meta}");
    let _ = prom.kill();
    let _ = prom.wait();
    let f = std::fs::read(data.join("f")).unwrap();
    assert!(
        f[..4096] == pattern(4096, 5)[..] && f[4096..8192] == pattern(4096, 6)[..],
        "the peer's writes around the break are in the file"
    );

    // SIGHUP: a new export appears.
    let cfg2 = config(&dir, &[("data", &data), ("more", &more)]);
    assert_eq!(cfg, cfg2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    notify.wait("RELOADING=1");
    notify.wait("READY=1");
    let out = cli(&["stat", &url("more/g")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("size 8192"), "after SIGHUP: {out:?}");

    // SIGTERM with a layout held: recalled, returned, exit 0.
    let c = client();
    let layout = c.get("data/f", 0, 0, Access::ReadWrite).unwrap();
    layout.write(8192, &pattern(4096, 9)).unwrap();
    let mut daemon = daemon;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    notify.wait("STOPPING=1");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = daemon.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "filemrd still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join("filemrd.log")).unwrap();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("returned=1") && log.contains("lost=0"),
        "the held layout was returned:\n{log}"
    );
    let mut events = Vec::new();
    while let Some(ev) = c.next_event(Duration::from_millis(100)) {
        events.push(format!("{ev:?}"));
    }
    assert!(events.first().is_some_and(|e| e.starts_with("Recalled")), "{events:?}");
    assert!(events.get(1).is_some_and(|e| e.starts_with("Returned")), "{events:?}");
    drop(layout);
    drop(c);
    let f = std::fs::read(data.join("f")).unwrap();
    assert!(
        f[8192..12288] == pattern(4096, 9)[..],
        "the write committed on the recall is in the file"
    );
}

/// `filemr hold` in the background, its output in a file.
fn hold(url: &str, out: &Path, silent: bool, seconds: u32) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_filemr"));
    cmd.args(["--device", &var("FILEMR_PEER_DEVICE"), "--source", &var("FILEMR_PEER_ADDR")])
        .args(["hold", url, "--seconds", &seconds.to_string(), "--interval-ms", "20"]);
    if silent {
        cmd.arg("--silent");
    }
    cmd.stdout(std::fs::File::create(out).unwrap()).stderr(Stdio::inherit()).spawn().unwrap()
}

fn wait_output(out: &Path, want: &str) {
    wait_until(want, Duration::from_secs(60), || {
        std::fs::read_to_string(out).is_ok_and(|t| t.contains(want))
    });
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn cli_peers_cooperate_or_get_fenced_and_read_only_exports_refuse_writes() {
    const PORT2: u16 = 20050;
    let (dir, data, ro) = exports("filemrd-cli", "ro", 1);
    let cfg = dir.join("filemrd.toml");
    std::fs::write(
        &cfg,
        format!(
            "device = \"{}\"\nlisten = \"{}:{PORT2}\"\nmetrics = \"127.0.0.1:9465\"\nrevocation = \"fence\"\n\
             [[export]]\nname = \"data\"\npath = \"{}\"\n[[export]]\nname = \"ro\"\npath = \"{}\"\nread_only = true\n",
            var("FILEMR_SERVER_DEVICE"),
            var("FILEMR_SERVER_ADDR"),
            data.display(),
            ro.display()
        ),
    )
    .unwrap();
    let notify = Notify::new(&dir);
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_filemrd"))
            .arg("--config")
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(std::fs::File::create(dir.join("filemrd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    notify.wait("READY=1");
    let url2 = |p: &str| format!("rdma://{}:{PORT2}/{p}", var("FILEMR_SERVER_ADDR"));

    // A read-only export refuses a write layout; reading it works.
    let local = dir.join("local");
    std::fs::write(&local, b"no").unwrap();
    let out = cli(&["put", &url2("ro/g"), local.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("read-only"), "{err}");
    let out = cli(&["stat", &url2("ro/g")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("size 8192"), "{out:?}");

    // A cooperative peer across a truncate: recalled, returned, available, no failed write.
    let out1 = dir.join("hold-cooperative");
    let mut peer = hold(&url2("data/f"), &out1, false, 6);
    wait_output(&out1, "holding");
    std::thread::sleep(Duration::from_millis(500));
    {
        let f = std::fs::OpenOptions::new().write(true).open(data.join("f")).unwrap();
        f.set_len(1 << 19).unwrap();
    }
    assert!(peer.wait().unwrap().success());
    let text = std::fs::read_to_string(&out1).unwrap();
    for want in ["Recalled", "Returned", "generation: 2, len: 524288 }", " 0 failed", "committed"] {
        assert!(text.contains(want), "cooperative hold: no {want:?} in\n{text}");
    }

    // A silent peer: fenced at the deadline; the breaker waits less than lease-break-time.
    let _bt = BreakTime::set(3);
    let out2 = dir.join("hold-silent");
    let mut silent = hold(&url2("data/f"), &out2, true, 8);
    wait_output(&out2, "holding");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    drop(std::fs::OpenOptions::new().write(true).open(data.join("f")).unwrap());
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(3), "the breaker waited {waited:?}");
    assert!(silent.wait().unwrap().success());
    let text = std::fs::read_to_string(&out2).unwrap();
    // Fenced at the deadline: the peer is told (LOST, Revoked) or, when its next write
    // gets there first, that write fails with a remote access error (its connection then
    // closes). Either way no write succeeds after the fence and nothing is committed.
    assert!(text.contains("Recalled"), "silent hold: no recall in\n{text}");
    let told = text.contains("Lost {") && text.contains("reason: Revoked");
    let refused = text.contains("RemoteAccess");
    assert!(told || refused, "silent hold: neither LOST nor a refused write in\n{text}");
    assert!(text.contains("failed: layout"), "silent hold: no failed write in\n{text}");
    assert!(
        text.contains("nothing to commit") || text.contains("commit failed"),
        "silent hold: committed after the fence?\n{text}"
    );
    let f = std::fs::read(data.join("f")).unwrap();
    assert_eq!(f.len(), 1 << 19);
    assert_ne!(&f[..8], &[0u8; 8], "the cooperative peer's records are in the file");
}
