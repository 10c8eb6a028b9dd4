//! The guests' second topology (`docs/harness.md`): `rxe_srv` on `fmr-srv` (10.77.0.1) and
//! `rxe_peer` on `fmr-peer` (10.77.0.2), the two ends of one veth link, both in the root
//! network namespace. RDMA CM (librdmacm's `rping`) connects across the link when the
//! client binds the peer's address; the packet counters of the link show that it did.
//! (Its own test binary: the tests count packets on the link, so nothing else may use it
//! meanwhile; they take turns through `LINK`.)

#[path = "guest/mod.rs"]
mod guest;

use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use filemr::verbs::Context;
use guest::GuestEnv;

/// The tests that use the link take turns.
static LINK: Mutex<()> = Mutex::new(());

fn link() -> MutexGuard<'static, ()> {
    LINK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `IBV_MTU_4096`.
const MTU_4096: u32 = 5;

/// How long a connection may take to come up under emulation (measured: 2-3 s).
const CONNECT_LIMIT: Duration = Duration::from_secs(20);

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Run `cmd` to completion and return its stdout, failing the test if it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}\n{}", out.status, text(&out.stderr));
    text(&out.stdout)
}

/// Every line of `rdma resource show cm_id`: one per rdma_cm id, with its device and port
/// (`link rxe_srv/1`), state, and addresses.
fn cm_ids() -> Vec<String> {
    run(Command::new("rdma").args(["resource", "show", "cm_id"]))
        .lines()
        .map(String::from)
        .collect()
}

/// A packet counter of `netdev` (`rx_packets`, `tx_packets`).
fn counter(netdev: &str, name: &str) -> u64 {
    let f = format!("/sys/class/net/{netdev}/statistics/{name}");
    std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{f}: {e}")).trim().parse().unwrap()
}

/// Both directions' packet counts of the server's end of the link.
fn link_packets(env: &GuestEnv) -> (u64, u64) {
    (counter(&env.server.netdev, "rx_packets"), counter(&env.server.netdev, "tx_packets"))
}

/// A running program, killed when dropped (a failed assertion leaves nothing behind).
struct Running(Option<Child>);

fn spawn(cmd: &mut Command) -> Running {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    Running(Some(child))
}

