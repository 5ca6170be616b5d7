//! The one error type of pgproof: a kind a caller can act on, the operation and object
//! it concerns, and its source.
//!
//! # Error policy
//!
//! - Every message is one line that says what went wrong *and* what to do about it.
//! - No message contains a password, key or token.
//! - The [`ErrorKind`] says what a caller can do: fix the configuration, retry, give up
//!   on a damaged object, install a tool, …
//! - [`Error::about_backup`] separates a verdict on a backup (its bytes are damaged, or
//!   they are intact and still do not restore) from a problem of the environment (a
//!   missing tool, an unreachable server, a wrong key). Only the first may ever be
//!   recorded as a failed verification.
//! - Library errors name the library's own options ([`Setting`]), never a CLI flag or
//!   config key: a front end translates a [`Setting`] into its own words.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by what a caller can do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration or a caller's argument is wrong or incomplete.
    Config,
    /// An object, backup, database or file that was asked for does not exist.
    NotFound,
    /// Something that must be created fresh already exists.
    AlreadyExists,
    /// Credentials were refused (database authentication, object-store credentials).
    Auth,
    /// The age identities given cannot open the backup (encrypted to other keys).
    Key,
    /// A backup failed an integrity check: hash mismatch, corruption, truncation, an
    /// object its manifest lists is missing. Retrying will not help.
    Integrity,
    /// A restore program was fed a backup whose bytes matched its manifest and still
    /// failed: the backup does not restore into that target.
    Rejected,
    /// A failure that may go away if the same operation is tried again.
    Transient,
    /// A transient failure that outlasted every retry the caller allowed.
    Exhausted,
    /// An external program (pg_dump, pg_restore, psql, initdb, …) is missing, cannot
    /// be started or failed for a reason outside the backup.
    Tool,
    /// PostgreSQL refused a statement or could not be reached.
    Database,
    /// The database role lacks a privilege the operation needs: grant it, or use
    /// another role.
    Permission,
    /// A local I/O operation failed.
    Io,
    /// The operation's [`Scope`](crate::scope::Scope) was cancelled; what it had
    /// started was stopped and undone.
    Cancelled,
}

impl ErrorKind {
    /// A short lowercase name (`integrity`, `not-found`, …) for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::NotFound => "not-found",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::Auth => "auth",
            ErrorKind::Key => "key",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Transient => "transient",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::Tool => "tool",
            ErrorKind::Database => "database",
            ErrorKind::Permission => "permission",
            ErrorKind::Io => "io",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A library option an error is about, so a front end can say which of its own keys
/// or flags to change (the library itself never names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// The directory of PostgreSQL client programs.
    PgBinDir,
    /// The age recipients backups are encrypted to.
    Recipients,
    /// The age identity file that opens backups.
    Identity,
    /// Whether an existing restore target may be replaced.
    Clean,
    /// Whether a restore may go into an existing database whose encoding or locale
    /// differs from the backup's.
    Force,
    /// Whether a restore may create the roles the backup needs.
    CreateRoles,
    /// Whether a restore may create roles with SUPERUSER, REPLICATION or BYPASSRLS.
    CreatePrivilegedRoles,
    /// The key this host signs catalog objects with.
    SigningKey,
    /// The public keys whose signatures are believed.
    TrustedKeys,
    /// Where a cluster restore creates a tablespace instead of its recorded location.
    TablespaceDir,
}

