//! SoftRoCE guests: a stock Debian kernel under qemu (TCG), the host's root shared read-only
//! over 9p, three emulated pmem devices, and `rxe0` on an isolated NIC.

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

/// One program the guest runs: its name (for its log) and its arguments after the binary.
pub struct Job<'a> {
    pub name: &'a str,
    pub bin: &'a Path,
    pub args: &'a [&'a str],
}

/// What one job left behind.
struct JobResult {
    name: String,
    log: String,
    rc: String,
}

/// Everything a guest run produced.
struct Session {
    release: String,
    odp: bool,
    finished: bool,
    console: String,
    results: Vec<JobResult>,
}

fn work_dir(spec: &KernelSpec) -> PathBuf {
    util::root().join("target/guest").join(spec.id)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Boot `spec`, run `jobs` one after the other inside it, collect their output; the guest
/// is killed after the harness's timeout plus `extra_secs`.
fn session(spec: &KernelSpec, what: &str, jobs: &[Job], extra_secs: u64) -> Result<Session> {
    let work = work_dir(spec);
    let kernel = kernels::prepare(spec, &work)?;
    let out = work.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut script = String::new();
    for j in jobs {
        let mut cmd = shell_quote(&j.bin.display().to_string());
        for a in j.args {
            cmd.push(' ');
            cmd.push_str(&shell_quote(a));
        }
        script.push_str(&format!(
            "echo \"guest: running {n}\"\n{cmd} > /tmp/out/{n}.log 2>&1\necho $? > /tmp/out/{n}.rc\n",
            n = j.name
        ));
    }
    util::step(&format!("softroce {}: booting qemu, running {what}", kernel.release));
    let console = qemu::boot(spec, &kernel, &work, &out, &script, extra_secs)?;
    let read = |f: String| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    let results = jobs
        .iter()
        .map(|j| JobResult {
            name: j.name.to_string(),
            log: read(format!("{}.log", j.name)),
            rc: read(format!("{}.rc", j.name)).trim().to_string(),
        })
        .collect();
    Ok(Session {
        release: kernel.release,
        odp: read("odp".into()).trim() == "yes",
        finished: out.join("done").exists(),
        console,
        results,
    })
}

impl Session {
    fn print_console_tail(&self) {
        let lines: Vec<&str> = self.console.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        println!("--- guest console (tail) ---\n{}", tail.join("\n"));
    }
}

/// Boot `spec` and run every integration test binary's ignored (guest-only) tests.
pub fn run_tests(spec: &KernelSpec, bins: &[(String, PathBuf)]) -> Result<GuestRun> {
    let args: &[&str] = &["--ignored", "--test-threads=2", "--skip", "reexec_entry"];
    let jobs: Vec<Job> = bins.iter().map(|(n, b)| Job { name: n, bin: b, args }).collect();
    let s = session(spec, &format!("{} test binaries", jobs.len()), &jobs, 0)?;
    let mut tally = Tally::default();
    for r in &s.results {
        let t = Tally::parse(&r.log);
        let rc = if r.rc.is_empty() { "none: it did not finish" } else { &r.rc };
        println!("--- guest {} {} (exit {rc}) ---\n{}", s.release, r.name, r.log.trim_end());
        tally.add(&t);
        if r.rc != "0" && t.failed == 0 {
            // The binary crashed or never ran: count it as one failure.
            tally.failed += 1;
        }
    }
    if !s.finished {
        s.print_console_tail();
        tally.failed += 1;
    }
    Ok(GuestRun { release: s.release, odp: s.odp, tally })
}

/// Boot `spec` and run `jobs` (the demo, benchmarks), printing their output.
pub fn run_programs(spec: &KernelSpec, jobs: &[Job]) -> Result<bool> {
    run_programs_for(spec, jobs, 0)
}

/// [`run_programs`] for jobs that need `extra_secs` more than the harness's timeout.
pub fn run_programs_for(spec: &KernelSpec, jobs: &[Job], extra_secs: u64) -> Result<bool> {
    let s = session(spec, &format!("{} program(s)", jobs.len()), jobs, extra_secs)?;
    println!("\n### kernel {} ({})", s.release, spec.describe);
    let mut ok = s.finished;
    for r in &s.results {
        println!("{}", r.log.trim_end());
        ok &= r.rc == "0";
    }
    if !ok {
        s.print_console_tail();
    }
    Ok(ok)
}
