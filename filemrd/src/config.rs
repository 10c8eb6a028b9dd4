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
        if self.device.trim().is_empty() {
            return Err(invalid("device".into(), "empty: name an RDMA device (rxe0)".into()));
        }
        if self.port == 0 {
            return Err(invalid("port".into(), "RDMA ports are numbered from 1".into()));
        }
        if self.listen.port() == 0 {
            return Err(invalid(
                "listen".into(),
                format!("{}: port 0 would pick a random port peers cannot know", self.listen),
            ));
        }
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
            if !e.path.is_absolute() {
                return Err(invalid(
                    format!("export[{i}].path"),
                    format!(
                        "{} is relative: it would depend on the daemon's working directory",
                        e.path.display()
                    ),
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

    /// Every key with values of the wrong type, out of range or empty: each error names
    /// its key (and the line when parsing).
    #[test]
    fn hostile_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("device = \"rxe0\"", "device = 7", "device"),
            ("device = \"rxe0\"", "device = \"\"", "device"),
            ("device = \"rxe0\"", "device = \"  \"", "device"),
            ("listen = \"10.0.0.1:20049\"", "listen = \"10.0.0.1\"", "listen"),
            ("listen = \"10.0.0.1:20049\"", "listen = \"10.0.0.1:70000\"", "listen"),
            ("listen = \"10.0.0.1:20049\"", "listen = \"10.0.0.1:0\"", "listen"),
            ("listen = \"10.0.0.1:20049\"", "listen = [1, 2]", "listen"),
            ("name = \"data\"", "name = \"\"", "export[0].name"),
            ("name = \"data\"", "name = \"..\"", "export[0].name"),
            ("name = \"data\"", "name = 1", "name"),
            ("path = \"/tmp\"", "path = \"\"", "export[0].path"),
            ("path = \"/tmp\"", "path = \"/tmp/\\u0000x\"", "export[0].path"),
            ("path = \"/tmp\"", "path = true", "path"),
        ];
        let extra: &[(&str, &str)] = &[
            ("port = 0", "port"),
            ("port = 256", "port"),
            ("port = -1", "port"),
            ("metrics = \"localhost\"", "metrics"),
            ("revocation = \"\"", "revocation"),
            ("recall_margin_ms = -5", "recall_margin_ms"),
            ("recall_margin_ms = 45000", "recall_margin_ms"),
            ("recall_margin_ms = 1e3", "recall_margin_ms"),
            ("shutdown_grace_ms = \"5s\"", "shutdown_grace_ms"),
            ("device_wait_ms = 18446744073709551616", "device_wait_ms"),
        ];
        let mut texts: Vec<(String, &str)> =
            cases.iter().map(|(from, to, key)| (GOOD.replacen(from, to, 1), *key)).collect();
        // Top-level keys go before the [[export]] table.
        texts.extend(extra.iter().map(|(line, key)| (format!("{line}\n{GOOD}"), *key)));
        for (text, key) in texts {
            let e = match parse(&text) {
                Err(e) => e.to_string(),
                Ok(c) => c.check(Path::new("filemrd.toml")).unwrap_err().to_string(),
            };
            assert!(e.contains(key) && e.contains("filemrd.toml"), "{key}: {e}\n{text}");
        }
    }

    proptest::proptest! {
        /// Arbitrary damage to a good file (a byte changed, the text cut anywhere) never
        /// panics, and a refusal names the file and says where or which key.
        #[test]
        fn damaged_files_are_refused_clearly(at in 0usize..200, byte in proptest::prelude::any::<u8>(), cut in proptest::prelude::any::<bool>()) {
            let mut bytes = GOOD.as_bytes().to_vec();
            let at = at % bytes.len();
            if cut { bytes.truncate(at) } else { bytes[at] = byte }
            let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
            let result = parse(&text).and_then(|c| c.check(Path::new("filemrd.toml")).map(|()| c));
            if let Err(e) = result {
                let e = e.to_string();
                proptest::prop_assert!(e.starts_with("filemrd.toml: "), "{}", e);
                proptest::prop_assert!(e.len() > "filemrd.toml: ".len() + 5, "{}", e);
            }
        }
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
        let e = check(&GOOD.replace("\"/tmp\"", "\"tmp\""));
        assert!(e.contains("export[0].path") && e.contains("relative"), "{e}");
        // The host has no RDMA device at all.
        let e = check(&GOOD.replace("rxe0", "mlx5_99"));
        assert!(e.contains("device") && e.contains("mlx5_99"), "{e}");
    }
}
