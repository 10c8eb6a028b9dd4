//! The Debian packages the harness needs, installed when missing (as root).

use std::process::Command;

use crate::{Result, util};

/// Packages needed on the host: qemu and image tools, and the RDMA userspace that the
/// guests run from the host's root file system.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "e2fsprogs",
    "xfsprogs",
    "libibverbs-dev",
    "librdmacm-dev",
    "rdma-core",
    "ibverbs-providers",
    "ibverbs-utils",
    // rping: an RDMA CM client and server, the reference the two-rxe topology is tested
    // with (tests/rxe_topology.rs) before filemr's own connection code relies on it.
    "rdmacm-utils",
    "iproute2",
    "libclang-dev",
    "pkg-config",
    // promtool: `cargo xtask test` checks deploy/prometheus/filemr.rules.yml and runs its
    // unit tests; the guests run the prometheus server itself to scrape filemrd.
    "prometheus",
    // The C API's programs (examples/c, bindings/c/tests) are built with the system C
    // compiler under AddressSanitizer and UndefinedBehaviorSanitizer.
    "gcc",
    "libc6-dev",
    "libasan8",
    "libubsan1",
    // ib_write_bw, ib_read_bw, ib_write_lat: the device's own limit, measured in the same
    // guest run as filemr's data path (benches/data_path.rs).
    "perftest",
    // /bin/kill, the ExecReload= of deploy/systemd/filemrd.service, which
    // `systemd-analyze verify` requires to exist (minimal images lack it).
    "procps",
];

fn missing() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// Install missing packages when root; otherwise print the command and fail.
pub fn ensure() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let line = format!("apt-get install -y --no-install-recommends {}", missing.join(" "));
    if !util::is_root() {
        return Err(format!("missing Debian packages; run as root:\n  apt-get update && {line}"));
    }
    util::step(&format!("installing {}", missing.join(" ")));
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}
