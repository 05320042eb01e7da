//! tierblk's daemon and admin CLI as a library: the binaries are thin.
//!
//! - [`daemon`]: the embedded default (storage processor + master + coordinator)
//! - [`ublk`]: the frontend that exposes volumes as `/dev/ublkbN`
//! - [`top`]: what a queue serves: a volume as a snapshot origin, or a
//!   read-only snapshot view, behind the volume's suspend/resume gate
//! - [`events`]: the event log behind `tierblk events [--follow]`
//! - [`jobs`]: rebuild and scrub threads with persisted checkpoints
//! - [`server`] / [`client`] / [`proto`]: the root-only control API
//! - [`stats`]: per-volume I/O counters and latency histograms, Prometheus text
//! - [`status`]: the one-screen assessment behind `tierblk status`
//! - [`planner`]: turns a request into pieces before anything is written
//! - [`clock`]: Unix time now and UTC dates for people
//! - [`config`], [`size`]: the daemon's config file and human sizes
//! - [`udev`]: `tierblk udev-name`, which names `/dev/ublkbN` for udev
//! - [`docgen`], [`cli_tierblkd`]: man pages and shell completions from the
//!   clap definitions (`tierblk gen`)

pub mod cli_tierblkd;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod docgen;
pub mod etcd;
pub mod events;
pub mod jobs;
pub mod planner;
pub mod proto;
pub mod server;
pub mod size;
pub mod sp;
pub mod stats;
pub mod status;
pub mod table;
pub mod top;
pub mod ublk;
pub mod udev;
