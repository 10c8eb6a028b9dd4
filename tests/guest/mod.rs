//! Shared support for integration tests that run inside the SoftRoCE guests.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use filemr::verbs::{CompletionQueue, Context, ProtectionDomain};

/// Reason attached to every test that needs the guest.
pub const GUEST_ONLY: &str =
    "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests";

/// What the guest harness tells the tests through the environment.
pub struct GuestEnv {
    pub device: String,
    pub dax_dir: PathBuf,
    pub pagecache_dir: PathBuf,
    pub xfs_dax_dir: Option<PathBuf>,
    pub expect_odp: bool,
    pub profile: String,
    /// The second topology (`docs/harness.md`), two more rxe devices joined by a veth
    /// link, both in the root network namespace: the server's end (`FILEMR_SERVER_*`)…
    pub server: LinkEnd,
    /// …and the peer's end (`FILEMR_PEER_*`). Traffic between the two crosses the link
    /// only when the peer's side binds its own address (`rdma_bind_addr`, `rping -I`):
    /// an unbound rdma_cm id resolves the server's address to the server's device.
    pub peer: LinkEnd,
}

/// One end of the veth link: an rxe device on a netdev with an IPv4 address (/24).
pub struct LinkEnd {
    /// The rxe device (`FILEMR_*_DEVICE`): `rxe_srv` or `rxe_peer`.
    pub device: String,
    /// Its netdev (`FILEMR_*_NETDEV`), one end of the veth pair: `fmr-srv` or `fmr-peer`.
    pub netdev: String,
    /// The netdev's address (`FILEMR_*_ADDR`): `10.77.0.1` or `10.77.0.2`.
    pub addr: Ipv4Addr,
}

impl LinkEnd {
    fn get(prefix: &str) -> LinkEnd {
        let addr = var(&format!("{prefix}_ADDR"));
        LinkEnd {
            device: var(&format!("{prefix}_DEVICE")),
            netdev: var(&format!("{prefix}_NETDEV")),
            addr: addr.parse().unwrap_or_else(|e| panic!("{prefix}_ADDR {addr:?}: {e}")),
        }
    }
}

/// The harness's variable `name`; panics with a hint outside the guest.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test runs inside the SoftRoCE guest; use `cargo xtask test`"
        )
    })
}

impl GuestEnv {
    pub fn get() -> GuestEnv {
        GuestEnv {
            device: var("FILEMR_RXE_DEVICE"),
            dax_dir: var("FILEMR_DAX_DIR").into(),
            pagecache_dir: var("FILEMR_PAGECACHE_DIR").into(),
            xfs_dax_dir: std::env::var_os("FILEMR_XFS_DAX_DIR").map(PathBuf::from),
            expect_odp: match var("FILEMR_EXPECT_ODP").as_str() {
                "yes" => true,
                "no" => false,
                other => panic!("FILEMR_EXPECT_ODP must be yes or no, not {other:?}"),
            },
            profile: var("FILEMR_GUEST_PROFILE"),
            server: LinkEnd::get("FILEMR_SERVER"),
            peer: LinkEnd::get("FILEMR_PEER"),
        }
    }

    pub fn open(&self) -> (Arc<Context>, Arc<ProtectionDomain>, Arc<CompletionQueue>) {
        let ctx = Arc::new(Context::open(&self.device).expect("open rxe device"));
        let pd = ProtectionDomain::new(&ctx).expect("alloc PD");
        let cq = CompletionQueue::new(&ctx, 256).expect("create CQ");
        (ctx, pd, cq)
    }
}

/// A deterministic byte pattern distinct per `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7 + 1) as u8).collect()
}

