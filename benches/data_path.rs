//! The data path (issue 12, target 1): RDMA WRITE and READ through a filemr grant (a
//! memory-window key over a registered file region) on the two-device veth topology,
//! against the same client through a plain memory region's key, and against perftest's
//! `ib_write_bw` / `ib_read_bw` / `ib_write_lat` on the same two devices, in the same run.
//! Guest only (it needs the link topology's devices); skipped visibly elsewhere.

#[path = "support/revocation.rs"]
mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use filemr::layout::{ClientConfig, Export, LayoutClient, LayoutEvent, LayoutServer, ServerConfig};
use filemr::region::{Access, Manager, ManagerConfig, Region, RegionEventKind};
use filemr::sys::Mapping;
use filemr::verbs::{
    Access as MrAccess, CompletionQueue, Context, MemoryRegion, ProtectionDomain, QueuePair,
    RemoteBuf, WcStatus,
};

const REGION: usize = 8 << 20;
/// Work requests kept outstanding (perftest's `-t` is set to the same).
const DEPTH: usize = 16;
/// Bytes moved per bandwidth sample.
const VOLUME: usize = 64 << 20;

/// One side's queue pair and buffer.
struct Side {
    cq: Arc<CompletionQueue>,
    qp: Arc<QueuePair>,
    gid_index: u8,
    gid: [u8; 16],
    buf: Arc<Mapping>,
    mr: MemoryRegion,
}

