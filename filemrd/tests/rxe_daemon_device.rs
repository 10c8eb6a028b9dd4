//! filemrd and a removed device, end to end on a veth link of this test's own (server
//! `rxe_dv` on `fmr-dv` 10.80.0.1, peer `rxe_dvp` on `fmr-dv-p` 10.80.0.2): the server's
//! device is deleted while a peer holds a layout; the peer is told (LOST DeviceGone, or
//! its connection drops), filemrd exits 75 so the deletion can finish (librdmacm keeps a
//! device open until its process exits), with the peer's committed bytes in the file.

#[path = "../../tests/guest/mod.rs"]
mod guest;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use filemr::layout::wire::LostCode;
use filemr::layout::{ClientConfig, LayoutClient, LayoutEvent};
use filemr::region::Access;
use guest::{exit_within, note, sh};

const SRV: (&str, &str, &str) = ("rxe_dv", "fmr-dv", "10.80.0.1");
const PEER: (&str, &str, &str) = ("rxe_dvp", "fmr-dv-p", "10.80.0.2");
const PORT: u16 = 20051;

fn add_device((dev, netdev, _): (&str, &str, &str)) {
    sh(&["rdma", "link", "add", dev, "type", "rxe", "netdev", netdev]);
}

fn link_up() {
    let _ = Command::new("ip").args(["link", "del", SRV.1]).status();
    sh(&["ip", "link", "add", SRV.1, "type", "veth", "peer", "name", PEER.1]);
    for (_, netdev, addr) in [SRV, PEER] {
        sh(&["sysctl", "-qw", &format!("net.ipv4.conf.{netdev}.accept_local=1")]);
        sh(&["ip", "addr", "add", &format!("{addr}/24"), "dev", netdev]);
        sh(&["ip", "link", "set", netdev, "up"]);
    }
    add_device(SRV);
    add_device(PEER);
}

fn start_daemon(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_filemrd"))
        .args(["--config", config.to_str().unwrap()])
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// A client of the daemon from the peer's device; retried while the daemon starts.
fn client() -> LayoutClient {
    let mut cfg = ClientConfig::new(PEER.0, format!("{}:{PORT}", SRV.2).parse().unwrap());
    cfg.source = Some(PEER.2.parse().unwrap());
    let start = Instant::now();
    loop {
        match LayoutClient::connect(cfg.clone()) {
            Ok(c) => return c,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                eprintln!("(connect: {e}; retrying)");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("connect to filemrd: {e}"),
        }
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn filemrd_exits_for_a_removed_device_so_its_removal_can_finish() {
    link_up();
    let dir = PathBuf::from(std::env::var("FILEMR_PAGECACHE_DIR").unwrap())
        .join(format!("daemon-device-{}", std::process::id()));
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), vec![0u8; 1 << 20]).unwrap();
    let config = dir.join("filemrd.toml");
    std::fs::write(
        &config,
        format!(
            "device = \"{}\"\nlisten = \"{}:{PORT}\"\nmetrics = \"127.0.0.1:9465\"\n\
             device_wait_ms = 30000\n[[export]]\nname = \"data\"\npath = \"{}\"\n",
            SRV.0,
            SRV.2,
            data.display()
        ),
    )
    .unwrap();

    let mut daemon = start_daemon(&config, &dir.join("first.log"));
    let c = client();
    let layout = c.get("data/f", 0, 1 << 20, Access::ReadWrite).unwrap();
    layout.write(0, b"before the removal").unwrap();
    layout.commit().unwrap();

    let mut delete = Command::new("rdma").args(["link", "delete", SRV.0]).spawn().unwrap();
    let code = exit_within(&mut daemon, Duration::from_secs(20)).and_then(|(st, _)| st.code());
    let log = std::fs::read_to_string(dir.join("first.log")).unwrap();
    assert_eq!(code, Some(75), "filemrd exits EX_TEMPFAIL for a removed device:\n{log}");
    assert!(log.contains("the RDMA device was removed"), "{log}");
    let start = Instant::now();
    while delete.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "the deletion did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    note(&format!(
        "filemrd device removal: deletion finished {:?} after filemrd exited",
        start.elapsed()
    ));
    let mut told = Vec::new();
    while let Some(ev) = c.next_event(Duration::from_secs(2)) {
        let end = matches!(ev, LayoutEvent::Disconnected { .. });
        told.push(ev);
        if end {
            break;
        }
    }
    let file = std::fs::read(data.join("f")).unwrap();
    assert_eq!(&file[..18], b"before the removal", "the peer's commit is in the file");
    assert!(
        told.iter().any(|e| matches!(
            e,
            LayoutEvent::Lost { reason: LostCode::DeviceGone, .. }
                | LayoutEvent::Disconnected { .. }
        )),
        "the peer is told: {told:?}"
    );
    drop(layout);
    drop(c);
    // The peer's device stays: this process's librdmacm keeps it open until exit, so
    // deleting it here would block (tests/rxe_device_removal.rs measures that). A
    // restarted filemrd waiting for its device is ManagerConfig::device_wait, tested in
    // tests/rxe_device_loss.rs.
}
