//! The demo `cargo xtask demo` runs in each guest: filemrd serves a file, a peer writes
//! through a layout, another process truncates the file (the peer cooperates) and then
//! opens it again while a silent peer holds it (fenced at the deadline). Prints the
//! timeline of both breaks, merged from the daemon's log, the peers' output and the
//! breaker, and the metrics before and after.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const METRICS: &str = "127.0.0.1:9464";
const PORT: u16 = 20049;
const BREAK_TIME: &str = "/proc/sys/fs/lease-break-time";

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: the demo runs in the guest"))
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Seconds since the epoch of a tracing time stamp `2026-11-25T15:22:55.471502Z`.
fn parse_stamp(s: &str) -> Option<f64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target dir").join(name)
}

fn metrics() -> String {
    let Ok(mut s) = TcpStream::connect(METRICS) else { return String::new() };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let wanted = [
        "filemr_region_revocations_total",
        "filemr_region_revocation_seconds_count",
        "filemr_region_rebuilds_total",
        "filemr_grant_recalled_total",
        "filemr_grant_returned_total",
        "filemr_grant_fenced_total",
        "filemr_layout_held",
    ];
    text.lines()
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// Lines from a child's pipe, each with its time stamp (the child's own when it has
/// one), collected by a thread.
fn collect(
    pipe: impl Read + Send + 'static,
    who: &'static str,
) -> std::thread::JoinHandle<Vec<(f64, String)>> {
    std::thread::spawn(move || {
        BufReader::new(pipe)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                let (first, rest) = l.split_once(' ').unwrap_or((&l, ""));
                let t =
                    first.parse::<f64>().ok().or_else(|| parse_stamp(first)).unwrap_or_else(now);
                let rest = rest.trim_start();
                let keep = who != "filemrd"
                    || rest.contains("region event")
                    || rest.contains("layout granted")
                    || rest.contains("peer connection closed");
                keep.then(|| {
                    (t, format!("{who:8} {}", rest.replace("INFO filemr::layout::server: ", "")))
                })
            })
            .collect()
    })
}

fn hold(file_url: &str, seconds: &str, silent: bool) -> Child {
    let mut cmd = Command::new(bin("filemr"));
    cmd.args(["--device", &var("FILEMR_PEER_DEVICE"), "--source", &var("FILEMR_PEER_ADDR")])
        .args(["hold", file_url, "--seconds", seconds, "--interval-ms", "20"]);
    if silent {
        cmd.arg("--silent");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("filemr hold")
}

/// This process opens the file for writing (blocking until filemr lets go of it) and
/// truncates it to `size` (or leaves the size when `None`).
fn breaker(file: &Path, size: Option<u64>, events: &mut Vec<(f64, String)>) {
    events.push((now(), "breaker  opening the file for writing".to_string()));
    let f = std::fs::OpenOptions::new().write(true).open(file).expect("open for writing");
    events.push((now(), "breaker  open returned".to_string()));
    if let Some(size) = size {
        f.set_len(size).expect("truncate");
        events.push((now(), format!("breaker  truncated to {size} bytes, closing")));
    }
}

/// Waits until filemrd reports `n` layouts held.
fn wait_held(n: u32) {
    let want = format!("filemr_layout_held {n}");
    let start = Instant::now();
    while !metrics().contains(&want) {
        assert!(start.elapsed() < Duration::from_secs(60), "no layout held after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let dir = PathBuf::from(var("FILEMR_PAGECACHE_DIR")).join("demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let file = dir.join("data/file");
    std::fs::write(&file, vec![0u8; 2 << 20]).unwrap();
    let cfg = dir.join("filemrd.toml");
    std::fs::write(
        &cfg,
        format!(
            "device = \"{}\"\nlisten = \"{}:{PORT}\"\nmetrics = \"{METRICS}\"\nrevocation = \"fence\"\n[[export]]\nname = \"data\"\npath = \"{}\"\n",
            var("FILEMR_SERVER_DEVICE"),
            var("FILEMR_SERVER_ADDR"),
            dir.join("data").display()
        ),
    )
    .unwrap();
    let old_break = std::fs::read_to_string(BREAK_TIME).unwrap_or_else(|_| "45".into());
    let _ = std::fs::write(BREAK_TIME, "5");
    println!(
        "filemrd exports {} as data/ (device {}, lease-break-time 5 s for the demo)",
        dir.join("data").display(),
        var("FILEMR_SERVER_DEVICE")
    );
    let mut daemon = Command::new(bin("filemrd"))
        .arg("--config")
        .arg(&cfg)
        .env("FILEMR_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("filemrd");
    let daemon_log = collect(daemon.stderr.take().unwrap(), "filemrd");
    let start = Instant::now();
    while TcpStream::connect(METRICS).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "filemrd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\nmetrics before:\n{}", metrics());
    let url = format!("rdma://{}:{PORT}/data/file", var("FILEMR_SERVER_ADDR"));
    let mut events = Vec::new();

    println!(
        "1. a cooperative peer writes through a layout of the 2 MiB file; this process truncates it to 1 MiB"
    );
    scenario(&url, &file, "peer", Some(1 << 20), &mut events);
    println!(
        "2. a silent peer (never answers recalls) holds a layout; this process opens the file for writing"
    );
    scenario(&url, &file, "silent", None, &mut events);

    let after = metrics();
    let _ = nix_kill(daemon.id());
    let _ = daemon.wait();
    events.extend(daemon_log.join().unwrap_or_default());
    let _ = std::fs::write(BREAK_TIME, old_break.trim());
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let t0 = events.first().map_or(0.0, |e| e.0);
    println!(
        "\ntimeline (ms; filemrd lines carry the daemon's time stamps, peer lines the time the peer printed them):"
    );
    for (t, what) in &events {
        println!("{:>9.1}  {what}", (t - t0) * 1000.0);
    }
    println!("\nmetrics after:\n{after}");
}

/// A peer (`who`: "peer" cooperates, "silent" does not) holds a layout; once it does,
/// this process breaks the lease (truncating to `size` if given); the peer's lines join
/// `events`.
fn scenario(
    url: &str,
    file: &Path,
    who: &'static str,
    size: Option<u64>,
    events: &mut Vec<(f64, String)>,
) {
    let silent = who == "silent";
    let mut peer = hold(url, if silent { "9" } else { "6" }, silent);
    let out = collect(peer.stdout.take().unwrap(), who);
    wait_held(1);
    std::thread::sleep(Duration::from_secs(1));
    breaker(file, size, events);
    let _ = peer.wait();
    events.extend(out.join().unwrap_or_default());
}

/// SIGTERM to the daemon (it recalls, releases and exits).
fn nix_kill(pid: u32) -> std::io::Result<()> {
    let st = Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    if st.success() { Ok(()) } else { Err(std::io::Error::other(format!("kill: {st}"))) }
}
