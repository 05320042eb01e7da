//! tierblk on-disk metadata ("MDR", spec [054]–[063]).
//!
//! Every ALU (a block device claimed by the cluster) carries a Meta Data Region:
//! a directory with the cluster signature ([058], [`mdr`]), a duplicated label
//! directory that partitions the data area ([057], [`label`]), a duplicated object
//! database holding the ALU object, partition objects and a copy of every volume
//! top object that has a partition on the ALU ([056], [059], [`objdb`]), and on up
//! to six "boot set" members (the spec's GS ALU set) the cluster-wide boot list
//! ([059], [`bootset`]). [`store::Store`] ties these together: it scans disks,
//! chooses the committed image and performs the crash-safe commit protocols
//! described in `docs/FORMAT.md`.
//!
//! The crate is pure and synchronous; all I/O goes through the [`disk::Disk`] trait.

pub mod archive;
pub mod bootset;
pub(crate) mod codec;
pub mod disk;
pub mod error;
pub mod foreign;
pub mod label;
pub mod mdr;
pub mod objdb;
pub mod store;
pub mod testing;
pub mod types;

pub use archive::ArchiveRecord;
pub use disk::{Disk, FileDisk, MemDisk};
pub use error::{FormatError, MetaError};
pub use foreign::detect_foreign;
pub use store::{AluState, AluStatus, ArchiveEntry, OpenReport, RestorePlan, Store};
pub use types::{
    valid_sp_name, AluRecord, ClusterImage, ClusterSig, Exposure, Extent, Job, JobKind, JobState,
    Layout, LayoutKind, LegacyVol, MemberHealth, Schedule, Segment, SnapshotOf, Uuid, VolumeDef,
};
