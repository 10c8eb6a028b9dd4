//! The daemon's TOML configuration: parsed strictly (unknown keys are errors that name
//! the key and line), then checked against the machine (exports are directories, the
//! device exists).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use filemr::layout::Export;
use filemr::region::{ManagerConfig, RevocationMode};
use serde::Deserialize;

/// What goes wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid TOML, or a key is unknown, missing or of the wrong type (the
    /// message names the key and the line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// A value is well formed but wrong for this machine.
    #[error("{path}: {key}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `export[1].path`.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// Revocation mode as spelled in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Revocation {
    /// Fence peers that do not return a recalled layout in time.
    #[default]
    Fence,
    /// Retarget their keys to scratch memory.
    Retarget,
}

/// One exported directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Peers ask for `name/<path>`.
    pub name: String,
    /// The directory.
    pub path: PathBuf,
    /// Refuse write layouts.
    #[serde(default)]
    pub read_only: bool,
}

fn default_port() -> u8 {
    1
}
fn default_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_margin() -> u64 {
    500
}
fn default_grace() -> u64 {
    5000
}

/// The daemon's configuration (see `deploy/filemrd.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// RDMA device.
    pub device: String,
    /// Its port.
    #[serde(default = "default_port")]
    pub port: u8,
    /// RDMA CM address peers connect to.
    pub listen: SocketAddr,
    /// HTTP address of `/metrics` (loopback by default).
    #[serde(default = "default_metrics")]
    pub metrics: SocketAddr,
    /// What happens to a peer that does not return a recalled layout in time.
    #[serde(default)]
    pub revocation: Revocation,
    /// The recall deadline is the lease-break deadline minus this.
    #[serde(default = "default_margin")]
    pub recall_margin_ms: u64,
    /// On SIGTERM, how long peers get to return their layouts.
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
    /// At start, how long to wait for a missing device (0: fail at once). When the device
    /// is removed while running, filemrd exits with 75 (`EX_TEMPFAIL`) so the removal can
    /// finish, and systemd starts it again (`Restart=on-failure`), waiting this long.
    #[serde(default)]
    pub device_wait_ms: u64,
    /// Exported directories.
    #[serde(rename = "export", default)]
    pub exports: Vec<ExportConfig>,
}

impl Config {
    /// Reads, parses and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let cfg = Config::parse(path, &text)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// Parses `text` (errors name `path`).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            // toml's own message ends with what is wrong; say where, and show the line.
            let what = e.message().trim().to_string();
            let message = match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let line = text[..start].matches('\n').count() + 1;
                    let source = text.lines().nth(line - 1).unwrap_or("").trim();
                    format!("line {line}: {what} (at `{source}`)")
                }
                None => what,
            };
            ConfigError::Parse { path: path.to_path_buf(), message }
        })
    }

    /// Checks the values against the machine: at least one export, unique names, each a
    /// directory; the device exists; margins sensible.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: String, why: String| ConfigError::Invalid { path: path.to_path_buf(), key, why };
        if self.exports.is_empty() {
            return Err(invalid("export".into(), "no [[export]] table".into()));
        }
        for (i, e) in self.exports.iter().enumerate() {
            Export::check_name(&e.name).map_err(|why| invalid(format!("export[{i}].name"), why))?;
            if self.exports[..i].iter().any(|o| o.name == e.name) {
                return Err(invalid(
                    format!("export[{i}].name"),
                    format!("{:?} is exported twice", e.name),
                ));
            }
            match std::fs::metadata(&e.path) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(invalid(
                        format!("export[{i}].path"),
                        format!("{} is not a directory", e.path.display()),
                    ));
                }
                Err(err) => {
                    return Err(invalid(
                        format!("export[{i}].path"),
                        format!("{}: {err}", e.path.display()),
                    ));
                }
            }
        }
        if self.recall_margin_ms >= 45_000 {
            return Err(invalid(
                "recall_margin_ms".into(),
                "must be well below the lease-break time".into(),
            ));
        }
        let devices = filemr::verbs::device_names().unwrap_or_default();
        if !devices.contains(&self.device) && self.device_wait_ms == 0 {
            return Err(invalid(
                "device".into(),
                format!("no RDMA device {:?} (devices: {devices:?})", self.device),
            ));
        }
        Ok(())
    }

    /// The exports for the layout server.
    pub fn exports(&self) -> Vec<Export> {
        self.exports
            .iter()
            .map(|e| Export { name: e.name.clone(), root: e.path.clone(), read_only: e.read_only })
            .collect()
    }

    /// The region manager's configuration.
    pub fn manager(&self) -> ManagerConfig {
        let mut m = ManagerConfig::new(&self.device);
        m.port = self.port;
        m.device_wait = Duration::from_millis(self.device_wait_ms);
        m.safety_margin = Duration::from_millis(self.recall_margin_ms);
        m.revocation = match self.revocation {
            Revocation::Fence => RevocationMode::Fence,
            Revocation::Retarget => RevocationMode::Retarget,
        };
        m
    }

    /// How long peers get to return their layouts on SIGTERM.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
device = "rxe0"
listen = "10.0.0.1:20049"
[[export]]
name = "data"
path = "/tmp"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("filemrd.toml"), text)
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.port, 1);
        assert_eq!(c.metrics, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(c.revocation, Revocation::Fence);
        assert_eq!((c.recall_margin_ms, c.shutdown_grace_ms), (500, 5000));
        assert_eq!(c.exports()[0].name, "data");
        assert!(!c.exports()[0].read_only);
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let e = parse(&format!("colour = \"blue\"\n{GOOD}")).unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`") && e.contains("line 1"), "{e}");
        let e = parse(&format!("{GOOD}colour = \"blue\"\n")).unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("line 7"), "in the export table: {e}");
        let e = parse(&GOOD.replace("10.0.0.1:20049", "nowhere")).unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("line 3"), "{e}");
        let e = parse(&format!("{GOOD}revocation = \"shred\"\n")).unwrap_err().to_string();
        assert!(e.contains("revocation") && e.contains("shred"), "{e}");
        let e = parse(&format!("{GOOD}read_only = \"yes\"\n")).unwrap_err().to_string();
        assert!(e.contains("read_only"), "{e}");
        let e = parse("listen = \"10.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(e.contains("device"), "{e}");
    }

    #[test]
    fn exports_are_checked_against_the_machine() {
        let check =
            |text: &str| parse(text).unwrap().check(Path::new("f.toml")).unwrap_err().to_string();
        let e = check(&GOOD.replace("/tmp", "/nonexistent-filemr"));
        assert!(e.contains("export[0].path"), "{e}");
        let e = check(&GOOD.replace("/tmp", "/etc/hostname"));
        assert!(e.contains("export[0].path") && e.contains("not a directory"), "{e}");
        let e = check(&format!("{GOOD}[[export]]\nname = \"data\"\npath = \"/tmp\"\n"));
        assert!(e.contains("export[1].name") && e.contains("twice"), "{e}");
        let e = check(&GOOD.replace("\"data\"", "\"a/b\""));
        assert!(e.contains("export[0].name"), "{e}");
        let e = check("device = \"rxe0\"\nlisten = \"10.0.0.1:1\"\n");
        assert!(e.contains("export"), "{e}");
        // The host has no RDMA device at all.
        let e = check(&GOOD.replace("rxe0", "mlx5_99"));
        assert!(e.contains("device") && e.contains("mlx5_99"), "{e}");
    }
}
