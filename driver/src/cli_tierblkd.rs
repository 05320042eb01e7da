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
    /// Keep each ublk queue's thread on the CPUs the kernel maps to its hardware queue (libublk's default). Without it a queue thread may run on any CPU the daemon may, so that it need not share one CPU with the application submitting to it (see docs/ADMIN.md).
    #[arg(long)]
    pub pin_queues: bool,
    /// Keep the ublk queues' I/O buffers (512 KiB per tag) out of transparent huge pages (MADV_NOHUGEPAGE): resident only where requests touched them, for hosts short of memory; large sequential I/O is slower (see docs/ADMIN.md).
    #[arg(long)]
    pub no_huge_buffers: bool,
    /// Copy every request's data through the tags' buffers, even where the kernel's ublk driver offers zero copy (UBLK_F_AUTO_BUF_REG with UBLK_F_USER_COPY, Linux 6.16 on), which is used by default for a volume whose tree is local when it comes online (see docs/ADMIN.md).
    #[arg(long)]
    pub no_zero_copy: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9101 (off by default).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Re-add a failed ALU that appears again (the periodic scan every 5 s, or `alu scan`) without asking, as `tierblk alu readd` would.
    #[arg(long)]
    pub auto_reclaim: bool,
    /// Run as storage processor NAME among peers: serve this SP's ALUs on the fabric and take the role (master or peer) the election gives it. Without it, tierblkd runs alone.
    #[arg(long, value_name = "NAME")]
    pub sp: Option<String>,
    /// Fabric endpoint to serve on: unix:/path or tcp:IP:PORT (repeatable: a second endpoint is a redundant path).
    #[arg(long = "listen", value_name = "ENDPOINT")]
    pub listen: Vec<String>,
    /// A peer SP: NAME=ENDPOINT[,ENDPOINT...] (repeatable), its endpoints in order of preference.
    #[arg(long = "peer", value_name = "NAME=ENDPOINTS")]
    pub peers: Vec<String>,
    /// Take leadership from etcd (http://IP:PORT) instead of the election rule: for SPs on several machines.
    #[arg(long, value_name = "URL")]
    pub etcd: Option<String>,
    /// File holding the cluster secret peers authenticate with (at least 16 bytes); required with --sp.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}
