//! `filemrd`: exports directories to RDMA peers through the layout protocol, serves
//! Prometheus metrics, runs under systemd (`Type=notify`).
//!
//! SIGTERM or SIGINT: recall every layout, wait up to `shutdown_grace_ms` for the peers to
//! return them, release every lease, exit 0. SIGHUP: re-read the configuration and apply
//! its exports. The device removed: every layout is lost (peers told `DeviceGone`), exit
//! 75 (`EX_TEMPFAIL`) so the removal can finish (librdmacm keeps a device open until the
//! process exits) and systemd restarts the daemon, which waits `device_wait_ms` for it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use filemrd::config::Config;
use filemrd::daemon::Daemon;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

/// Export files to RDMA peers, kept safe by file leases.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The configuration file (TOML; see deploy/filemrd.toml).
    #[arg(long, short, default_value = "/etc/filemr/filemrd.toml")]
    config: PathBuf,
    /// Check the configuration and exit (0 if it is valid).
    #[arg(long)]
    check_config: bool,
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FILEMR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("filemrd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: configuration OK", args.config.display());
        return ExitCode::SUCCESS;
    }
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("filemrd: tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    match rt.block_on(run(args.config, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filemrd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `EX_TEMPFAIL` from sysexits.h: try again later (the device is gone for now).
const EX_TEMPFAIL: u8 = 75;

async fn run(path: PathBuf, cfg: Config) -> Result<(), String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP: {e}"))?;
    let mut daemon = Daemon::start(cfg).await.map_err(|e| e.to_string())?;
    notify(&[NotifyState::Ready, NotifyState::Status(&daemon.status())]);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut device_check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = device_check.tick() => {
                if daemon.manager().device_lost() {
                    // Every region is already lost, with peers' writes committed. No drain:
                    // connection teardown on a device being removed can block, and the
                    // removal itself waits for this process's device files. Exiting
                    // closes them all (and releases every lease).
                    tracing::error!("the RDMA device was removed: every layout is lost; exiting so the removal can finish");
                    notify(&[NotifyState::Stopping, NotifyState::Status("device removed")]);
                    std::process::exit(EX_TEMPFAIL.into());
                }
            }
            _ = hup.recv() => {
                notify(&[NotifyState::Reloading]);
                match Config::load(&path).map_err(|e| e.to_string()).and_then(|c| daemon.reload(c).map_err(|e| e.to_string())) {
                    Ok(()) => tracing::info!(config = %path.display(), "reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused; keeping the running configuration"),
                }
                notify(&[NotifyState::Ready, NotifyState::Status(&daemon.status())]);
            }
            _ = tick.tick() => notify(&[NotifyState::Status(&daemon.status())]),
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("recalling layouts")]);
    tracing::info!("stopping: recalling every layout");
    let (returned, lost) = tokio::task::spawn_blocking(move || {
        let done = daemon.drain();
        drop(daemon);
        done
    })
    .await
    .map_err(|e| format!("drain: {e}"))?;
    tracing::info!(returned, lost, "stopped; leases released");
    Ok(())
}
