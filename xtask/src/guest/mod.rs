//! SoftRoCE guests: a stock Debian kernel under qemu (TCG), the host's root shared read-only
//! over 9p, two or three emulated pmem devices, and `rxe0` on an isolated NIC.

mod initramfs;
pub mod kernels;
mod qemu;

use std::path::{Path, PathBuf};

use crate::summary::Tally;
use crate::{Result, util};
use kernels::KernelSpec;

/// What a guest test run produced.
pub struct GuestRun {
    pub release: String,
    pub odp: bool,
    pub tally: Tally,
}

fn work_dir(spec: &KernelSpec) -> PathBuf {
    util::root().join("target/guest").join(spec.id)
}

/// A fresh directory shared writable with the guest as `/tmp/out`.
fn fresh_out(spec: &KernelSpec) -> Result<PathBuf> {
    let out = work_dir(spec).join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Boot `spec` and run every integration test binary's ignored (guest-only) tests.
pub fn run_tests(spec: &KernelSpec, bins: &[(String, PathBuf)]) -> Result<GuestRun> {
    let kernel = kernels::prepare(spec, &work_dir(spec))?;
    let out = fresh_out(spec)?;
    let mut script = String::new();
    for (name, bin) in bins {
        script.push_str(&format!(
            "echo \"guest: running {name}\"\n{} --ignored --test-threads=2 > /tmp/out/{name}.log 2>&1\necho $? > /tmp/out/{name}.rc\n",
            shell_quote(bin)
        ));
    }
    util::step(&format!(
        "softroce {}: booting qemu, running {} test binaries",
        kernel.release,
        bins.len()
    ));
    let console = qemu::boot(spec, &kernel, &work_dir(spec), &out, &script)?;
    let odp = std::fs::read_to_string(out.join("odp"))
        .map(|s| s.trim() == "yes")
        .unwrap_or(false);
    let mut tally = Tally::default();
    for (name, _) in bins {
        let log = std::fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        let rc = std::fs::read_to_string(out.join(format!("{name}.rc"))).unwrap_or_default();
        let t = Tally::parse(&log);
        println!(
            "--- guest {} {name} (exit {}) ---\n{}",
            kernel.release,
            rc.trim(),
            log.trim_end()
        );
        tally.add(&t);
        if rc.trim() != "0" && t.failed == 0 {
            // The binary crashed or never ran: count it as one failure.
            tally.failed += 1;
        }
    }
    if !out.join("done").exists() {
        println!("--- guest console (tail) ---\n{}", tail(&console, 60));
        tally.failed += 1;
    }
    Ok(GuestRun {
        release: kernel.release,
        odp,
        tally,
    })
}

/// Boot `spec` and run the demo binary, printing its output.
pub fn run_demo(spec: &KernelSpec, bin: &Path) -> Result<bool> {
    let kernel = kernels::prepare(spec, &work_dir(spec))?;
    let out = fresh_out(spec)?;
    let script = format!(
        "{} > /tmp/out/demo.log 2>&1\necho $? > /tmp/out/demo.rc\n",
        shell_quote(bin)
    );
    util::step(&format!(
        "softroce {}: booting qemu for the demo",
        kernel.release
    ));
    let console = qemu::boot(spec, &kernel, &work_dir(spec), &out, &script)?;
    let log = std::fs::read_to_string(out.join("demo.log")).unwrap_or_default();
    let rc = std::fs::read_to_string(out.join("demo.rc")).unwrap_or_default();
    println!(
        "\n### kernel {} ({})\n{}",
        kernel.release,
        spec.describe,
        log.trim_end()
    );
    if rc.trim() != "0" {
        println!("--- guest console (tail) ---\n{}", tail(&console, 60));
        return Ok(false);
    }
    Ok(true)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
