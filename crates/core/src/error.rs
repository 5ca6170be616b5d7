//! The one error type of pgproof-core.
//!
//! Error policy: every message is one line that says what went wrong *and* what to do
//! about it, and never contains a password, key or token. The variant is the kind a
//! caller can act on (retry, fix config, give up on a corrupted object, …).

use std::io;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by what a caller can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is wrong or incomplete: fix the named key or file.
    #[error("{0}")]
    Config(String),
    /// An object, backup, database or file that was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something that must be created fresh already exists (create-only objects,
    /// restore targets that hold data).
    #[error("{0}")]
    AlreadyExists(String),
    /// Credentials or keys were refused or do not match (database auth, age identity).
    #[error("{0}")]
    Auth(String),
    /// The age identities given cannot open the backup (encrypted to other keys).
    #[error("{0}")]
    Key(String),
    /// Data failed an integrity check: hash mismatch, corruption, truncation.
    /// Retrying will not help; the object cannot be trusted.
    #[error("{0}")]
    Integrity(String),
    /// A failure that may go away on retry (network, server restart, timeouts).
    #[error("{0}")]
    Transient(String),
    /// An external program (pg_dump, pg_restore, psql, initdb, …) failed or is missing.
    #[error("{0}")]
    Tool(String),
    /// PostgreSQL refused a statement or could not be reached.
    #[error("{0}")]
    Database(String),
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What pgproof was doing, naming the path involved.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done. An [`Error`] that travelled through
    /// an `io::Error` (a stream bridged into `std::io::Read`) is unwrapped, not nested.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        match Self::unwrap_io(source) {
            Ok(inner) => inner,
            Err(source) => Error::Io {
                context: context.into(),
                source,
            },
        }
    }

    /// Returns the pgproof [`Error`] carried inside an `io::Error`, or the `io::Error`
    /// itself when it carries none.
    pub fn unwrap_io(e: io::Error) -> std::result::Result<Error, io::Error> {
        if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Err(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(inner)) => Ok(*inner),
            Some(Err(other)) => Err(io::Error::new(kind, other)),
            None => Err(io::Error::from(kind)),
        }
    }

    /// True when retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient(_))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::other(e)
    }
}
