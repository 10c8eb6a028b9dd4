//! `filemr`: read, write, stat and benchmark files a filemrd exports, over RDMA.
//!
//! `filemr --device rxe0 get rdma://10.0.0.1/data/file -o copy`,
//! `filemr --device rxe0 put rdma://10.0.0.1/data/file local`, `stat`, `bench`.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use filemr::layout::{ClientConfig, Layout, LayoutClient, LayoutError, RecallPolicy};
use filemr::region::Access;
use filemrd::url::RdmaUrl;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::errno::Errno;

/// Read and write files a filemrd exports, one-sided over RDMA.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Local RDMA device (default: $FILEMR_DEVICE).
    #[arg(long, short, env = "FILEMR_DEVICE")]
    device: Option<String>,
    /// Local address to connect from (an address of the device).
    #[arg(long)]
    source: Option<IpAddr>,
    /// Seconds a request may take.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Copy a remote file (or a range of it) to a local file or stdout.
    Get {
        /// rdma://host[:port]/export/path
        url: RdmaUrl,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Start here.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// This many bytes (default: to the end of the file).
        #[arg(long)]
        len: Option<u64>,
    },
    /// Write a local file into a remote one at an offset (the remote file must already be
    /// long enough: layouts never grow files), and commit it.
    Put {
        /// rdma://host[:port]/export/path
        url: RdmaUrl,
        /// The local file.
        file: PathBuf,
        /// Where in the remote file.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Print a remote file's size and layout generation.
    Stat {
        /// rdma://host[:port]/export/path
        url: RdmaUrl,
    },
    /// Hold a read-write layout of the whole file and write a counter through it
    /// (record i, a u64, at 8 * i, cycling) for a while, printing what happens to the
    /// layout (recall, return, availability, loss) as it happens; commit at the end.
    Hold {
        /// rdma://host[:port]/export/path
        url: RdmaUrl,
        /// How long.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Milliseconds between writes.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Never answer recalls (a peer that ignores its server: to see fencing and
        /// retargeting at work).
        #[arg(long)]
        silent: bool,
    },
    /// Measure RDMA WRITE and READ throughput through a layout of the file.
    Bench {
        /// rdma://host[:port]/export/path
        url: RdmaUrl,
        /// Bytes per transfer.
        #[arg(long, default_value_t = 1 << 20)]
        block: usize,
        /// Seconds per direction.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

/// Chunk size of get and put (one transfer each).
const CHUNK: usize = 1 << 20;

fn explain(e: &LayoutError, path: &str) -> String {
    match e {
        LayoutError::Refused { errno: Errno::ENOENT, .. } => {
            format!("{path}: no such export or file")
        }
        LayoutError::Refused { errno: Errno::EXDEV, .. } => {
            format!("{path}: the path escapes its export")
        }
        LayoutError::Refused { errno: Errno::EROFS, .. } => {
            format!("{path}: the export is read-only")
        }
        LayoutError::Refused { errno: Errno::EBUSY, .. } => {
            format!(
                "{path}: the file is busy (someone opened it while it was being registered); try again"
            )
        }
        LayoutError::Refused { errno: Errno::EINVAL, .. } => {
            format!(
                "{path}: the range is outside the file (layouts never grow files), or it is not a regular file"
            )
        }
        LayoutError::Verbs { source, .. }
            if source.verb == "ibv_open_device" || source.errno == Errno::ENODEV =>
        {
            let devices = filemr::verbs::device_names().unwrap_or_default();
            format!("{e} (RDMA devices here: {devices:?})")
        }
        other => other.to_string(),
    }
}

fn bar(total: u64) -> ProgressBar {
    // Drawn only once a transfer has taken more than a second.
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    if let Ok(style) =
        ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}")
    {
        pb.set_style(style);
    }
    pb
}

fn tick(pb: &ProgressBar, started: Instant, n: u64) {
    if pb.is_hidden() && started.elapsed() > Duration::from_secs(1) {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    }
    pb.inc(n);
}

fn run(args: Args) -> Result<(), String> {
    let device = args.device.clone().ok_or_else(|| {
        let devices = filemr::verbs::device_names().unwrap_or_default();
        format!("no device: pass --device or set FILEMR_DEVICE (RDMA devices here: {devices:?})")
    })?;
    let url = match &args.cmd {
        Cmd::Get { url, .. }
        | Cmd::Put { url, .. }
        | Cmd::Stat { url }
        | Cmd::Hold { url, .. }
        | Cmd::Bench { url, .. } => url.clone(),
    };
    let mut cfg = ClientConfig::new(device, url.server);
    cfg.source = args.source;
    cfg.timeout = Duration::from_secs(args.timeout);
    if let Cmd::Hold { silent: true, .. } = args.cmd {
        cfg.recall = RecallPolicy::Manual;
    }
    let client = LayoutClient::connect(cfg).map_err(|e| explain(&e, &url.path))?;
    let why = |e: LayoutError| explain(&e, &url.path);
    match args.cmd {
        Cmd::Stat { .. } => {
            let layout = client.get(&url.path, 0, 0, Access::Read).map_err(why)?;
            let d = layout.desc().ok_or("layout lost")?;
            println!("{}: size {} generation {}", url.path, d.len, d.generation);
            layout.give_back().map_err(why)?;
        }
        Cmd::Get { output, offset, len, .. } => {
            let layout =
                client.get(&url.path, offset, len.unwrap_or(0), Access::Read).map_err(why)?;
            let total = layout.desc().ok_or("layout lost")?.len;
            let mut out: Box<dyn Write> = match &output {
                Some(p) => {
                    Box::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?)
                }
                None => Box::new(std::io::stdout().lock()),
            };
            let (pb, started) = (bar(total), Instant::now());
            let mut buf = vec![0; CHUNK];
            let mut at = 0;
            while at < total {
                let n = (total - at).min(CHUNK as u64) as usize;
                layout.read(at, &mut buf[..n]).map_err(why)?;
                out.write_all(&buf[..n]).map_err(|e| format!("writing the output: {e}"))?;
                at += n as u64;
                tick(&pb, started, n as u64);
            }
            out.flush().map_err(|e| format!("writing the output: {e}"))?;
            pb.finish_and_clear();
            layout.give_back().map_err(why)?;
        }
        Cmd::Put { file, offset, .. } => {
            let data = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            if data.is_empty() {
                return Ok(());
            }
            let layout =
                client.get(&url.path, offset, data.len() as u64, Access::Write).map_err(why)?;
            let (pb, started) = (bar(data.len() as u64), Instant::now());
            for (i, chunk) in data.chunks(CHUNK).enumerate() {
                layout.write((i * CHUNK) as u64, chunk).map_err(why)?;
                tick(&pb, started, chunk.len() as u64);
            }
            layout.commit().map_err(why)?;
            pb.finish_and_clear();
            layout.give_back().map_err(why)?;
            eprintln!("{}: {} bytes written at {offset} and committed", url.path, data.len());
        }
        Cmd::Hold { seconds, interval_ms, .. } => {
            let layout = client.get(&url.path, 0, 0, Access::ReadWrite).map_err(why)?;
            hold(&client, &layout, seconds, interval_ms);
            if let Some(reason) = layout.lost() {
                println!("{} layout lost ({reason:?}): nothing to commit", stamp());
                return Ok(());
            }
            match layout.commit() {
                Ok(_) => println!("{} committed", stamp()),
                Err(e) => println!("{} commit failed: {}", stamp(), explain(&e, &url.path)),
            }
        }
        Cmd::Bench { block, seconds, .. } => {
            let layout = client.get(&url.path, 0, 0, Access::ReadWrite).map_err(why)?;
            let size = layout.desc().ok_or("layout lost")?.len;
            let block = (block as u64).min(size).max(1) as usize;
            let data = vec![0x5A; block];
            let w =
                bench(&layout, size, block, seconds, |l, at| l.write(at, &data)).map_err(why)?;
            let mut buf = vec![0; block];
            let r =
                bench(&layout, size, block, seconds, |l, at| l.read(at, &mut buf)).map_err(why)?;
            layout.commit().map_err(why)?;
            println!("{}: {block}-byte blocks: WRITE {w:.1} MiB/s, READ {r:.1} MiB/s", url.path);
            layout.give_back().map_err(why)?;
        }
    }
    client.close();
    Ok(())
}

