//! tierblkd: the tierblk daemon (storage processor, master and coordinator in
//! one process). Runs in the foreground and logs to stderr.

use anyhow::{Context, Result};
use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use tierblk::cli_tierblkd::Args;
use tierblk::config::{self, DEFAULT_CLUSTER, DEFAULT_CONFIG};
use tierblk::daemon::{Config, Daemon};
use tierblk::proto::{Payload, Request, DEFAULT_SOCKET};
use tierblk::server;

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
        pin_queues: args.pin_queues || file.pin_queues,
        huge_buffers: !(args.no_huge_buffers || file.no_huge_buffers),
        zero_copy: !(args.no_zero_copy || file.no_zero_copy),
        auto_reclaim: args.auto_reclaim || file.auto_reclaim,
        sp: sp_config(
            args.sp.or(file.sp),
            [file.listen, args.listen].concat(),
            [file.peers, args.peers].concat(),
            args.secret_file.or(file.secret_file),
            args.etcd.or(file.etcd),
        )?,
    };
    let metrics = args.metrics.or(file.metrics);
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
    let metrics = metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("metrics: cannot listen on {addr}"))
        })
        .transpose()?;
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
    if let Some(l) = metrics {
        let registry = daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats_registry();
        tracing::info!(addr = %l.local_addr()?, "serving metrics");
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || tierblk::stats::serve_metrics(l, registry))
            .context("cannot start the metrics thread")?;
    }
    tracing::info!(socket = %socket.display(), "ready");
    // Every volume that can come online is online (Daemon::start exposes
    // them before it returns) and the control socket is listening: tell
    // systemd (Type=notify), so that local-fs-pre.target and the mounts of
    // /dev/tierblk/NAME wait for this.
    let online = match daemon
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .handle(Request::VolList)
    {
        Ok(Payload::Volumes(v)) => v.iter().filter(|v| v.device.is_some()).count(),
        _ => 0,
    };
    sd_notify(&format!("READY=1\nSTATUS={online} volume(s) online\n"));
    server::serve(listener, &daemon, stop);
    sd_notify("STOPPING=1\nSTATUS=stopping volumes\n");
    daemon.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}

/// The SP side of the configuration: all of it or none of it.
fn sp_config(
    name: Option<String>,
    listen: Vec<String>,
    peers: Vec<String>,
    secret: Option<PathBuf>,
    etcd: Option<String>,
) -> Result<Option<tierblk::sp::SpConfig>> {
    let Some(name) = name else {
        anyhow::ensure!(
            listen.is_empty() && peers.is_empty() && etcd.is_none(),
            "--listen, --peer and --etcd need --sp NAME"
        );
        return Ok(None);
    };
    anyhow::ensure!(
        tierblk::sp::valid_sp_name(&name),
        "sp {name:?}: name must be 1-32 letters, digits, '-' or '_'"
    );
    anyhow::ensure!(
        !listen.is_empty(),
        "sp {name}: --listen ENDPOINT is required"
    );
    let listen = listen
        .iter()
        .map(|l| l.parse().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let peers = peers
        .iter()
        .map(|p| tierblk::sp::parse_peer(p).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    if let Some(p) = peers.iter().find(|p| p.name == name) {
        anyhow::bail!("peer {}: that is this SP's own name", p.name);
    }
    let secret = secret.with_context(|| format!("sp {name}: --secret-file is required"))?;
    let secret = tierblk_stack::nbd::auth::Secret::from_file(&secret)?;
    Ok(Some(tierblk::sp::SpConfig {
        name,
        listen,
        peers,
        secret: Some(Arc::new(secret)),
        etcd: etcd
            .map(|e| e.parse().map_err(anyhow::Error::msg))
            .transpose()?,
    }))
}

/// Send MSG to systemd's notification socket, if `$NOTIFY_SOCKET` names one
/// (a path, or `@name` for an abstract socket); best effort, as
/// sd_notify(3).
fn sd_notify(msg: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = PathBuf::from(path);
    let addr = match path.to_str().and_then(|p| p.strip_prefix('@')) {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(msg.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(socket = %path.display(), "cannot notify systemd: {e}");
    }
}