impl Side {
    fn new(pd: &Arc<ProtectionDomain>, access: MrAccess) -> Side {
        let cq = CompletionQueue::new(pd.context(), 256).unwrap();
        let qp = Arc::new(QueuePair::new_rc(pd, &cq).unwrap());
        let (gid_index, gid) = pd.context().pick_gid(1).unwrap();
        let buf = Arc::new(Mapping::anonymous(REGION).unwrap());
        let mr = MemoryRegion::register(pd, &buf, access).unwrap();
        Side { cq, qp, gid_index, gid, buf, mr }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Write,
    Read,
}

/// MiB/s of `op` with `size`-byte messages, DEPTH outstanding, into `to` (REGION bytes).
fn bandwidth(peer: &Side, op: Op, size: usize, to: RemoteBuf) -> f64 {
    let n = (VOLUME / size).max(DEPTH * 2);
    let slots = REGION / size;
    let (mut posted, mut done) = (0usize, 0usize);
    let start = Instant::now();
    while done < n {
        while posted < n && posted - done < DEPTH {
            let off = (posted % slots) * size;
            let remote = RemoteBuf { addr: to.addr + off as u64, rkey: to.rkey };
            match op {
                Op::Write => peer.qp.post_write(posted as u64, &peer.mr, off, size, remote),
                Op::Read => peer.qp.post_read(posted as u64, &peer.mr, off, size, remote),
            }
            .unwrap();
            posted += 1;
        }
        for wc in peer.cq.poll(DEPTH).unwrap() {
            assert_eq!(wc.status, WcStatus::Success, "transfer {}", wc.wr_id);
            done += 1;
        }
    }
    (n * size) as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// Median µs of one 8-byte WRITE, posted and completed alone.
fn latency(peer: &Side, to: RemoteBuf) -> f64 {
    let mut v: Vec<f64> = (0..2000)
        .map(|i| {
            let t = Instant::now();
            peer.qp.post_write(i, &peer.mr, 0, 8, to).unwrap();
            let wc = peer.cq.wait_one(Duration::from_secs(10)).unwrap();
            assert_eq!(wc.status, WcStatus::Success);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// perftest's number for `tool` with `size`-byte messages between the two devices: BW
/// average in MiB/s, or for `ib_write_lat` t_typical in µs. `None` if it would not run.
fn perftest(tool: &str, size: usize, port: u16) -> Option<f64> {
    let var = |k: &str| std::env::var(k).ok();
    let (srv, peer, addr) =
        (var("FILEMR_SERVER_DEVICE")?, var("FILEMR_PEER_DEVICE")?, var("FILEMR_SERVER_ADDR")?);
    let gid = |dev: &str| Context::open(dev).ok()?.pick_gid(1).ok().map(|(i, _)| i.to_string());
    let (gs, gp) = (gid(&srv)?, gid(&peer)?);
    let size = size.to_string();
    let port = port.to_string();
    let lat = tool == "ib_write_lat";
    let common = |dev: &str, g: &str| {
        let mut a = vec!["-d", dev, "-x", g, "-s", &size, "-p", &port, "-F"];
        a.extend(if lat { ["-n", "2000"] } else { ["-n", "1000"] });
        if !lat {
            a.extend(["-t", "16"]);
        }
        if tool == "ib_read_bw" {
            a.extend(["-o", "16"]);
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let mut server = Command::new(tool)
        .args(common(&srv, &gs))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(tool).args(common(&peer, &gp)).arg(&addr).output().ok();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out?.stdout).into_owned();
    // The result line starts with the message size.
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(size.as_str()))?;
    let f: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // ib_*_bw: bytes iterations peak average msgrate; ib_write_lat: bytes iterations
    // t_min t_max t_typical ...
    if lat { f.get(4).copied() } else { f.get(3).copied() }
}

fn file(dir: &Path, tag: &str) -> PathBuf {
    let p = dir.join(format!("filemr-bench-dp-{tag}-{}", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(REGION as u64).unwrap();
    p
}

/// Staging commit of 1 MiB against a bare pwrite + fdatasync of 1 MiB, same file system.
fn commit_cost(region: &Region, dir: &Path, peer: &Side, key: RemoteBuf) -> (f64, f64) {
    let bare = file(dir, "bare");
    let f = std::fs::OpenOptions::new().write(true).open(&bare).unwrap();
    let data = vec![0x5Au8; 1 << 20];
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..8u8 {
        // The peer writes a fresh MiB: every byte differs from what was committed.
        peer.buf.write_at(0, &vec![i.wrapping_add(1); 1 << 20]).unwrap();
        peer.qp.post_write(u64::from(i), &peer.mr, 0, 1 << 20, key).unwrap();
        let wc = peer.cq.wait_one(Duration::from_secs(30)).unwrap();
        assert_eq!(wc.status, WcStatus::Success);
        let t = Instant::now();
        region.commit(0..1 << 20).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        f.write_all_at(&data, 0).unwrap();
        f.sync_data().unwrap();
        theirs.push(t.elapsed().as_secs_f64());
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2] * 1e3
    };
    let _ = std::fs::remove_file(bare);
    (med(ours), med(theirs))
}

/// Revocation of one region whose layout a cooperative peer holds (recall, its commit
/// and return included), as the breaker's blocked open sees it, against the bare loop.
fn revocation_with_peer(
    mgr: &Manager,
    rt: &tokio::runtime::Runtime,
    registry: &mut prometheus_client::registry::Registry,
    dir: &Path,
    peer_dev: &str,
) -> Option<String> {
    let var = |k: &str| std::env::var(k).ok();
    let (srv_addr, peer_addr) = (var("FILEMR_SERVER_ADDR")?, var("FILEMR_PEER_ADDR")?);
    let root = dir.join(format!("filemr-bench-export-{}", std::process::id()));
    std::fs::create_dir_all(&root).ok()?;
    let path = root.join("f");
    std::fs::write(&path, vec![0u8; 4096]).ok()?;
    let listen = format!("{srv_addr}:0").parse().ok()?;
    let export = Export { name: "bench".into(), root: root.clone(), read_only: false };
    let server = {
        let _enter = rt.enter();
        LayoutServer::start(mgr.clone(), ServerConfig::new(listen, vec![export]), registry).ok()?
    };
    let mut cfg = ClientConfig::new(peer_dev, server.local_addr());
    cfg.source = Some(peer_addr.parse().ok()?);
    let client = LayoutClient::connect(cfg).ok()?;
    let layout = client.get("bench/f", 0, 4096, Access::ReadWrite).ok()?;
    layout.write(0, &[1u8; 64]).ok()?;
    layout.commit().ok()?;
    let mut br = support::BlockingBreaker::spawn();
    let mut events = mgr.events();
    let mut samples = Vec::new();
    // Where the time goes, from the server's region events: break -> Recall sent,
    // Recall -> the peer's return (its commit included), return -> lease released.
    let mut phases: [Vec<f64>; 3] = Default::default();
    for _ in 0..7 {
        // A write not committed yet: the recall's commit carries it.
        layout.write(64, &[2u8; 64]).ok()?;
        br.send(&path);
        samples.push(br.blocked().as_secs_f64());
        loop {
            match client.next_event(Duration::from_secs(30)) {
                Some(LayoutEvent::Available { .. }) => break,
                Some(_) => {}
                None => return Some("revocation with a peer: no AVAILABLE in 30 s".into()),
            }
        }
        let (mut recall, mut returned, mut revoked) = (None, None, None);
        while let Ok(Some(ev)) = events.try_recv() {
            match ev.kind {
                RegionEventKind::Recall { .. } => recall = Some(ev.at),
                RegionEventKind::Returned { .. } => returned = Some(ev.at),
                RegionEventKind::Revoked { since_break, .. } => {
                    revoked = Some((ev.at, since_break));
                }
                _ => {}
            }
        }
        if let (Some(c), Some(r), Some((v, since))) = (recall, returned, revoked) {
            let secs = |a: std::time::SystemTime, b: std::time::SystemTime| {
                b.duration_since(a).map_or(0.0, |d| d.as_secs_f64())
            };
            let released = since.as_secs_f64();
            let to_recall = released - secs(c, v);
            phases[0].push(to_recall);
            phases[1].push(secs(c, r));
            phases[2].push(secs(r, v));
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN) * 1e3
    };
    let [p0, p1, p2] = &mut phases;
    let (p0, p1, p2) = (med(p0), med(p1), med(p2));
    samples.sort_by(|a, b| a.total_cmp(b));
    let ours = samples[samples.len() / 2];
    let bare_path = root.join("bare");
    std::fs::write(&bare_path, vec![0u8; 4096]).ok()?;
    let bare = support::bare_revocation(&bare_path, support::bare_signal(), &mut br, 20);
    drop(layout);
    client.close();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&root);
    Some(format!(
        "revocation with a cooperative peer holding a layout (recall, its commit and return): the \
         breaker's open blocked {:.3} ms; bare fcntl+sigwaitinfo+F_UNLCK {:.3} ms; ratio {:.2} \
         (the 1.5x target is for no peers); break -> recall sent {p0:.3} ms, recall -> the \
         peer's return {p1:.3} ms, return -> released {p2:.3} ms",
        ours * 1e3,
        bare * 1e3,
        ours / bare
    ))
}

fn main() {
    if support::breaker_role() {
        return;
    }
    // Before any other thread exists, so every later thread inherits the mask.
    filemr::sys::lease_baseline::block(support::bare_signal()).unwrap();
    let (Ok(srv), Ok(peer_dev)) =
        (std::env::var("FILEMR_SERVER_DEVICE"), std::env::var("FILEMR_PEER_DEVICE"))
    else {
        println!("data path bench skipped: needs the guest's link topology (cargo xtask bench)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let mgr = {
        let _enter = rt.enter();
        Manager::new(ManagerConfig::new(srv.clone()), &mut registry).unwrap()
    };
    let peer_ctx = Arc::new(Context::open(&peer_dev).unwrap());
    let peer_pd = ProtectionDomain::new(&peer_ctx).unwrap();
    let peer = Side::new(&peer_pd, MrAccess::LOCAL_WRITE);
    let pd = mgr.protection_domain().expect("the device is there");
    let remote = MrAccess::LOCAL_WRITE | MrAccess::REMOTE_WRITE | MrAccess::REMOTE_READ;
    let server = Side::new(&pd, remote);
    server.qp.connect(1, server.gid_index, peer.qp.qp_num(), peer.gid).unwrap();
    peer.qp.connect(1, peer.gid_index, server.qp.qp_num(), server.gid).unwrap();
    let plain = RemoteBuf { addr: server.mr.addr(), rkey: server.mr.rkey() };

    let mut port = 18600;
    let mut perf = |tool: &str, size: usize| {
        port += 1;
        perftest(tool, size, port)
    };
    println!("data path, {srv} <- {peer_dev} over the veth link, {DEPTH} outstanding:");
    let mut baselines = Vec::new();
    for (op, tool) in [(Op::Write, "ib_write_bw"), (Op::Read, "ib_read_bw")] {
        for size in [64 << 10, 1 << 20] {
            let mr_bw = bandwidth(&peer, op, size, plain);
            baselines.push((op, size, mr_bw, perf(tool, size)));
        }
    }
    let lat_mr = latency(&peer, plain);
    let lat_perf = perf("ib_write_lat", 8);
    let env_dir = |k: &str| std::env::var(k).map(PathBuf::from).unwrap_or_else(|_| "/tmp".into());
    for (fs, dir) in
        [("page cache", env_dir("FILEMR_PAGECACHE_DIR")), ("fs-dax", env_dir("FILEMR_DAX_DIR"))]
    {
        let path = file(&dir, "region");
        let region = mgr.register(&path, 0, REGION, Access::ReadWrite).unwrap();
        let g = region.grant(&server.qp).unwrap();
        let key = RemoteBuf { addr: g.info().addr, rkey: g.info().rkey };
        let strategy = region.strategy().label();
        for &(op, size, mr_bw, perf_bw) in &baselines {
            let bw = bandwidth(&peer, op, size, key);
            let name = if op == Op::Write { "WRITE" } else { "READ" };
            let vs_perf = perf_bw.map_or("perftest n/a".into(), |p| {
                let verdict = match strategy {
                    "staging" => "the target is for in-place strategies",
                    _ if bw / p >= 0.95 => "target >= 0.95: met",
                    _ => "target >= 0.95: missed",
                };
                format!("perftest {p:.0} MiB/s = {:.2} ({verdict})", bw / p)
            });
            println!(
                "  {fs} ({strategy}) {name} {:>4} KiB: grant {bw:.0} MiB/s; plain MR {mr_bw:.0} = {:.2}; {vs_perf}",
                size >> 10,
                bw / mr_bw
            );
        }
        let lat = latency(&peer, key);
        println!(
            "  {fs} ({strategy}) WRITE 8 B completion: grant {lat:.1} us; plain MR {lat_mr:.1} us = {:.2}; ib_write_lat t_typical {}",
            lat / lat_mr,
            lat_perf.map_or("n/a".into(), |p| format!("{p:.1} us (one way; ours is a round trip)"))
        );
        if strategy == "staging" {
            let (ours, bare) = commit_cost(&region, &dir, &peer, key);
            println!(
                "  {fs} staging commit of 1 MiB: {ours:.2} ms; bare pwrite + fdatasync {bare:.2} ms = {:.2}",
                ours / bare
            );
        }
        drop(g);
        drop(region);
        let _ = std::fs::remove_file(path);
    }
    let dir = env_dir("FILEMR_PAGECACHE_DIR");
    match revocation_with_peer(&mgr, &rt, &mut registry, &dir, &peer_dev) {
        Some(line) => println!("{line}"),
        None => println!("revocation with a peer: could not set up the layout server or client"),
    }
}