/// Seconds since the epoch, with microseconds: the time stamp of `hold`'s lines.
fn stamp() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:06}", t.as_secs(), t.subsec_micros())
}

/// `hold`: write the counter, print events and the first failure of each kind.
fn hold(client: &LayoutClient, layout: &Layout, seconds: u64, interval_ms: u64) {
    let started = Instant::now();
    let (mut ok, mut failed, mut last_error) = (0u64, 0u64, String::new());
    let mut i = 0u64;
    println!("{} holding layout {} {:?}", stamp(), layout.id(), layout.desc());
    while started.elapsed() < Duration::from_secs(seconds) {
        let records = layout.desc().map_or(0, |d| d.len / 8);
        if records > 0 {
            match layout.write(8 * (i % records), &(i + 1).to_le_bytes()) {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    let msg = e.to_string();
                    if msg != last_error {
                        println!("{} write {i} failed: {msg}", stamp());
                        last_error = msg;
                    }
                }
            }
            i += 1;
        }
        while let Some(ev) = client.next_event(Duration::ZERO) {
            println!("{} {ev:?}", stamp());
        }
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
    println!("{} writes: {ok} ok, {failed} failed", stamp());
}

/// MiB/s of `op` over `seconds`, cycling through the layout.
fn bench(
    layout: &Layout,
    size: u64,
    block: usize,
    seconds: u64,
    mut op: impl FnMut(&Layout, u64) -> Result<(), LayoutError>,
) -> Result<f64, LayoutError> {
    let started = Instant::now();
    let (mut at, mut bytes) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(seconds) {
        if at + block as u64 > size {
            at = 0;
        }
        op(layout, at)?;
        at += block as u64;
        bytes += block as u64;
    }
    Ok(bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filemr: {e}");
            ExitCode::FAILURE
        }
    }
}
