//! Shared support of the layout protocol's guest tests: the server in the test process
//! (on the server device), peers in child processes on the peer device at the other end of
//! the veth link (connecting from its address, so their traffic crosses the link), driven
//! by scripts (see [`peer_reexec_entry`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use filemr::layout::{
    ClientConfig, Export, LayoutClient, LayoutError, LayoutEvent, LayoutServer, RecallPolicy,
    ServerConfig,
};
use filemr::region::{Access, ManagerConfig};
use filemr::verbs::WcStatus;
use nix::errno::Errno;

use crate::guest::var;
use crate::region_support::{RT, manager};

/// Configures the process's manager for the server device (call first in every test).
pub fn server_device(c: &mut ManagerConfig) {
    c.device = var("FILEMR_SERVER_DEVICE");
}

/// An export of a fresh directory under `parent`.
pub fn export(parent: &Path, name: &str, read_only: bool) -> Export {
    let root = crate::guest::unique_path(parent, &format!("export-{name}"));
    std::fs::create_dir_all(&root).unwrap();
    Export { name: name.into(), root, read_only }
}

/// Starts a layout server for `exports` on the server address (a free port).
pub fn start_server(exports: Vec<Export>) -> LayoutServer {
    let addr: SocketAddr = format!("{}:0", var("FILEMR_SERVER_ADDR")).parse().unwrap();
    let _enter = RT.enter();
    let mut registry = crate::region_support::registry();
    LayoutServer::start(manager().clone(), ServerConfig::new(addr, exports), &mut registry)
        .expect("layout server")
}

/// A peer process running `script` against `server` from the peer device.
pub struct PeerProc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    pub ready: PathBuf,
}

