//! tierblk's daemon and admin CLI as a library: the binaries are thin.
//!
//! - [`daemon`]: the embedded default (storage processor + master + coordinator)
//! - [`ublk`]: the frontend that exposes volumes as `/dev/ublkbN`
//! - [`jobs`]: rebuild and scrub threads with persisted checkpoints
//! - [`server`] / [`client`] / [`proto`]: the root-only control API
//! - [`planner`]: turns a request into pieces before anything is written
//! - [`config`], [`size`]: the daemon's config file and human sizes

pub mod client;
pub mod config;
pub mod daemon;
pub mod jobs;
pub mod planner;
pub mod proto;
pub mod server;
pub mod size;
pub mod table;
pub mod ublk;