/// A pgproof error: see the [module documentation](self) for the policy.
pub struct Error {
    kind: ErrorKind,
    message: String,
    operation: Option<Cow<'static, str>>,
    object: Option<String>,
    setting: Option<Setting>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

macro_rules! constructors {
    ($($name:ident => $kind:ident),* $(,)?) => {
        $(
            #[doc = concat!("An error of kind [`ErrorKind::", stringify!($kind), "`].")]
            pub fn $name(message: impl Into<String>) -> Self {
                Self::new(ErrorKind::$kind, message)
            }
        )*
    };
}

impl Error {
    /// An error of `kind` with a one-line `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            operation: None,
            object: None,
            setting: None,
            source: None,
        }
    }

    constructors! {
        config => Config,
        not_found => NotFound,
        already_exists => AlreadyExists,
        auth => Auth,
        key => Key,
        integrity => Integrity,
        rejected => Rejected,
        transient => Transient,
        exhausted => Exhausted,
        tool => Tool,
        database => Database,
        permission => Permission,
    }

    /// Wraps an I/O error with what was being done. A pgproof [`Error`] that travelled
    /// through an `io::Error` (a stream bridged into `std::io::Read`) is unwrapped, not
    /// nested.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        match Self::unwrap_io(source) {
            Ok(inner) => inner,
            Err(source) => {
                let context = context.into();
                Self::new(ErrorKind::Io, format!("{context}: {source}")).with_source(source)
            }
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

    /// Names the operation that failed (`put`, `restore`, `fingerprint`, …).
    pub fn with_operation(mut self, operation: impl Into<Cow<'static, str>>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// Names the object concerned (a key, a backup id, a database).
    pub fn with_object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    /// Names the library option that would fix this.
    pub fn with_setting(mut self, setting: Setting) -> Self {
        self.setting = Some(setting);
        self
    }

    /// Keeps the underlying error (its text should already be in the message).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, one line, without the operation or object prefixes.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operation that failed, when known.
    pub fn operation(&self) -> Option<&str> {
        self.operation.as_deref()
    }

    /// The object concerned, when known.
    pub fn object(&self) -> Option<&str> {
        self.object.as_deref()
    }

    /// The library option that would fix this, when one would.
    pub fn setting(&self) -> Option<Setting> {
        self.setting
    }

    /// True when the error is a verdict on a backup (its bytes are damaged, or intact
    /// and rejected by the restore program); false when it is about the environment
    /// (tools, servers, keys, configuration, the network).
    pub fn about_backup(&self) -> bool {
        matches!(self.kind, ErrorKind::Integrity | ErrorKind::Rejected)
    }

    /// True when trying the same operation again may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl Clone for Error {
    /// The source, which need not be `Clone`, is kept as its text.
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            message: self.message.clone(),
            operation: self.operation.clone(),
            object: self.object.clone(),
            setting: self.setting,
            source: self.source.as_ref().map(|s| {
                Box::new(SourceText(s.to_string())) as Box<dyn std::error::Error + Send + Sync>
            }),
        }
    }
}

/// A cloned error's source, as text.
#[derive(Debug)]
struct SourceText(String);

impl fmt::Display for SourceText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceText {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Messages name objects, databases and paths that came from a sink or a
        // server: a control character in one must not reach a terminal raw.
        f.write_str(&printable(&self.message))
    }
}

/// `text` with every control character escaped (`\u{1b}`), so a name read from a
/// sink, a server or a config cannot move a terminal's cursor, hide text or end a
/// log line. Newlines are escaped too: a message is one line.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(op) = &self.operation {
            d.field("operation", op);
        }
        if let Some(object) = &self.object {
            d.field("object", object);
        }
        if let Some(setting) = &self.setting {
            d.field("setting", setting);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_terminal_without_control_characters() {
        let e = Error::not_found("no backup of app\u{1b}[2J\u{9b}31m\nX");
        let shown = e.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("app\\u{1b}[2J"), "{shown}");
        assert_eq!(printable("plain ünï"), "plain ünï");
    }

    #[test]
    fn an_error_survives_a_trip_through_io() {
        let e = Error::integrity("object x is damaged").with_object("x");
        let io: io::Error = e.into();
        let back = Error::io("reading", io);
        assert_eq!(back.kind(), ErrorKind::Integrity);
        assert_eq!(back.object(), Some("x"));
        assert_eq!(back.to_string(), "object x is damaged");
    }

    #[test]
    fn plain_io_errors_keep_their_context_and_source() {
        let e = Error::io(
            "writing /x",
            io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.to_string(), "writing /x: denied");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn only_integrity_and_rejection_are_about_the_backup() {
        assert!(Error::integrity("x").about_backup());
        assert!(Error::rejected("x").about_backup());
        for e in [
            Error::key("x"),
            Error::tool("x"),
            Error::database("x"),
            Error::exhausted("x"),
            Error::not_found("x"),
        ] {
            assert!(!e.about_backup(), "{e:?}");
        }
    }
}
