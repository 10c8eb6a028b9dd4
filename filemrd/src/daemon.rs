//! The daemon's life: start (manager, layout server, `/metrics`), reload exports, drain
//! on shutdown. `main.rs` wires it to signals and systemd.

use std::net::SocketAddr;
use std::sync::Arc;

use filemr::layout::{LayoutServer, ServerConfig};
use filemr::region::Manager;
use prometheus_client::registry::Registry;

use crate::config::Config;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The region manager (device, lease engine).
    #[error("device {device}: {source}")]
    Manager {
        /// The configured device.
        device: String,
        /// Why.
        #[source]
        source: filemr::region::RegionError,
    },
    /// The layout server (exports, RDMA CM listener).
    #[error("layout server on {listen}: {source}")]
    Layout {
        /// The configured address.
        listen: SocketAddr,
        /// Why.
        #[source]
        source: filemr::layout::LayoutError,
    },
    /// The metrics endpoint.
    #[error("{0}")]
    Metrics(std::io::Error),
}

/// A running daemon.
pub struct Daemon {
    cfg: Config,
    server: Option<LayoutServer>,
    mgr: Manager,
    metrics: SocketAddr,
    http: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// Opens the device, starts the layout server and `/metrics`. Inside a tokio runtime.
    pub async fn start(cfg: Config) -> Result<Daemon, StartError> {
        let mut registry = Registry::default();
        filemr::metrics::register_build_info(&mut registry);
        // Waiting for a missing device blocks: off the runtime's workers.
        let mgr = tokio::task::block_in_place(|| Manager::new(cfg.manager(), &mut registry))
            .map_err(|source| StartError::Manager { device: cfg.device.clone(), source })?;
        let server_cfg = ServerConfig::new(cfg.listen, cfg.exports());
        let server = LayoutServer::start(mgr.clone(), server_cfg, &mut registry)
            .map_err(|source| StartError::Layout { listen: cfg.listen, source })?;
        let (metrics, http) = crate::http::serve(cfg.metrics, Arc::new(registry))
            .await
            .map_err(StartError::Metrics)?;
        tracing::info!(
            device = %cfg.device,
            listen = %server.local_addr(),
            %metrics,
            exports = cfg.exports.len(),
            "filemrd ready"
        );
        Ok(Daemon { cfg, server: Some(server), mgr, metrics, http })
    }

    /// Where peers connect.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(LayoutServer::local_addr)
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// A one-line status for systemd.
    pub fn status(&self) -> String {
        match &self.server {
            Some(s) => format!(
                "serving {} layout(s) to {} peer(s)",
                s.metrics().layouts.get(),
                s.metrics().connected.get()
            ),
            None => "stopped".into(),
        }
    }

    /// Applies `new`'s exports (other keys need a restart: reported, not applied).
    pub fn reload(&mut self, new: Config) -> Result<(), filemr::layout::LayoutError> {
        let Some(server) = &self.server else { return Ok(()) };
        server.set_exports(&new.exports())?;
        let mut unchanged = new.clone();
        unchanged.exports = self.cfg.exports.clone();
        if unchanged != self.cfg {
            tracing::warn!("only exports are reloaded; restart filemrd for the other changes");
        }
        self.cfg.exports = new.exports;
        Ok(())
    }

    /// Recalls every layout, gives peers the configured grace to return them, then
    /// stops serving; the leases are released when the daemon is dropped. Returns
    /// (returned, lost). Blocking.
    pub fn drain(&mut self) -> (usize, usize) {
        let Some(server) = self.server.take() else { return (0, 0) };
        let done = server.drain(self.cfg.shutdown_grace());
        server.shutdown();
        done
    }

    /// The region manager.
    pub fn manager(&self) -> &Manager {
        &self.mgr
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.http.abort();
    }
}
