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
//! * [`proto`] (re-exported from `tierblk_stack::nbd`): the wire format as
//!   pure encoders/decoders over byte slices, with explicit limits; never
//!   panics on any input.
//! * [`server`]: [`NbdServer`] exports named [`BlockDev`](tierblk_stack::BlockDev)s
//!   over Unix sockets and/or TCP; one thread, one
//!   [`LocalRing`](tierblk_stack::uring::LocalRing) and one export instance per
//!   connection, so nothing is shared per I/O. Each connection is pipelined:
//!   several requests in flight on its ring, each answered as it completes.
//! * [`client`] (re-exported from `tierblk_stack::nbd`, since a volume tree
//!   holds it as a leaf): [`NbdDev`] is the remote reference: a `BlockDev` that is one
//!   NBD connection whose socket I/O goes through the owning thread's
//!   [`Ring`](tierblk_stack::Ring) (a ublk queue thread owns its own
//!   connections to each peer: no cross-thread hop, no lock per I/O).
//!
//! Dependency direction: driver -> fabric -> stack -> meta.

#![warn(missing_docs)]

pub mod server;

pub use server::{Catalog, Export, NbdServer, ServerConfig, ServerError};
pub use tierblk_stack::nbd::{
    auth, client, list_exports, list_exports_with, proto, AuthError, ClientError, NbdAddr, NbdDev,
    Secret,
};
