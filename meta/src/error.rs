//! Error types: [`FormatError`] for a single on-disk structure that failed to decode,
//! [`MetaError`] for store-level failures (messages name the ALU, region and action).

use thiserror::Error;

/// Why one copy of an on-disk structure was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// The block is all zeroes (never written or wiped).
    #[error("blank")]
    Blank,
    #[error("bad magic")]
    BadMagic,
    #[error("bad checksum")]
    BadChecksum,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("unknown incompatible feature flags {0:#x}")]
    Incompat(u64),
    #[error("copy read at offset {found:#x} says it belongs at {claimed:#x}")]
    WrongOffset { found: u64, claimed: u64 },
    #[error("truncated structure")]
    Truncated,
    #[error("invalid {0}")]
    Invalid(String),
    #[error("read error: {0}")]
    Io(String),
}

/// Store-level error. The message always names the object and the action.
#[derive(Debug, Error)]
pub enum MetaError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Metadata that could not be decoded on any copy.
    #[error("{0}")]
    Corrupt(String),
    /// Claim found someone else's data (a filesystem, partition table, ...).
    #[error("alu {path}: {what} found: refusing to overwrite it")]
    ForeignData { path: String, what: String },
    /// The operation is not allowed in the current state (e.g. other cluster, damaged).
    #[error("{0}")]
    Refused(String),
    /// Bad argument (name, size, plan).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NoSpace(String),
}

impl MetaError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        MetaError::Io {
            what: what.into(),
            source,
        }
    }
}
