//! Booting one guest under qemu (TCG, isolated hub NIC, no user-mode network) with a
//! bounded run time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::initramfs;
use super::kernels::{KernelSpec, Prepared};
use crate::Result;

/// Longest a guest may run before it is killed.
const GUEST_TIMEOUT: Duration = Duration::from_secs(360);
/// A guest whose init has not said a word by then is booted again, once. (A TCG boot
/// takes 3-10 s; one run on 2026-12-06 sat 360 s with an empty console.)
const BOOT_WAIT: Duration = Duration::from_secs(90);
/// What the guest's init prints first.
const BOOTED: &str = "guest: init up";

const SETUP: &str = include_str!("setup.sh");

/// Boot `k`, run `script` (as `/tmp/out/run.sh` inside the chroot) and return the console.
pub fn boot(
    spec: &KernelSpec,
    k: &Prepared,
    work: &Path,
    out: &Path,
    script: &str,
    extra_secs: u64,
) -> Result<String> {
    let timeout = GUEST_TIMEOUT + Duration::from_secs(extra_secs);
    let initrd = initramfs::build(k, work)?;
    let env = format!(
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp RUST_BACKTRACE=1\n\
         export FILEMR_RXE_DEVICE=rxe0 FILEMR_DAX_DIR=/tmp/dax FILEMR_PAGECACHE_DIR=/tmp/pc FILEMR_XFS_DAX_DIR=/tmp/xdax\n\
         export FILEMR_SERVER_DEVICE=rxe_srv FILEMR_SERVER_NETDEV=fmr-srv FILEMR_SERVER_ADDR=10.77.0.1\n\
         export FILEMR_PEER_DEVICE=rxe_peer FILEMR_PEER_NETDEV=fmr-peer FILEMR_PEER_ADDR=10.77.0.2\n\
         export FILEMR_EXPECT_ODP={} FILEMR_GUEST_PROFILE={}\ncd /tmp\n",
        if spec.expect_odp { "yes" } else { "no" },
        spec.id
    );
    // setup.sh builds the topology those variables name.
    std::fs::write(out.join("setup.sh"), format!("{env}{SETUP}")).map_err(|e| e.to_string())?;
    let repo = crate::util::root();
    std::fs::write(out.join("repo_path"), repo.display().to_string()).map_err(|e| e.to_string())?;
    std::fs::write(out.join("run.sh"), env + script).map_err(|e| e.to_string())?;
    let console = work.join("console.log");
    for attempt in 1..=2 {
        let _ = std::fs::remove_file(&console);
        match run_qemu(k, &initrd, &console, out, &repo, timeout)? {
            Some(text) => return Ok(text),
            None if attempt == 1 => {
                println!("    guest did not boot in {BOOT_WAIT:?} (empty console): booting again");
            }
            None => {}
        }
    }
    Err(format!("the {} guest did not boot, twice", spec.id))
}

/// One qemu run; `None` if the guest never booted (nothing on the console by
/// [`BOOT_WAIT`]).
fn run_qemu(
    k: &Prepared,
    initrd: &Path,
    console: &Path,
    out: &Path,
    repo: &Path,
    timeout: Duration,
) -> Result<Option<String>> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "3G",
            "-smp",
            "2",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg("console=ttyS0 panic=-1 loglevel=4 memmap=256M!1G memmap=256M!1280M memmap=320M!1536M")
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=out,security_model=none,multidevs=remap",
            out.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=repo,security_model=none,readonly=on,multidevs=remap",
            repo.display()
        ))
        // An isolated hub with the guest's NIC alone on it: no path to any network.
        .args(["-netdev", "hubport,id=n0,hubid=0", "-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut booted = false;
    loop {
        if !booted && start.elapsed() > BOOT_WAIT {
            let text = std::fs::read(console).unwrap_or_default();
            booted = String::from_utf8_lossy(&text).contains(BOOTED);
            if !booted {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            println!("    guest exited after {:.0?} ({status})", start.elapsed());
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            println!("    guest killed after {timeout:?}");
            break;
        }
        if last_progress.elapsed() > Duration::from_secs(30) {
            println!("    guest running for {:.0?}", start.elapsed());
            last_progress = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Some(String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned()))
}
