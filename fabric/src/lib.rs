//! The fabric data path of tierblk: block I/O between storage processors
//! speaks NBD.
//!
//! A tier-1 object (partition, snapshot) that a peer needs is *exposed* by the
//! storage processor owning its ALU and reached by the peer through a *remote
//! reference* (spec \[046\] fabric, \[0109\]–\[0110\] remote references). The wire
//! protocol is NBD, fixed newstyle, as specified in
//! <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>, so
//! standard tools (qemu-nbd, nbdkit, libnbd's nbdinfo/nbdcopy/nbdublk)
//! interoperate with both ends. See `fabric/README.md` for the exact subset.
//!
//! * [`proto`]: the wire format as pure encoders/decoders over byte slices,
//!   with explicit limits; never panics on any input.
//! * [`server`]: [`NbdServer`] exports named [`BlockDev`](tierblk_stack::BlockDev)s
//!   over Unix sockets and/or TCP; one thread, one
//!   [`LocalRing`](tierblk_stack::uring::LocalRing) and one export instance per
//!   connection, so nothing is shared per I/O.
//! * [`client`]: [`NbdDev`] is the remote reference: a `BlockDev` that is one
//!   NBD connection whose socket I/O goes through the owning thread's
//!   [`Ring`](tierblk_stack::Ring) (a ublk queue thread owns its own
//!   connections to each peer: no cross-thread hop, no lock per I/O).
//!
//! Dependency direction: driver -> fabric -> stack -> meta.

#![warn(missing_docs)]

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

pub mod client;
pub mod proto;
pub mod server;

pub use client::{list_exports, ClientError, NbdDev};
pub use server::{Export, NbdServer, ServerError};

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
