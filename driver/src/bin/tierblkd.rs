//! tierblkd: the tierblk daemon (storage processor, master and coordinator in
//! one process). Runs in the foreground and logs to stderr.

use anyhow::{Context, Result};
use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use tierblk::config::{self, DEFAULT_CLUSTER, DEFAULT_CONFIG};
use tierblk::daemon::{Config, Daemon};
use tierblk::proto::DEFAULT_SOCKET;
use tierblk::server;

/// The tierblk daemon: scans its ALUs, loads the object database from them,
/// and exposes every complete volume as /dev/ublkbN.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Example:\n  tierblkd --alu /dev/vdb --alu /dev/vdc --cluster lab\n\nSIGTERM stops every volume cleanly. See docs/ADMIN.md."
)]
struct Args {
    /// Config file (TOML); a missing default file is ignored.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// An ALU to scan: a disk, partition or image file (repeatable; adds to the config's list).
    #[arg(long = "alu", value_name = "PATH")]
    alus: Vec<PathBuf>,
    /// Control socket (root-only).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Cluster name written into the signature of ALUs this daemon claims.
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// ublk queues per volume (default: CPUs, at most 4).
    #[arg(long)]
    queues: Option<u16>,
    /// Queue depth per ublk queue.
    #[arg(long)]
    depth: Option<u16>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIERBLK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("tierblkd: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = config::load(&path, explicit)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut alus = file.alus;
    alus.extend(args.alus);
    let cfg = Config {
        cluster: args
            .cluster
            .or(file.cluster)
            .unwrap_or_else(|| DEFAULT_CLUSTER.to_string()),
        alus,
        socket: args
            .socket
            .or(file.socket)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        queues: args
            .queues
            .or(file.queues)
            .unwrap_or(cpus.clamp(1, 4) as u16),
        depth: args.depth.or(file.depth).unwrap_or(128),
    };
    anyhow::ensure!(
        (1..=32).contains(&cfg.queues) && (1..=4096).contains(&cfg.depth),
        "queues must be 1..=32 and depth 1..=4096"
    );
    // Block the stop signals before any other thread exists, so that only the
    // signal thread ever sees them.
    let stop = Arc::new(AtomicBool::new(false));
    server::install_signal_thread(cfg.socket.clone(), stop.clone())
        .context("cannot install signal handling")?;
    let listener = server::bind(&cfg.socket)?;
    let socket = cfg.socket.clone();
    let (events, incoming) = mpsc::channel();
    let daemon = Arc::new(Mutex::new(
        Daemon::start(cfg, events).map_err(anyhow::Error::msg)?,
    ));
    // Failures found on the data path are persisted here, off the hot path.
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            for ev in incoming {
                d.lock().unwrap_or_else(|p| p.into_inner()).on_event(ev);
            }
        })
        .context("cannot start the event thread")?;
    tracing::info!(socket = %socket.display(), "ready");
    server::serve(listener, &daemon, stop);
    daemon.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}
