//! `rdma://host:port/export/path` URLs of the CLI.

use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed URL: the server's RDMA CM address and the path within its exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaUrl {
    /// The server.
    pub server: SocketAddr,
    /// `export/relative/path`.
    pub path: String,
}

/// The port when the URL has none.
pub const DEFAULT_PORT: u16 = 20049;

impl std::str::FromStr for RdmaUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<RdmaUrl, String> {
        let rest = s.strip_prefix("rdma://").ok_or_else(|| format!("{s}: not an rdma:// URL"))?;
        let (host, path) = rest.split_once('/').ok_or_else(|| format!("{s}: no export/path"))?;
        if path.is_empty() || !path.contains('/') || path.ends_with('/') {
            return Err(format!("{s}: the path must be export/path/to/file"));
        }
        let with_port = if host.starts_with('[') {
            if host.contains("]:") { host.to_string() } else { format!("{host}:{DEFAULT_PORT}") }
        } else if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:{DEFAULT_PORT}")
        };
        let server = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{s}: {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{s}: {host} has no address"))?;
        Ok(RdmaUrl { server, path: path.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why_not() {
        let u: RdmaUrl = "rdma://10.0.0.1:7000/data/a/b".parse().unwrap();
        assert_eq!(u.server, "10.0.0.1:7000".parse().unwrap());
        assert_eq!(u.path, "data/a/b");
        let u: RdmaUrl = "rdma://10.0.0.1/data/f".parse().unwrap();
        assert_eq!(u.server.port(), DEFAULT_PORT);
        let u: RdmaUrl = "rdma://[::1]/data/f".parse().unwrap();
        assert_eq!(u.server, "[::1]:20049".parse().unwrap());
        for bad in
            ["http://x/data/f", "rdma://10.0.0.1", "rdma://10.0.0.1/data", "rdma://10.0.0.1/data/"]
        {
            assert!(bad.parse::<RdmaUrl>().is_err(), "{bad}");
        }
    }
}