impl PeerProc {
    /// Spawns the peer; `vars` are passed to the script.
    pub fn spawn(script: &str, server: SocketAddr, vars: &[(&str, &str)]) -> PeerProc {
        let tmp = std::env::temp_dir();
        let [out, err, ready] =
            ["peer-out", "peer-err", "peer-ready"].map(|t| crate::guest::unique_path(&tmp, t));
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "layout_support::peer_reexec_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FILEMR_PEER_SCRIPT", script)
        .env("FILEMR_LAYOUT_SERVER", server.to_string())
        .env("FILEMR_PEER_OUT", &out)
        .env("FILEMR_PEER_READY", &ready)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
        for (k, v) in vars {
            cmd.env(format!("FILEMR_PEER_{k}"), v);
        }
        PeerProc { child: cmd.spawn().expect("spawn peer"), out, err, ready }
    }

    /// Waits until the script said it is ready (or failed).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        while !self.ready.exists() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("peer exited ({st}) before it was ready:\n{}", self.stderr());
            }
            assert!(start.elapsed() < timeout, "peer not ready in {timeout:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the peer to finish successfully and returns what it reported.
    pub fn finish(mut self, timeout: Duration) -> HashMap<String, String> {
        let start = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("peer still running after {timeout:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(st.success(), "peer failed ({st}):\n{}", self.stderr());
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// The peer side, run in a child process when `FILEMR_PEER_SCRIPT` is set; a no-op
/// otherwise. Scripts (layout path in `FILEMR_PEER_PATH`, length in `FILEMR_PEER_LEN`):
/// - `stream`: cooperative peer; writes records (record i = i+1 as u64 at 8*i) until it
///   has seen RECALL, RETURNED and AVAILABLE and written 64 more; reports
///   `returned_records` (records committed by the recall), `total`, `recall_ms`.
/// - `silent`: manual recalls, never answered; writes and commits pattern A at 0, gets
///   ready, waits for the recall; in fence mode waits for LOST and reports the status of
///   a write after it (`after_lost`); in retarget mode writes pattern B at 8192 after the
///   deadline (`after_deadline`), tries to commit it (`commit_after_deadline`), returns
///   the layout late (`late_return`), waits for AVAILABLE, writes and commits pattern C
///   at 16384 (`after_available`), reports whether the key stayed the same (`same_key`).
/// - `refusals`: layouts the server must refuse; reports each errno.
/// - `malformed`: a second connection sends malformed frames; reports the answers, then
///   checks the first connection still works.
#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn peer_reexec_entry() {
    let Ok(script) = std::env::var("FILEMR_PEER_SCRIPT") else {
        return;
    };
    let server: SocketAddr = var("FILEMR_LAYOUT_SERVER").parse().unwrap();
    let mut cfg = ClientConfig::new(var("FILEMR_PEER_DEVICE"), server);
    if script == "aligned" {
        cfg.alignment = 4096;
    }
    // From the peer device's address: the connection crosses the link (see
    // docs/harness.md).
    cfg.source = Some(var("FILEMR_PEER_ADDR").parse().unwrap());
    if script == "silent" {
        cfg.recall = RecallPolicy::Manual;
    }
    let client = match LayoutClient::connect(cfg.clone()) {
        Ok(c) => c,
        Err(e) => {
            let neigh = Command::new("ip").args(["neigh", "show"]).output().unwrap();
            panic!("connect: {e}\nneighbours:\n{}", String::from_utf8_lossy(&neigh.stdout));
        }
    };
    let mut out = String::new();
    let mut report = |k: &str, v: String| out.push_str(&format!("{k}={v}\n"));
    let ready = || std::fs::write(var("FILEMR_PEER_READY"), b"").unwrap();
    match script.as_str() {
        "stream" => stream(&client, &mut report, ready),
        "aligned" => aligned(&client, &mut report, ready),
        "silent" => silent(&client, &mut report, ready),
        "refusals" => refusals(&client, &mut report),
        "malformed" => malformed(&client, cfg, &mut report),
        other => panic!("unknown peer script {other}"),
    }
    std::fs::write(var("FILEMR_PEER_OUT"), out).unwrap();
}

fn path_and_len() -> (String, u64) {
    (var("FILEMR_PEER_PATH"), var("FILEMR_PEER_LEN").parse().unwrap())
}

fn stream(client: &LayoutClient, report: &mut impl FnMut(&str, String), ready: impl Fn()) {
    let (path, len) = path_and_len();
    let layout = client.get(&path, 0, len, Access::ReadWrite).expect("get");
    let records = len / 8;
    let mut seen: Vec<LayoutEvent> = Vec::new();
    let mut after = None;
    let mut recalled_at = None;
    let mut recall_ms = 0;
    for i in 0..records {
        layout.write(8 * i, &(i + 1).to_le_bytes()).expect("write");
        if i == 16 {
            ready();
        }
        while let Some(ev) = client.next_event(Duration::ZERO) {
            match &ev {
                LayoutEvent::Recalled { .. } => recalled_at = Some(Instant::now()),
                LayoutEvent::Returned { .. } => {
                    recall_ms = recalled_at.map_or(0, |t| t.elapsed().as_millis());
                }
                LayoutEvent::Available { .. } => after = Some(i),
                _ => {}
            }
            seen.push(ev);
        }
        if after.is_some_and(|a| i >= a + 64) {
            break;
        }
    }
    let total = after.expect("no AVAILABLE before the layout was full") + 65;
    layout.commit().expect("commit");
    let kinds: Vec<&str> = seen
        .iter()
        .map(|e| match e {
            LayoutEvent::Recalled { .. } => "recalled",
            LayoutEvent::Returned { .. } => "returned",
            LayoutEvent::Available { .. } => "available",
            LayoutEvent::Lost { .. } => "lost",
            LayoutEvent::Disconnected { .. } => "disconnected",
        })
        .collect();
    assert_eq!(kinds, ["recalled", "returned", "available"], "events in order: {seen:?}");
    let LayoutEvent::Returned { committed, error, .. } = &seen[1] else { unreachable!() };
    assert_eq!(error, &None);
    assert_eq!(committed.len(), 1, "one contiguous range committed: {committed:?}");
    assert_eq!(committed[0].0, 0);
    report("returned_records", (committed[0].1 / 8).to_string());
    report("total", total.to_string());
    report("recall_ms", recall_ms.to_string());
    layout.give_back().expect("give back");
}

/// Block `i` of an `aligned` peer: 4 KiB of a pattern seeded by `i`.
pub fn block(i: usize) -> Vec<u8> {
    crate::guest::pattern(4096, (i % 251) as u8)
}

/// Like `stream`, with 4 KiB blocks at 4 KiB-aligned offsets from a client that promised
/// 4 KiB alignment; reports `unaligned` (what an unaligned write got), `returned_blocks`,
/// `total`.
fn aligned(client: &LayoutClient, report: &mut impl FnMut(&str, String), ready: impl Fn()) {
    let (path, len) = path_and_len();
    let layout = client.get(&path, 0, len, Access::ReadWrite).expect("get");
    let unaligned = match layout.write(100, &[1; 8]) {
        Err(LayoutError::Unaligned { .. }) => "refused".to_string(),
        other => format!("{other:?}"),
    };
    report("unaligned", unaligned);
    let mut after = None;
    let mut returned = None;
    for i in 0..(len / 4096) as usize {
        layout.write(4096 * i as u64, &block(i)).expect("aligned write");
        if i == 2 {
            ready();
        }
        while let Some(ev) = client.next_event(Duration::ZERO) {
            match ev {
                LayoutEvent::Returned { committed, error: None, .. } => returned = Some(committed),
                LayoutEvent::Available { .. } => after = Some(i),
                other => eprintln!("(aligned peer: {other:?})"),
            }
        }
        if after.is_some_and(|a| i >= a + 4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let total = after.expect("no AVAILABLE before the layout was full") + 5;
    layout.commit().expect("commit");
    let committed = returned.expect("no RETURNED");
    assert_eq!(committed.len(), 1, "{committed:?}");
    report("returned_blocks", (committed[0].1 / 4096).to_string());
    report("total", total.to_string());
    layout.give_back().expect("give back");
}

fn wait_for(client: &LayoutClient, what: &str, want: impl Fn(&LayoutEvent) -> bool) -> LayoutEvent {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(ev) = client.next_event(Duration::from_millis(100)) {
            if want(&ev) {
                return ev;
            }
            eprintln!("(peer: skipping {ev:?} while waiting for {what})");
        }
    }
    panic!("peer: no {what} in 30 s");
}

fn status(r: Result<(), LayoutError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(LayoutError::Transfer { status: WcStatus::RemoteAccess, .. }) => "remote_access".into(),
        Err(e) => format!("error:{e}"),
    }
}

fn silent(client: &LayoutClient, report: &mut impl FnMut(&str, String), ready: impl Fn()) {
    let (path, len) = path_and_len();
    let layout = client.get(&path, 0, len, Access::ReadWrite).expect("get");
    let key = layout.desc().unwrap().rkey;
    layout.write(0, &crate::guest::pattern(4096, 1)).expect("write A");
    layout.commit().expect("commit A");
    ready();
    let ev = wait_for(client, "RECALL", |e| matches!(e, LayoutEvent::Recalled { .. }));
    let LayoutEvent::Recalled { deadline, .. } = ev else { unreachable!() };
    if var("FILEMR_PEER_MODE") == "fence" {
        let lost = wait_for(client, "LOST", |e| matches!(e, LayoutEvent::Lost { .. }));
        report("lost", format!("{lost:?}"));
        report("library_after_lost", status(layout.write(8192, &[0xEE; 4096])));
        // The key itself is dead, not just refused by this library.
        report("after_lost", status(layout.write_unchecked(8192, &[0xEE; 4096])));
    } else {
        std::thread::sleep(deadline + Duration::from_millis(300));
        report("after_deadline", status(layout.write(8192, &crate::guest::pattern(4096, 2))));
        let errno = |r: Result<Vec<(u64, u64)>, LayoutError>| match r {
            Ok(c) => format!("ok {c:?}"),
            Err(e) => format!("{:?}", e.errno()),
        };
        report("commit_after_deadline", errno(layout.commit()));
        // The late return: only now may the key reach the (rebuilt) file again.
        report("late_return", errno(layout.return_for_recall()));
        wait_for(client, "AVAILABLE", |e| matches!(e, LayoutEvent::Available { .. }));
        let c = crate::guest::pattern(4096, 3);
        let after = layout.write(16384, &c).and_then(|()| layout.commit().map(|_| ()));
        report("after_available", status(after));
        report("same_key", (layout.desc().unwrap().rkey == key).to_string());
    }
}

fn refused(r: Result<filemr::layout::Layout, LayoutError>) -> String {
    match r {
        Ok(_) => "granted".into(),
        Err(e) => format!("{:?}", e.errno()),
    }
}

fn refusals(client: &LayoutClient, report: &mut impl FnMut(&str, String)) {
    let (path, len) = path_and_len();
    let ro = var("FILEMR_PEER_RO_PATH");
    report("ro_write", refused(client.get(&ro, 0, len, Access::ReadWrite)));
    report("ro_read", refused(client.get(&ro, 0, len, Access::Read)));
    let export = path.split('/').next().unwrap().to_string();
    report(
        "dotdot",
        refused(client.get(&format!("{export}/../../etc/passwd"), 0, 1, Access::Read)),
    );
    report("absolute", refused(client.get("/etc/passwd", 0, 1, Access::Read)));
    report("symlink_out", refused(client.get(&format!("{export}/out"), 0, 1, Access::Read)));
    report("no_export", refused(client.get("nope/x", 0, 1, Access::Read)));
    report("past_eof", refused(client.get(&path, len, 4096, Access::Read)));
    report("ok", refused(client.get(&path, 0, len, Access::ReadWrite)));
}

fn malformed(client: &LayoutClient, cfg: ClientConfig, report: &mut impl FnMut(&str, String)) {
    use filemr::layout::wire::{Frame, Message};
    let (path, len) = path_and_len();
    let good = client.get(&path, 0, len, Access::ReadWrite).expect("get before");
    let bad = LayoutClient::connect(cfg).expect("second connection");
    let valid = Frame { request: 77, status: 0, message: Message::ReturnRequest { layout: 1 } }
        .encode()
        .unwrap();
    let answer = |bytes: &[u8]| match bad.send_unchecked(bytes) {
        Ok(f) if f.message == Message::Error => {
            format!("{}:{:?}", f.request, Errno::from_raw(f.status as i32))
        }
        Ok(f) => format!("{}:{}", f.request, f.message.name()),
        Err(e) => format!("error:{e}"),
    };
    let mut bad_magic = valid.clone();
    bad_magic[0] ^= 0xFF;
    report("bad_magic", answer(&bad_magic));
    report("truncated", answer(&valid[..valid.len() - 3]));
    let mut long = valid.clone();
    long[20] = 0xFF;
    report("bad_length", answer(&long));
    let mut opcode = valid.clone();
    opcode[6] = 0x7F;
    report("bad_opcode", answer(&opcode));
    report("empty", answer(&[]));
    report(
        "not_a_request",
        answer(&Frame { request: 78, status: 0, message: Message::Committed }.encode().unwrap()),
    );
    report("unknown_layout", answer(&valid));
    // Another connection's layout: as unknown to this one as any other id.
    let theirs = good.desc().expect("the good layout's grant").layout;
    let frame = |request, message| Frame { request, status: 0, message }.encode().unwrap();
    report("foreign_return", answer(&frame(79, Message::ReturnRequest { layout: theirs })));
    let commit = Message::CommitRequest { layout: theirs, ranges: vec![(0, 4096)] };
    report("foreign_commit", answer(&frame(80, commit)));
    // Ranges that overflow or run past the file.
    let get = |offset, len| Message::GetRequest {
        path: path.clone().into_bytes(),
        offset,
        len,
        access: filemr::layout::wire::WireAccess::Read,
        align_shift: 0,
    };
    report("get_overflow", answer(&frame(81, get(u64::MAX - 100, 4096))));
    report("get_huge", answer(&frame(82, get(0, u64::MAX))));
    let mine = match bad.send_unchecked(&frame(83, get(0, 4096))) {
        Ok(f) => match f.message {
            Message::Granted(d) => d.layout,
            other => panic!("a valid GET on the second connection: {other:?}"),
        },
        Err(e) => panic!("a valid GET on the second connection: {e}"),
    };
    let past = Message::CommitRequest { layout: mine, ranges: vec![(4000, 200)] };
    report("commit_past_layout", answer(&frame(84, past)));
    // The encoder refuses a wrapping range, so write one over a valid frame's bytes: the
    // body is layout (8), count (4), padding (4), then (offset, len) pairs of u64.
    let mut wrap = frame(85, Message::CommitRequest { layout: mine, ranges: vec![(0, 20)] });
    wrap[24 + 16..24 + 24].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
    report("commit_overflow", answer(&wrap));
    // Past the limit the server disconnects the sender.
    let mut closed = false;
    for _ in 0..40 {
        if matches!(
            bad.send_unchecked(&bad_magic),
            Err(LayoutError::Closed { .. }
                | LayoutError::Verbs { .. }
                | LayoutError::Timeout { .. })
        ) {
            closed = true;
            break;
        }
    }
    report("flood_closed", closed.to_string());
    // The other connection is unaffected.
    let data = crate::guest::pattern(8192, 9);
    good.write(0, &data).expect("write after the flood");
    let mut back = vec![0; 8192];
    good.read(0, &mut back).expect("read after the flood");
    report("other_ok", (back == data).to_string());
    good.commit().expect("commit after the flood");
}

/// A peer running `script` on `export/name` (`len` bytes), once it said it is ready.
pub fn ready_peer(
    script: &str,
    server: SocketAddr,
    ex: &Export,
    name: &str,
    len: usize,
) -> PeerProc {
    let vars = [("PATH", format!("{}/{name}", ex.name)), ("LEN", len.to_string())];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut peer = PeerProc::spawn(script, server, &vars);
    peer.wait_ready(crate::region_support::WAIT);
    peer
}

/// A breaker opens `file` and saves what it found; returns that content.
pub fn save_on_break(file: &Path) -> Vec<u8> {
    use crate::region_support::{WAIT, breaker, wait_child};
    let tmp = std::env::temp_dir();
    let [before, stamp] = ["before", "stamp"].map(|t| crate::guest::unique_path(&tmp, t));
    let child = breaker("open-save", file, &[before.to_str().unwrap(), stamp.to_str().unwrap()]);
    wait_child(child, WAIT);
    std::fs::read(&before).unwrap()
}

/// Record `i` of a `stream` peer's file (u64 little-endian at 8*i).
pub fn record(file: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(file[8 * i..8 * i + 8].try_into().unwrap())
}

/// The two exports every test serves: `pc` (page cache) and `dax` (FS-DAX).
pub fn exports() -> Vec<Export> {
    let env = crate::guest::GuestEnv::get();
    vec![export(&env.pagecache_dir, "pc", false), export(&env.dax_dir, "dax", false)]
}

/// A silent peer (never answers the recall) against a break, in the manager's revocation
/// mode (`fence` or `retarget`, set by the test binary): the breaker opens the file and
/// keeps it open 3 s. Returns nothing; asserts everything.
pub fn silent_peer(mode: &str) {
    use crate::guest::{BreakTime, pattern};
    use crate::region_support::{WAIT, breaker, is_revoked, note, wait_child, wait_event};
    use filemr::region::RegionEventKind;
    const LEN: usize = 1 << 20;
    let _bt = BreakTime::set(3);
    let exports = exports();
    let server = start_server(exports.clone());
    for ex in &exports {
        let file = ex.root.join("silent");
        std::fs::write(&file, vec![0u8; LEN]).unwrap();
        let vars = [
            ("PATH", format!("{}/silent", ex.name)),
            ("LEN", LEN.to_string()),
            ("MODE", mode.to_string()),
        ];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut peer = PeerProc::spawn("silent", server.local_addr(), &vars);
        peer.wait_ready(WAIT);
        let tmp = std::env::temp_dir();
        let [before, stamp] = ["before", "stamp"].map(|t| crate::guest::unique_path(&tmp, t));
        let mut events = manager().events();
        let child = breaker(
            "open-save",
            &file,
            &[before.to_str().unwrap(), stamp.to_str().unwrap(), "3000"],
        );
        let revoked = wait_event(&mut events, WAIT, "Revoked", is_revoked);
        let RegionEventKind::Revoked { since_break: held, forced, .. } = revoked.kind else {
            unreachable!()
        };
        assert!(forced, "{}: an unanswered recall makes the revocation forced", ex.name);
        wait_child(child, WAIT);
        let r = peer.finish(WAIT);
        let seen = std::fs::read(&before).unwrap();
        assert!(
            seen[..4096] == pattern(4096, 1)[..],
            "{}: the committed write is in the file",
            ex.name
        );
        assert!(
            seen[8192..].iter().all(|b| *b == 0),
            "{}: nothing after the commit reached the file",
            ex.name
        );
        assert!(
            held < Duration::from_secs(3),
            "{}: the breaker waited {held:?}, past the deadline",
            ex.name
        );
        note(&format!(
            "layout silent {mode} {}: breaker waited {held:?} (lease-break-time 3 s)",
            ex.name
        ));
        if mode == "fence" {
            assert!(r["lost"].contains("Revoked"), "{}: the peer is told: {}", ex.name, r["lost"]);
            assert!(
                r["library_after_lost"].contains("lost"),
                "{}: {}",
                ex.name,
                r["library_after_lost"]
            );
            assert_eq!(r["after_lost"], "remote_access", "{}: a fenced key fails", ex.name);
        } else {
            assert_eq!(r["after_deadline"], "ok", "{}: a retargeted key sees no error", ex.name);
            assert_eq!(
                r["commit_after_deadline"], "ESTALE",
                "{}: scratch is not committed",
                ex.name
            );
            assert_eq!(r["late_return"], "ok []", "{}: nothing left to commit", ex.name);
            assert_eq!(r["after_available"], "ok", "{}: the key works after the rebuild", ex.name);
            assert_eq!(r["same_key"], "true", "{}: same key after the rebuild", ex.name);
        }
    }
    server.shutdown();
    for ex in &exports {
        let file = std::fs::read(ex.root.join("silent")).unwrap();
        assert!(file[..4096] == pattern(4096, 1)[..], "{}", ex.name);
        assert!(
            file[8192..12288].iter().all(|b| *b == 0),
            "{}: post-fence/retarget bytes in the file",
            ex.name
        );
        if mode == "retarget" {
            assert!(
                file[16384..20480] == pattern(4096, 3)[..],
                "{}: the write after AVAILABLE landed",
                ex.name
            );
        }
    }
}
