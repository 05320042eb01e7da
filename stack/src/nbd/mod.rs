//! NBD, the wire protocol of the fabric (spec \[046\]): the codec and the
//! client side.
//!
//! The client, [`NbdDev`], is the driver behind a *remote reference* (spec
//! \[0109\]–\[0110\]): a tier-2 object's link to a tier-1 object that lives in a
//! peer storage processor. It lives here, with the other drivers, because a
//! volume tree holds it as a leaf next to local partitions
//! ([`crate::remote`]); the server side is in the `tierblk-fabric` crate,
//! which shares this codec. See `fabric/README.md` for the exact wire subset.
//!
//! * [`proto`]: the wire format as pure encoders/decoders over byte slices,
//!   with explicit limits; never panics on any input.
//! * [`client`]: [`NbdDev`], one NBD connection whose socket I/O goes through
//!   the owning thread's [`Ring`](crate::Ring).
//! * [`auth`]: the cluster [`Secret`] and the challenge-response with which
//!   peers authenticate each other (options of ours, see [`proto`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

pub mod auth;
pub mod client;
pub mod proto;

pub use auth::{AuthError, Secret};
pub use client::{
    control, list_exports, list_exports_timeout, list_exports_with, ClientError, ExportInfo, NbdDev,
};

/// Where an NBD endpoint listens / is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NbdAddr {
    /// A Unix stream socket path (peers on the same machine).
    Unix(PathBuf),
    /// A TCP address (peers on other machines).
    Tcp(SocketAddr),
}

impl fmt::Display for NbdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            NbdAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl FromStr for NbdAddr {
    type Err = String;

    /// `unix:/path` or `tcp:HOST:PORT` (what [`fmt::Display`] writes).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(format!("endpoint {s:?}: empty socket path"));
            }
            Ok(NbdAddr::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            a.parse()
                .map(NbdAddr::Tcp)
                .map_err(|e| format!("endpoint {s:?}: {e} (expected tcp:IP:PORT)"))
        } else {
            Err(format!(
                "endpoint {s:?}: expected unix:/path/to/socket or tcp:IP:PORT"
            ))
        }
    }
}

impl NbdAddr {
    /// The NBD URI (as understood by libnbd and qemu) of `export` at this
    /// address, e.g. `nbd+unix:///disk?socket=/run/x.sock` or
    /// `nbd://127.0.0.1:10809/disk`.
    pub fn uri(&self, export: &str) -> String {
        match self {
            NbdAddr::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
            NbdAddr::Tcp(a) => format!("nbd://{a}/{export}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for s in [
            "unix:/run/tierblk/a.sock",
            "tcp:127.0.0.1:10809",
            "tcp:[::1]:7",
        ] {
            let a: NbdAddr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        for bad in [
            "",
            "unix:",
            "tcp:localhost",
            "tcp:1.2.3.4",
            "/run/x.sock",
            "udp:1.2.3.4:5",
        ] {
            assert!(bad.parse::<NbdAddr>().is_err(), "{bad:?} accepted");
        }
    }
}
