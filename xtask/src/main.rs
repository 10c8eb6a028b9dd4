//! Project automation: `cargo xtask test`, `cargo xtask demo`, `cargo xtask bench`.
//!
//! `test` is the project's one test command: host checks and tests, then the integration
//! tests inside SoftRoCE guests booted under qemu (TCG) with stock Debian kernels.

mod capi;
mod cargo;
mod deploy;
mod guest;
mod packages;
mod summary;
mod util;

use std::process::ExitCode;

use summary::Tally;

const USAGE: &str = "usage: cargo xtask <test|demo|bench|soak|header|install-c> [--kernel bookworm|trixie-bpo]... [--guests-only]\n\
  test   fmt + clippy + host tests, then integration tests in SoftRoCE guests\n\
  demo   boot the guests; filemrd, peers and two lease breaks, with the timeline\n\
         (--matrix: the device capabilities and the registration matrix instead)\n\
  bench  run the benchmarks on the host and in the guests\n\
  header regenerate bindings/c/include/filemr.h with cbindgen\n\
  install-c --prefix DIR  build the C library (release) and install it, filemr.h and filemr.pc\n\
  --kernel ID    only this guest kernel (repeatable)\n\
  --guests-only  test: skip fmt, clippy and host tests (for iterating on guest tests)\n\
  --only PREFIX  test, bench: only the guest test (bench) binaries whose name starts with PREFIX (repeatable)\n\
  soak [--secs N] [--seed S]: the soak test alone in each guest, N seconds (default 240),
                 seeded S (default: from the clock; printed either way)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let guests_only = args.iter().any(|a| a == "--guests-only");
    let matrix = args.iter().any(|a| a == "--matrix");
    let mut only = Vec::new();
    let (mut soak_secs, mut soak_seed): (u64, Option<String>) = (240, None);
    let mut rest: Vec<String> = Vec::new();
    let mut it = args[1..].iter().filter(|a| *a != "--guests-only" && *a != "--matrix");
    while let Some(a) = it.next() {
        if a == "--secs" || a == "--seed" {
            let Some(v) = it.next().filter(|v| v.parse::<u64>().is_ok()) else {
                eprintln!("xtask: {a} needs a number\n{USAGE}");
                return ExitCode::from(2);
            };
            if a == "--secs" {
                soak_secs = v.parse().unwrap_or(soak_secs);
            } else {
                soak_seed = Some(v.clone());
            }
        } else if a == "--only" {
            match it.next() {
                Some(p) => only.push(p.clone()),
                None => {
                    eprintln!("xtask: --only needs a value\n{USAGE}");
                    return ExitCode::from(2);
                }
            }
        } else {
            rest.push(a.clone());
        }
    }
    if cmd == "install-c" {
        return match rest.as_slice() {
            [flag, prefix] if flag == "--prefix" => {
                match capi::install(std::path::Path::new(prefix), true) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("xtask: error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            _ => {
                eprintln!("xtask: install-c needs --prefix DIR\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    let kernels = match guest::kernels::select(&rest) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("xtask: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "test" => test(&kernels, guests_only, &only),
        "demo" => demo(&kernels, matrix),
        "bench" => bench(&kernels, guests_only, &only),
        "soak" => soak(&kernels, soak_secs, soak_seed.as_deref()),
        "header" => capi::write_header().map(|()| true),
        "install-c" => unreachable!("handled before the kernel selection"),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn test(
    kernels: &[&'static guest::kernels::KernelSpec],
    guests_only: bool,
    only: &[String],
) -> Result<bool> {
    packages::ensure()?;
    let mut total = Tally::default();
    if !guests_only {
        util::step("cargo fmt --check");
        cargo::run(&["fmt", "--all", "--check"])?;
        util::step("cargo clippy -- -D warnings");
        cargo::run(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
        util::step("C API: the checked-in header matches the sources");
        capi::check_header()?;
        util::step("deploy/: promtool check and test rules, systemd-analyze verify");
        deploy::check()?;
        util::step("host tests");
        let host = cargo::host_tests()?;
        println!("host: {}", host.line());
        total.add(&host);
    }
    util::step("building integration tests for the guests");
    // tests/rxe_embed.rs runs the `embed` example, found next to its own executable.
    cargo::example_binary("filemr", "embed")?;
    util::step("C API: install, build the C programs with pkg-config and ASan");
    capi::build_programs()?;
    let mut bins = cargo::integration_test_binaries()?;
    if !only.is_empty() {
        bins.retain(|(name, _)| only.iter().any(|p| name.starts_with(p.as_str())));
        if bins.is_empty() {
            return Err(format!("no guest test binary starts with any of {only:?}"));
        }
    }
    for k in kernels {
        let run = guest::run_tests(k, &bins)?;
        println!(
            "softroce {} odp={}: {}",
            run.release,
            if run.odp { "yes" } else { "no" },
            run.tally.line()
        );
        total.add(&run.tally);
    }
    println!("{}", total.line());
    Ok(total.failed == 0 && total.passed > 0)
}

/// The demo: filemrd, a cooperative and a silent peer, two breaks, the timeline; or,
/// with `--matrix`, the device capabilities and the registration matrix.
fn demo(kernels: &[&'static guest::kernels::KernelSpec], matrix: bool) -> Result<bool> {
    packages::ensure()?;
    util::step("building the demo");
    let bin = if matrix {
        cargo::example_binary("filemr", "caps_matrix")?
    } else {
        cargo::build_bins("filemrd")?;
        cargo::example_binary("filemrd", "demo")?
    };
    let job = guest::Job { name: "demo", bin: &bin, args: &[] };
    let mut ok = true;
    for k in kernels {
        ok &= guest::run_programs(k, std::slice::from_ref(&job))?;
    }
    Ok(ok)
}

/// The soak test alone, long: `secs` seconds per guest, seeded `seed` (or from the clock).
/// Its report (seed, operations, events) is printed with its output.
fn soak(
    kernels: &[&'static guest::kernels::KernelSpec],
    secs: u64,
    seed: Option<&str>,
) -> Result<bool> {
    packages::ensure()?;
    util::step("building the soak test for the guests");
    let bins = cargo::integration_test_binaries()?;
    let (_, bin) = bins
        .iter()
        .find(|(n, _)| n == "rxe_soak")
        .ok_or_else(|| "the rxe_soak test binary was not built".to_string())?;
    let bin = bin.display().to_string();
    let secs_var = format!("FILEMR_SOAK_SECS={secs}");
    let seed_var = seed.map(|s| format!("FILEMR_SOAK_SEED={s}"));
    let mut args: Vec<&str> = vec![&secs_var];
    if let Some(s) = &seed_var {
        args.push(s);
    }
    args.extend([bin.as_str(), "--ignored", "--nocapture", "--test-threads=1"]);
    let job =
        guest::Job { name: "rxe_soak", bin: std::path::Path::new("/usr/bin/env"), args: &args };
    let mut ok = true;
    for k in kernels {
        ok &= guest::run_programs_for(k, std::slice::from_ref(&job), secs)?;
    }
    Ok(ok)
}

/// Benchmarks run on the host (those that need no device) and in each guest (all of them;
/// the ones needing rxe measure there), each printing ratios against its own baseline.
fn bench(
    kernels: &[&'static guest::kernels::KernelSpec],
    guests_only: bool,
    only: &[String],
) -> Result<bool> {
    packages::ensure()?;
    if !guests_only {
        util::step("benchmarks on the host");
        cargo::run(&["bench", "--package", "filemr", "--benches"])?;
    }
    util::step("building benchmarks for the guests");
    let bins = cargo::bench_binaries()?;
    let jobs: Vec<guest::Job> = bins
        .iter()
        .filter(|(n, _)| only.is_empty() || only.iter().any(|p| n.starts_with(p.as_str())))
        .map(|(n, b)| guest::Job { name: n, bin: b, args: &["--bench"] })
        .collect();
    let mut ok = true;
    for k in kernels {
        ok &= guest::run_programs(k, &jobs)?;
    }
    Ok(ok)
}
