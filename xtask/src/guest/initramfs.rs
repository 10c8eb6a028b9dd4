//! The guest's initramfs: static busybox, the kernel's modules (decompressed) and `/init`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::kernels::{self, Prepared};
use crate::{Result, util};

const INIT: &str = include_str!("init.sh");

/// Build `work/initrd.cpio` for `k` and return its path.
pub fn build(k: &Prepared, work: &Path) -> Result<PathBuf> {
    let stage = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&stage);
    let io = |e: std::io::Error| format!("{}: {e}", stage.display());
    for d in ["bin", "modules", "proc", "sys", "dev", "host"] {
        std::fs::create_dir_all(stage.join(d)).map_err(io)?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("busybox-static is not installed")?;
    std::fs::copy(busybox, stage.join("bin/busybox")).map_err(io)?;
    let mut order = String::new();
    for (i, src) in kernels::module_paths(k)?.iter().enumerate() {
        let file = src.file_name().and_then(|n| n.to_str()).ok_or("bad module name")?;
        let name = format!("{i:02}-{}", file.trim_end_matches(".xz").trim_end_matches(".zst"));
        let dst = stage.join("modules").join(&name);
        if file.ends_with(".xz") {
            let out = Command::new("xz").arg("-dc").arg(src).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("xz -dc {} failed", src.display()));
            }
            std::fs::write(&dst, out.stdout).map_err(io)?;
        } else {
            std::fs::copy(src, &dst).map_err(io)?;
        }
        writeln!(order, "{name}").unwrap();
    }
    std::fs::write(stage.join("modules/order"), order).map_err(io)?;
    let init = stage.join("init");
    std::fs::write(&init, INIT).map_err(io)?;
    util::output(Command::new("chmod").arg("755").arg(&init))?;
    let cpio = work.join("initrd.cpio");
    util::output(
        Command::new("sh")
            .arg("-c")
            .arg("find . | LC_ALL=C sort | cpio -o -H newc --quiet > \"$0\"")
            .arg(&cpio)
            .current_dir(&stage),
    )?;
    Ok(cpio)
}