impl Running {
    /// Wait at most `limit`, killing the program when it is not done by then (the bool
    /// says so). Its output must be small (a few lines) so the pipes cannot fill meanwhile.
    fn finish(mut self, limit: Duration) -> (Output, bool) {
        let mut child = self.0.take().unwrap();
        let start = Instant::now();
        let mut killed = false;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() >= limit {
                killed = true;
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
        child.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
        (Output { status, stdout, stderr }, killed)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn describe(who: &str, (out, killed): &(Output, bool)) -> String {
    let how = if *killed { "killed at its time limit".into() } else { out.status.to_string() };
    format!("{who} ({how}):\n{}{}", text(&out.stdout), text(&out.stderr))
}

/// An `rping` server on `addr:port` for `count` pings (0: until the client leaves).
fn rping_server(addr: Ipv4Addr, port: u16, count: u32) -> Running {
    let mut cmd = Command::new("rping");
    cmd.args(["-s", "-a", &addr.to_string(), "-p", &port.to_string()]);
    if count > 0 {
        cmd.args(["-C", &count.to_string(), "-v"]);
    }
    spawn(&mut cmd)
}

/// An `rping` client of `server:port` for `count` pings (0: until killed), bound to
/// `source` when given (`-I`).
fn rping_client(
    mut cmd: Command,
    server: Ipv4Addr,
    port: u16,
    source: Option<Ipv4Addr>,
    count: u32,
) -> Running {
    cmd.args(["-c", "-a", &server.to_string(), "-p", &port.to_string()]);
    if let Some(s) = source {
        cmd.args(["-I", &s.to_string()]);
    }
    if count > 0 {
        cmd.args(["-C", &count.to_string(), "-v"]);
    }
    spawn(&mut cmd)
}

/// Poll the cm_ids until `want` holds for them (at most `limit`); return the last list.
fn wait_cm_ids(limit: Duration, what: &str, want: impl Fn(&[String]) -> bool) -> Vec<String> {
    let start = Instant::now();
    loop {
        let ids = cm_ids();
        if want(&ids) {
            return ids;
        }
        assert!(start.elapsed() < limit, "no {what} within {limit:?}; cm_ids: {ids:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The listening cm_id of `addr:port`, once there is one.
fn wait_listening(addr: Ipv4Addr, port: u16) -> String {
    let tag = format!("src-addr {addr}:{port} ");
    let ids = wait_cm_ids(CONNECT_LIMIT, &format!("listener on {addr}:{port}"), |ids| {
        ids.iter().any(|l| l.contains("state LISTEN") && l.contains(&tag))
    });
    ids.into_iter().find(|l| l.contains("state LISTEN") && l.contains(&tag)).unwrap()
}

/// The address (`10.77.0.1:7471`) after `key` (`src-addr`, `dst-addr`) in a cm_id line.
fn addr_of<'a>(cm_id: &'a str, key: &str) -> &'a str {
    cm_id.split(&format!("{key} ")).nth(1).and_then(|a| a.split(' ').next()).unwrap_or("")
}

/// The two connected cm_ids of the connection to server port `port`: (server's, client's).
fn wait_connected(port: u16) -> (String, String) {
    let on_port = |l: &String, key: &str| {
        l.contains("state CONNECT") && addr_of(l, key).ends_with(&format!(":{port}"))
    };
    let ids = wait_cm_ids(CONNECT_LIMIT, &format!("connection to port {port}"), |ids| {
        ids.iter().any(|l| on_port(l, "src-addr")) && ids.iter().any(|l| on_port(l, "dst-addr"))
    });
    let find = |key| ids.iter().find(|l| on_port(l, key)).unwrap().clone();
    (find("src-addr"), find("dst-addr"))
}

/// The rxe device (`rxe_srv`) of a cm_id line (`link rxe_srv/1 cm-idn …`).
fn device_of(cm_id: &str) -> &str {
    cm_id.strip_prefix("link ").and_then(|l| l.split('/').next()).unwrap_or("")
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn both_devices_are_active_on_their_own_netdev_with_their_address_as_gid() {
    let env = GuestEnv::get();
    let links = run(Command::new("rdma").args(["link", "show"]));
    for end in [&env.server, &env.peer] {
        let line = links
            .lines()
            .find(|l| l.starts_with(&format!("link {}/1 ", end.device)))
            .unwrap_or_else(|| panic!("no {} in rdma link show:\n{links}", end.device));
        assert!(line.contains("state ACTIVE"), "{line}");
        assert!(line.contains(&format!(" netdev {} ", end.netdev)), "{line}");
        // The veth takes MTU 9000, so rxe's active MTU is 4096 (as on eth0).
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", end.netdev)).unwrap();
        assert_eq!(mtu.trim(), "9000", "{} mtu", end.netdev);
        let ctx = Context::open(&end.device).expect("open the device");
        assert_eq!(ctx.port(1).unwrap().active_mtu, MTU_4096, "{} active MTU", end.device);
        // The address is a RoCE v2 GID of its device (index 1, after the link-local
        // default GID): that GID is how rdma_cm finds the device for the address.
        let gids = format!("/sys/class/infiniband/{}/ports/1/gids/1", end.device);
        let gid = std::fs::read_to_string(&gids).unwrap_or_else(|e| panic!("{gids}: {e}"));
        let [a, b, c, d] = end.addr.octets();
        let want = format!("0000:0000:0000:0000:0000:ffff:{a:02x}{b:02x}:{c:02x}{d:02x}");
        assert_eq!(gid.trim(), want, "{gids}");
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn rping_from_the_peer_address_crosses_the_link() {
    let env = GuestEnv::get();
    let _link = link();
    const PORT: u16 = 7471;
    const COUNT: u32 = 3;
    let (rx0, tx0) = link_packets(&env);
    let server = rping_server(env.server.addr, PORT, COUNT);
    let listener = wait_listening(env.server.addr, PORT);
    assert_eq!(device_of(&listener), env.server.device, "{listener}");
    let start = Instant::now();
    let client =
        rping_client(Command::new("rping"), env.server.addr, PORT, Some(env.peer.addr), COUNT);
    let client = client.finish(CONNECT_LIMIT);
    let took = start.elapsed();
    let server = server.finish(Duration::from_secs(5));
    let (rx1, tx1) = link_packets(&env);
    let report = format!(
        "{}\n{}\n{} rx {rx0} -> {rx1}, tx {tx0} -> {tx1}; client took {took:?}",
        describe("client", &client),
        describe("server", &server),
        env.server.netdev
    );
    assert!(!client.1 && client.0.status.success(), "{report}");
    assert!(!server.1 && server.0.status.success(), "{report}");
    let out = text(&client.0.stdout);
    for i in 0..COUNT {
        assert!(out.contains(&format!("ping data: rdma-ping-{i}: ")), "ping {i}: {report}");
    }
    // Each ping is several packets each way (sends, an RDMA READ and WRITE, their
    // acknowledgements), besides the connection's own: at least 3 per ping crossed.
    let least = 3 * u64::from(COUNT);
    assert!(rx1 - rx0 >= least && tx1 - tx0 >= least, "fewer than {least} packets: {report}");
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn rdma_cm_takes_the_device_of_the_bound_address_and_an_unbound_client_stays_off_the_link() {
    let env = GuestEnv::get();
    let _link = link();
    // Bound to the peer's address: the client's id is on rxe_peer, the server's on rxe_srv.
    let port = 7472;
    let server = rping_server(env.server.addr, port, 0);
    wait_listening(env.server.addr, port);
    let client = rping_client(Command::new("rping"), env.server.addr, port, Some(env.peer.addr), 0);
    let (srv_id, cli_id) = wait_connected(port);
    let (rx0, _) = link_packets(&env);
    std::thread::sleep(Duration::from_millis(300));
    let (rx1, _) = link_packets(&env);
    drop(client);
    drop(server);
    assert_eq!(device_of(&srv_id), env.server.device, "{srv_id}");
    assert_eq!(device_of(&cli_id), env.peer.device, "{cli_id}");
    assert!(addr_of(&cli_id, "src-addr").starts_with(&format!("{}:", env.peer.addr)), "{cli_id}");
    assert!(rx1 > rx0, "a running rping moves packets over the link: rx {rx0} -> {rx1}");

    // Unbound: rdma_cm resolves the server's address to the device that owns it, so the
    // client's id is on rxe_srv too and rxe hands the packets back to itself.
    let port = 7473;
    let server = rping_server(env.server.addr, port, 0);
    wait_listening(env.server.addr, port);
    let (rx0, tx0) = link_packets(&env);
    let client = rping_client(Command::new("rping"), env.server.addr, port, None, 0);
    let (srv_id, cli_id) = wait_connected(port);
    std::thread::sleep(Duration::from_millis(300));
    let (rx1, tx1) = link_packets(&env);
    drop(client);
    drop(server);
    assert_eq!(device_of(&srv_id), env.server.device, "{srv_id}");
    assert_eq!(device_of(&cli_id), env.server.device, "{cli_id}");
    assert!(addr_of(&cli_id, "src-addr").starts_with(&format!("{}:", env.server.addr)), "{cli_id}");
    // Nothing of the connection crossed the link (an ARP exchange may).
    assert!(rx1 - rx0 <= 2 && tx1 - tx0 <= 2, "rx {rx0} -> {rx1}, tx {tx0} -> {tx1}");
}

/// Sets a sysctl of `/proc/sys` and restores it on drop (also on panic); flushes the
/// link's neighbour entries both times, so that the next connection resolves afresh.
struct Sysctl {
    path: String,
    old: String,
    netdevs: [String; 2],
}

impl Sysctl {
    fn set(env: &GuestEnv, path: String, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let netdevs = [env.server.netdev.clone(), env.peer.netdev.clone()];
        std::fs::write(&path, value).unwrap();
        flush_neighbours(&netdevs);
        Sysctl { path, old: old.trim().to_string(), netdevs }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.old);
        flush_neighbours(&self.netdevs);
    }
}

fn flush_neighbours(netdevs: &[String]) {
    for d in netdevs {
        let _ = Command::new("ip").args(["neigh", "flush", "dev", d]).status();
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn without_accept_local_the_peers_address_resolution_fails() {
    // The peer's ARP request for the server's address comes from an address of this host:
    // without accept_local the server's end drops it as a martian and nobody answers.
    let env = GuestEnv::get();
    let _link = link();
    let path = format!("/proc/sys/net/ipv4/conf/{}/accept_local", env.server.netdev);
    let _restore = Sysctl::set(&env, path, "0");
    const PORT: u16 = 7474;
    let server = rping_server(env.server.addr, PORT, 1);
    wait_listening(env.server.addr, PORT);
    let client = rping_client(Command::new("rping"), env.server.addr, PORT, Some(env.peer.addr), 1);
    let client = client.finish(CONNECT_LIMIT);
    drop(server);
    let neigh = run(Command::new("ip").args([
        "neigh",
        "show",
        &env.server.addr.to_string(),
        "dev",
        &env.peer.netdev,
    ]));
    let report = format!("{}\nneighbour: {neigh}", describe("client", &client));
    assert!(!client.1 && !client.0.status.success(), "{report}");
    assert!(text(&client.0.stderr).contains("RDMA_CM_EVENT_ADDR_ERROR"), "{report}");
    // Unanswered: INCOMPLETE while the kernel still asks, FAILED after; never an lladdr.
    assert!(!neigh.contains("lladdr"), "{report}");
}

/// A second veth link whose peer end, with its rxe device, is in its own network
/// namespace; all of it removed on drop.
struct NetnsLink;

const NS: &str = "filemr-probe";
const NS_SRV: (&str, &str, &str) = ("fmr-ns-srv", "rxe_ns_srv", "10.79.0.1");
const NS_PEER: (&str, &str, &str) = ("fmr-ns-peer", "rxe_ns_peer", "10.79.0.2");

/// `program` run inside the namespace `NS` (`ip netns exec`, which execs the program).
fn in_netns(program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", NS, program]);
    cmd
}

impl NetnsLink {
    fn create() -> NetnsLink {
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", NS]);
        let link = NetnsLink;
        ip(&["-n", NS, "link", "set", "lo", "up"]);
        ip(&["link", "add", NS_SRV.0, "type", "veth", "peer", "name", NS_PEER.0, "netns", NS]);
        ip(&["addr", "add", &format!("{}/24", NS_SRV.2), "dev", NS_SRV.0]);
        ip(&["-n", NS, "addr", "add", &format!("{}/24", NS_PEER.2), "dev", NS_PEER.0]);
        ip(&["link", "set", NS_SRV.0, "up"]);
        ip(&["-n", NS, "link", "set", NS_PEER.0, "up"]);
        run(Command::new("rdma").args(["link", "add", NS_SRV.1, "type", "rxe", "netdev", NS_SRV.0]));
        run(in_netns("rdma").args(["link", "add", NS_PEER.1, "type", "rxe", "netdev", NS_PEER.0]));
        link
    }
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        for dev in [NS_PEER.1, NS_SRV.1] {
            let _ = Command::new("rdma").args(["link", "delete", dev]).output();
        }
        let _ = Command::new("ip").args(["netns", "delete", NS]).output();
        let _ = Command::new("ip").args(["link", "delete", NS_SRV.0]).output();
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn rxe_in_another_network_namespace_gets_no_connection_on_these_kernels() {
    // Why the topology keeps both ends in the root namespace: these kernels' rxe has its
    // UDP socket and its route lookups in the initial namespace only (per-namespace
    // sockets came later, rxe_ns.c), so a device whose netdev is elsewhere can add
    // itself and resolve addresses but never connects. A kernel that connects here fails
    // this test: then the peer could move into a namespace.
    // (Its own link: no `LINK` turn needed.)
    let _ns = NetnsLink::create();
    // The netdev of a device is reported only inside its own namespace.
    let root = run(Command::new("rdma").args(["link", "show", &format!("{}/1", NS_PEER.1)]));
    let inside = run(in_netns("rdma").args(["link", "show", &format!("{}/1", NS_PEER.1)]));
    assert!(root.contains("state ACTIVE") && !root.contains("netdev"), "{root}");
    assert!(inside.contains(&format!(" netdev {} ", NS_PEER.0)), "{inside}");
    const PORT: u16 = 7475;
    let addr: Ipv4Addr = NS_SRV.2.parse().unwrap();
    let server = rping_server(addr, PORT, 1);
    let listener = wait_listening(addr, PORT);
    assert_eq!(device_of(&listener), NS_SRV.1, "{listener}");
    // Measured: 6.1 gives up after about 2.4 s (RDMA_CM_EVENT_UNREACHABLE, -110: rxe
    // finds no route from the namespace's address in the initial namespace); 6.18 is still
    // waiting at the limit.
    let client = rping_client(in_netns("rping"), addr, PORT, None, 1).finish(NETNS_LIMIT);
    let server = server.finish(Duration::ZERO);
    let report = format!("{}\n{}", describe("client", &client), describe("server", &server));
    assert!(client.1 || !client.0.status.success(), "the client connected: {report}");
    assert!(!text(&client.0.stdout).contains("ping data"), "{report}");
}

/// How long the namespaced client gets to connect (the connection across the root
/// namespace's link takes 2-3 s).
const NETNS_LIMIT: Duration = Duration::from_secs(6);
