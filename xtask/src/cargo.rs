//! Running cargo: checks, host tests, and building binaries for the guests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::summary::Tally;
use crate::{Result, util};

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(util::root());
    c
}

/// Run cargo with inherited output.
pub fn run(args: &[&str]) -> Result<()> {
    util::run(cargo().args(args))
}

/// Run the host test suite (tests needing rxe or root are `#[ignore]`d with their reason
/// and run in the guests), echoing output, and count the results.
pub fn host_tests() -> Result<Tally> {
    let mut child = cargo()
        // Benchmarks are not tests (clippy --all-targets still builds them); the
        // `*_reexec_entry` functions are the entry points of re-executed child processes
        // (breakers), not tests, so they are not counted.
        .args([
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--examples",
            "--color",
            "never",
        ])
        .args(["--", "--skip", "reexec_entry"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let tally = Tally::parse(&out);
    if !status.success() && tally.failed == 0 {
        return Err(format!("cargo test failed before running tests: {status}"));
    }
    Ok(tally)
}

fn artifacts(args: &[&str], kind: &str) -> Result<Vec<(String, PathBuf)>> {
    let out = util::output(cargo().args(args).args(["--message-format", "json"]))?;
    let tag = format!("\"kind\":[\"{kind}\"]");
    Ok(out
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains(&tag))
        .filter_map(|l| {
            Some((json_str(l, "\"name\":")?, PathBuf::from(json_str(l, "\"executable\":")?)))
        })
        .collect())
}

/// Built integration test executables (`tests/*.rs` of the library and of filemrd), as
/// (name, path).
pub fn integration_test_binaries() -> Result<Vec<(String, PathBuf)>> {
    artifacts(
        &["test", "--no-run", "--tests", "--package", "filemr", "--package", "filemrd"],
        "test",
    )
}

/// Build `package`'s binaries (the demo runs filemrd and filemr).
pub fn build_bins(package: &str) -> Result<()> {
    run(&["build", "--package", package, "--bins"])
}

/// Built benchmark executables (`benches/*.rs`, `harness = false`), as (name, path).
pub fn bench_binaries() -> Result<Vec<(String, PathBuf)>> {
    artifacts(&["bench", "--no-run", "--benches", "--package", "filemr"], "bench")
}

/// Build one example of `package` and return its executable.
pub fn example_binary(package: &str, name: &str) -> Result<PathBuf> {
    artifacts(&["build", "--package", package, "--example", name], "example")?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .ok_or_else(|| format!("example {name} was not built"))
}

/// The string value after `key` in a one-line JSON object (no escapes expected in paths).
fn json_str(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}
