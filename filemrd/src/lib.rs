//! filemr's daemon and CLI, as a library their binaries share: the daemon's
//! configuration, the `/metrics` endpoint, `rdma://` URLs and the daemon's life
//! (start, reload, drain).

pub mod config;
pub mod daemon;
pub mod http;
pub mod url;
