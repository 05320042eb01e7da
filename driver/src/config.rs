//! `/etc/tierblk/tierblkd.toml`: defaults the command line can extend.
//!
//! ```toml
//! cluster = "lab"
//! alus = ["/dev/vdb", "/var/lib/tierblk/alu0.img"]
//! socket = "/run/tierblk/control.sock"
//! queues = 2
//! depth = 128
//! pin_queues = false   # true: queue threads stay on their queue's CPUs
//! no_huge_buffers = false  # true: I/O buffers out of transparent huge pages
//! no_zero_copy = false     # true: copy every request, even where zero copy works
//! # One SP among peers (optional):
//! sp = "sp1"
//! listen = ["unix:/run/tierblk/sp1.sock", "tcp:10.0.0.1:10809"]
//! peers = ["sp2=unix:/run/tierblk/sp2.sock,tcp:10.0.0.2:10809"]
//! secret_file = "/etc/tierblk/secret"
//! etcd = "http://10.0.0.9:2379"   # across machines: leadership from etcd
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const DEFAULT_CONFIG: &str = "/etc/tierblk/tierblkd.toml";
pub const DEFAULT_CLUSTER: &str = "tierblk";

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub cluster: Option<String>,
    #[serde(default)]
    pub alus: Vec<PathBuf>,
    pub socket: Option<PathBuf>,
    pub queues: Option<u16>,
    pub depth: Option<u16>,
    /// Keep ublk queue threads on their hardware queue's CPUs (`--pin-queues`).
    #[serde(default)]
    pub pin_queues: bool,
    /// Keep the ublk queues' I/O buffers out of transparent huge pages
    /// (`--no-huge-buffers`).
    #[serde(default)]
    pub no_huge_buffers: bool,
    /// Copy every request's data, even where the kernel offers zero copy
    /// (`--no-zero-copy`).
    #[serde(default)]
    pub no_zero_copy: bool,
    /// Serve Prometheus metrics on this address (`"127.0.0.1:9101"`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Re-add failed ALUs that come back (`--auto-reclaim`).
    #[serde(default)]
    pub auto_reclaim: bool,
    /// This daemon's SP name among peers (`--sp`).
    pub sp: Option<String>,
    /// Fabric endpoints (`--listen`).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Peers, `NAME=ENDPOINT[,ENDPOINT...]` (`--peer`).
    #[serde(default)]
    pub peers: Vec<String>,
    /// The cluster secret's file (`--secret-file`).
    pub secret_file: Option<PathBuf>,
    /// etcd endpoint for the master election (`--etcd`).
    pub etcd: Option<String>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {0}: {1}")]
    Read(String, std::io::Error),
    #[error("config {0}: {1}")]
    Parse(String, String),
}

/// Load the config file; a missing default file is an empty config, a missing
/// file named on the command line is an error.
pub fn load(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&name, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(e) => Err(ConfigError::Read(name, e)),
    }
}

pub fn parse(name: &str, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse(name.to_string(), e.message().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c = parse(
            "t",
            "cluster = \"lab\"\nalus = [\"/dev/vdb\"]\nqueues = 2\n",
        )
        .unwrap();
        assert_eq!(c.cluster.as_deref(), Some("lab"));
        assert_eq!(c.alus, vec![PathBuf::from("/dev/vdb")]);
        assert_eq!(c.queues, Some(2));
        assert!(!c.pin_queues, "pin_queues defaults to off");
        assert!(parse("t", "pin_queues = true\n").unwrap().pin_queues);
        assert!(
            !c.no_huge_buffers,
            "I/O buffers may be in huge pages by default"
        );
        assert!(
            parse("t", "no_huge_buffers = true\n")
                .unwrap()
                .no_huge_buffers
        );
        assert!(
            !c.no_zero_copy,
            "zero copy where the kernel offers it, by default"
        );
        assert!(parse("t", "no_zero_copy = true\n").unwrap().no_zero_copy);
        let e = parse("t", "clustr = \"lab\"\n").unwrap_err();
        assert!(e.to_string().contains("clustr"), "{e}");
    }

    #[test]
    fn missing_default_is_empty_but_missing_explicit_is_an_error() {
        let p = Path::new("/nonexistent/tierblkd.toml");
        assert_eq!(load(p, false).unwrap(), FileConfig::default());
        assert!(load(p, true).is_err());
    }
}