/// A unique file path in `dir`.
pub fn unique_path(dir: &std::path::Path, tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    dir.join(format!("filemr-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Sets `/proc/sys/fs/lease-break-time` and restores it on drop (also on panic). It is
/// system-wide: only binaries whose tests all want it may use it.
pub struct BreakTime(String);

const BREAK_TIME: &str = "/proc/sys/fs/lease-break-time";

impl BreakTime {
    pub fn set(secs: u32) -> BreakTime {
        let old = std::fs::read_to_string(BREAK_TIME).unwrap();
        std::fs::write(BREAK_TIME, secs.to_string()).unwrap();
        BreakTime(old.trim().to_string())
    }
}

impl Drop for BreakTime {
    fn drop(&mut self) {
        let _ = std::fs::write(BREAK_TIME, &self.0);
    }
}

/// Runs `args` (a command and its arguments), failing the test unless it succeeds.
pub fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}: {st}");
}

/// Waits up to `d` for `child` to exit: its status and how long that took.
pub fn exit_within(child: &mut Child, d: Duration) -> Option<(ExitStatus, Duration)> {
    let start = Instant::now();
    while start.elapsed() < d {
        if let Some(st) = child.try_wait().unwrap() {
            return Some((st, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// [`exit_within`] of a child that must succeed: how long it took, if it exited.
pub fn succeeds_within(child: &mut Child, d: Duration) -> Option<Duration> {
    exit_within(child, d).map(|(st, took)| {
        assert!(st.success(), "{child:?}: {st}");
        took
    })
}

/// Saves a line for the report in the guest's output directory (best effort).
pub fn note(line: &str) {
    use std::io::Write;
    if let Ok(mut f) =
        std::fs::OpenOptions::new().create(true).append(true).open("/tmp/out/region-notes.txt")
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A veth link of a test's own with an rxe device at each end: the server's `dev` on
/// `netdev` at `<subnet>.1/24`, the peer's `peer_dev` on `peer_netdev` at
/// `<subnet>.2/24` (both ends accept packets from the host's own addresses, as the
/// harness's link does). Dropping it deletes both devices and the link.
pub struct DevicePair {
    pub dev: &'static str,
    pub netdev: &'static str,
    pub peer_dev: &'static str,
}

impl DevicePair {
    pub fn add(
        (dev, netdev): (&'static str, &'static str),
        (peer_dev, peer_netdev): (&'static str, &'static str),
        subnet: &str,
    ) -> DevicePair {
        let _ = Command::new("ip").args(["link", "del", netdev]).status();
        sh(&["ip", "link", "add", netdev, "type", "veth", "peer", "name", peer_netdev]);
        for (nd, host) in [(netdev, 1), (peer_netdev, 2)] {
            sh(&["sysctl", "-qw", &format!("net.ipv4.conf.{nd}.accept_local=1")]);
            sh(&["ip", "addr", "add", &format!("{subnet}.{host}/24"), "dev", nd]);
            sh(&["ip", "link", "set", nd, "up"]);
        }
        let pair = DevicePair { dev, netdev, peer_dev };
        pair.add_server_device();
        sh(&["rdma", "link", "add", peer_dev, "type", "rxe", "netdev", peer_netdev]);
        pair
    }

    /// (Re-)adds the server's device.
    pub fn add_server_device(&self) {
        sh(&["rdma", "link", "add", self.dev, "type", "rxe", "netdev", self.netdev]);
    }
}

impl Drop for DevicePair {
    fn drop(&mut self) {
        for dev in [self.dev, self.peer_dev] {
            let _ = Command::new("rdma").args(["link", "delete", dev]).status();
        }
        let _ = Command::new("ip").args(["link", "del", self.netdev]).status();
    }
}

/// Every line of `rdma resource show <kind>`.
pub fn resource_lines(kind: &str) -> Vec<String> {
    let out = Command::new("rdma")
        .args(["resource", "show", kind])
        .output()
        .unwrap_or_else(|e| panic!("run rdma resource show {kind}: {e}"));
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

/// The `rdma resource show <kind>` lines of `device` (`dev <device>`, or `link
/// <device>/<port>` for queue pairs) that user processes made, not the kernel
/// (`comm [ib_core]`). Not filtered by pid: the kernel records the creating thread's id,
/// not the process's, so a test counts on a device only it uses.
pub fn user_resources(kind: &str, device: &str) -> Vec<String> {
    let (dev, link) = (format!("dev {device} "), format!("link {device}/"));
    resource_lines(kind)
        .into_iter()
        .filter(|l| (l.contains(&dev) || l.contains(&link)) && !l.contains("comm ["))
        .collect()
}
