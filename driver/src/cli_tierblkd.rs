//! tierblkd's command line, here so that `tierblk gen` can render its man
//! page and completions.

use clap::Parser;
use std::path::PathBuf;

/// The tierblk daemon: scans its ALUs, loads the object database from them,
/// and exposes every complete volume as /dev/ublkbN.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Example:\n  tierblkd --alu /dev/vdb --alu /dev/vdc --cluster lab\n\nSIGTERM stops every volume cleanly. See docs/ADMIN.md."
)]
pub struct Args {
    /// Config file (TOML); a missing default file is ignored.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An ALU to scan: a disk, partition or image file (repeatable; adds to the config's list).
    #[arg(long = "alu", value_name = "PATH")]
    pub alus: Vec<PathBuf>,
    /// Control socket (root-only).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Cluster name written into the signature of ALUs this daemon claims.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// ublk queues per volume (default: CPUs, at most 4).
    #[arg(long)]
    pub queues: Option<u16>,
    /// Queue depth per ublk queue.
    #[arg(long)]
    pub depth: Option<u16>,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9101 (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}
