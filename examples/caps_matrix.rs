//! Print an RDMA device's capabilities and the registration matrix: which kinds of file
//! memory the kernel lets it register, and the errno where it refuses.
//!
//! `cargo xtask demo` runs this inside the SoftRoCE guests. By hand:
//! `FILEMR_RXE_DEVICE=rxe0 FILEMR_DAX_DIR=/mnt/dax FILEMR_PAGECACHE_DIR=/mnt/pc cargo run --example caps_matrix`

use std::path::PathBuf;
use std::process::ExitCode;

use filemr::probe::{matrix_cases, run_case};
use filemr::verbs::{Context, ProtectionDomain, device_names};

fn main() -> ExitCode {
    let device = std::env::var("FILEMR_RXE_DEVICE").unwrap_or_else(|_| "rxe0".into());
    let ctx = match Context::open(&device) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            eprintln!(
                "cannot open {device}: {e} (devices: {:?})",
                device_names().unwrap_or_default()
            );
            return ExitCode::FAILURE;
        }
    };
    let caps = match ctx.caps() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!("device {}  fw {}  ports {}", caps.name, caps.fw_ver, caps.phys_ports);
    println!("  max MR size      {:#x}", caps.max_mr_size);
    println!(
        "  ODP              {} (general {:#x}, rc {:#x}, uc {:#x}, ud {:#x})",
        if caps.odp.supported() { "yes" } else { "no" },
        caps.odp.general,
        caps.odp.rc,
        caps.odp.uc,
        caps.odp.ud
    );
    println!(
        "  memory windows   max {}  type1 {}  type2 {}",
        caps.max_mw, caps.mw_type1, caps.mw_type2
    );
    let pd = match ProtectionDomain::new(&ctx) {
        Ok(pd) => pd,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let dirs = [
        ("FS-DAX ext4", "FILEMR_DAX_DIR"),
        ("page cache ext4", "FILEMR_PAGECACHE_DIR"),
        ("FS-DAX xfs", "FILEMR_XFS_DAX_DIR"),
    ];
    println!("\nregistration matrix (8 MiB MAP_SHARED file mapping)");
    println!("  {:<16} {:<42} result", "file system", "registration");
    let mut first = true;
    for (label, var) in dirs {
        let Some(dir) = std::env::var_os(var).map(PathBuf::from) else {
            continue;
        };
        for case in matrix_cases(&dir, first) {
            let fs = if matches!(case.backing, filemr::probe::Backing::Anonymous) {
                "anonymous"
            } else {
                label
            };
            let result = match run_case(&pd, &case) {
                Ok(()) => "OK".to_string(),
                Err(e) => format!("{e}"),
            };
            println!("  {:<16} {:<42} {}", fs, case.label, result);
        }
        first = false;
    }
    ExitCode::SUCCESS
}
