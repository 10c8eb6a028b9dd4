//! The C API, from C: the misuse program and the example storage server with its peer,
//! built by `cargo xtask test` with AddressSanitizer and UndefinedBehaviorSanitizer
//! through `pkg-config filemr` into `target/c/`, run across the guest's veth link.

#[path = "guest/mod.rs"]
mod guest;
#[path = "region_support/mod.rs"]
mod region_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guest::GuestEnv;
use region_support::{WAIT, breaker, make_file, wait_child};

/// A C program of `target/c/`.
fn c_program(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap();
    let bin = target.join("c").join(name);
    assert!(bin.exists(), "{} is missing: `cargo xtask test` builds it", bin.display());
    bin
}

/// Sanitizers: stop at the first error, report leaks at exit.
fn sanitized(cmd: &mut Command) -> &mut Command {
    cmd.env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:abort_on_error=0")
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        .env("FILEMR_LOG", "filemr=warn")
}

/// A running C program: its stdout lines arrive on a channel (and are kept), its stderr
/// is collected.
struct Program {
    name: &'static str,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Program {
    fn spawn(name: &'static str, args: &[&str]) -> Program {
        let mut child = sanitized(&mut Command::new(c_program(name)))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
        Program { name, child, lines, seen: Vec::new(), stderr: Some(stderr) }
    }

    /// Waits for a stdout line equal to `want`.
    fn wait_line(&mut self, want: &str) {
        let deadline = Instant::now() + WAIT;
        while let Ok(line) =
            self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            if line == want {
                return;
            }
        }
        let _ = self.child.kill();
        let (name, out, err) = (self.name, self.seen.join("\n"), self.stderr());
        panic!("{name}: no line {want:?}; stdout so far:\n{out}\nstderr:\n{err}");
    }

    fn stderr(&mut self) -> String {
        self.stderr.take().map(|t| t.join().unwrap()).unwrap_or_default()
    }

    /// Waits for the exit; asserts success and a clean sanitizer report; returns stdout.
    fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} still running after {WAIT:?}: {:?}", self.name, self.seen);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.seen.extend(self.lines.try_iter());
        let stderr = self.stderr();
        let out = self.seen.join("\n");
        assert!(status.success(), "{}: {status}\nstdout:\n{out}\nstderr:\n{stderr}", self.name);
        for bad in ["AddressSanitizer", "LeakSanitizer", "runtime error:"] {
            assert!(!stderr.contains(bad), "{}: {bad} report:\n{stderr}", self.name);
        }
        self.seen
    }
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn misuse_from_c_gets_error_codes_and_no_sanitizer_report() {
    let env = GuestEnv::get();
    let dir = env.pagecache_dir.to_str().unwrap();
    let out = Program::spawn("filemr-c-misuse", &[&env.device, dir]).finish();
    assert_eq!(out.last().map(String::as_str), Some("misuse: 0 failure(s)"), "{out:#?}");
    let checks = out.iter().filter(|l| l.starts_with("ok ")).count();
    assert!(checks >= 50, "only {checks} checks ran:\n{out:#?}");
}

fn pattern(which: char, len: usize) -> Vec<u8> {
    let (m, a) = match which {
        'A' => (7, 1),
        'B' => (11, 3),
        _ => (13, 5),
    };
    (0..len).map(|i| (i * m + a) as u8).collect()
}

/// `got` is a subsequence of `lines` (in order, others between).
fn in_order(lines: &[String], want: &[&str]) -> bool {
    let mut it = lines.iter();
    want.iter().all(|w| it.any(|l| l.starts_with(w)))
}

fn serve_one_peer_through_a_break(env: &GuestEnv, dir: &Path, port: &str) {
    const PAGE: usize = 4096;
    let path = make_file(dir, "c-server", 16 * PAGE, 0);
    let srv_addr = env.server.addr.to_string();
    let mut server = Program::spawn("filemr-c-server", &[&srv_addr, port, path.to_str().unwrap()]);
    server.wait_line("listening");
    let mut peer = Program::spawn("filemr-c-peer", &[&srv_addr, port, &env.peer.addr.to_string()]);
    peer.wait_line("ready");

    // A writer opens the file: it waits until the peer returned and the lease is released.
    let tmp = std::env::temp_dir();
    let [before, stamp] = ["before", "stamp"].map(|t| guest::unique_path(&tmp, t));
    let writer = breaker("open-save", &path, &[before.to_str().unwrap(), stamp.to_str().unwrap()]);
    let peer_out = peer.finish();
    let server_out = server.finish();
    wait_child(writer, WAIT);

    let events = [
        "event REVOKING",
        "event RECALL",
        "event RETURNED",
        "event REVOKED",
        "event REBUILT",
        "event AVAILABLE",
    ];
    assert!(in_order(&server_out, &events), "server events:\n{}", server_out.join("\n"));
    assert!(server_out.iter().any(|l| l == "server done"), "{server_out:#?}");
    for want in ["got RECALL", "read after the rebuild, same key, page 1: pattern B", "peer done"] {
        assert!(peer_out.iter().any(|l| l.starts_with(want)), "peer: no {want:?}:\n{peer_out:#?}");
    }
    let seen = std::fs::read(&before).unwrap();
    assert!(seen[..PAGE] == pattern('A', PAGE)[..], "the writer sees the commit before the break");
    assert!(
        seen[PAGE..2 * PAGE] == pattern('B', PAGE)[..],
        "the writer sees what the peer committed in answer to the recall"
    );
    let file = std::fs::read(&path).unwrap();
    assert!(
        file[2 * PAGE..3 * PAGE] == pattern('C', PAGE)[..],
        "the write after the rebuild is in the file"
    );
}

#[test]
#[ignore = "needs rxe0 (SoftRoCE) as root: cargo xtask test runs it in the qemu guests"]
fn c_server_serves_a_peer_through_recall_and_rebuild() {
    let env = GuestEnv::get();
    serve_one_peer_through_a_break(&env, &env.pagecache_dir, "7471");
    serve_one_peer_through_a_break(&env, &env.dax_dir, "7472");
}
