//! Checks of the deployment files in `deploy/`: the Prometheus rules (`promtool check
//! rules`, then their unit tests with `promtool test rules`) and the systemd unit
//! (`systemd-analyze verify`, where systemd is installed).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, util};

const RULES: &str = "deploy/prometheus/filemr.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/filemr.rules.test.yml";
const UNIT: &str = "deploy/systemd/filemrd.service";
/// The unit's `ExecStart=` binary: where filemrd is installed, not on this machine.
const DAEMON: &str = "/usr/local/bin/filemrd";

/// Runs every check; the first failure is the error.
pub fn check() -> Result<()> {
    let root = util::root();
    util::run(Command::new("promtool").current_dir(&root).args(["check", "rules", RULES]))?;
    util::run(Command::new("promtool").current_dir(&root).args(["test", "rules", RULE_TESTS]))?;
    verify_unit(&root)
}

/// `systemd-analyze verify` of a copy of the unit whose `ExecStart=` names a stand-in
/// executable: verify fails on a missing binary, and filemrd is not installed here.
fn verify_unit(root: &Path) -> Result<()> {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        println!("systemd-analyze not found (Debian package systemd): {UNIT} not verified");
        return Ok(());
    }
    let unit = std::fs::read_to_string(root.join(UNIT)).map_err(|e| format!("{UNIT}: {e}"))?;
    let exec = format!("ExecStart={DAEMON} ");
    if unit.matches(&exec).count() != 1 {
        return Err(format!("{UNIT}: expected one line starting with {exec:?}"));
    }
    // Under target/ rather than /tmp, which may be mounted noexec (verify checks that the
    // binary is executable).
    let dir = root.join("target/deploy").join(format!("verify-{}", std::process::id()));
    let result = verify_copy(&dir, &unit, &exec);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn verify_copy(dir: &Path, unit: &str, exec: &str) -> Result<()> {
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let stand_in: PathBuf = dir.join("filemrd");
    std::fs::write(&stand_in, "#!/bin/sh\nexit 0\n").map_err(|e| io(&stand_in, e))?;
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io(&stand_in, e))?;
    // The copy keeps the unit's name: verify names the unit after its file.
    let copy = dir.join("filemrd.service");
    let replaced = format!("ExecStart={} ", exec_path(&stand_in));
    std::fs::write(&copy, unit.replace(exec, &replaced)).map_err(|e| io(&copy, e))?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .map_err(|e| format!("cannot run systemd-analyze: {e}"))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    print!("{text}");
    // verify exits 0 after warnings such as an unknown key or a value it ignores; those
    // lines name the unit file, so any line naming it fails the check too. (Lines about
    // other units, e.g. the machine's own, do not.)
    if !out.status.success() || text.contains("filemrd.service") {
        return Err(format!("systemd-analyze verify {UNIT} failed ({}):\n{text}", out.status));
    }
    println!("systemd-analyze verify {UNIT}: OK");
    Ok(())
}

/// `path` as one quoted word of an `Exec*=` line (systemd's quoting, `%` specifiers and
/// `$` variables escaped), so that any workspace path works.
fn exec_path(path: &Path) -> String {
    let mut s = String::from("\"");
    for c in path.display().to_string().chars() {
        match c {
            '"' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            '%' => s.push_str("%%"),
            '$' => s.push_str("$$"),
            _ => s.push(c),
        }
    }
    s.push('"');
    s
}
