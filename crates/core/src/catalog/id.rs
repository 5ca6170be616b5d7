//! Backup ids as a type: one path segment of the sink, checked wherever an id enters
//! pgproof (a manifest, a listed key, a flag), so no id can name a path outside its
//! backup's directory.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// A backup's id: `20261123T063151.042Z-3fa9` for every backup pgproof takes (it
/// sorts by start time). Any id is one non-empty path segment without control
/// characters that is neither `.` nor `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct BackupId(pub(super) String);

impl BackupId {
    /// Checks `text` as an id.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty()
            || text == "."
            || text == ".."
            || text.len() > 255
            || text.chars().any(|c| c == '/' || c.is_control())
        {
            return Err(Error::integrity(format!(
                "{:?} is not a backup id: an id is one path segment, not . or .., without control characters",
                crate::error::printable(text)
            )));
        }
        Ok(Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for BackupId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for BackupId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for BackupId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for BackupId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for BackupId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for BackupId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl std::str::FromStr for BackupId {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_one_safe_path_segment() {
        assert_eq!(
            BackupId::parse("20261123T063151.042Z-3fa9").unwrap(),
            "20261123T063151.042Z-3fa9"
        );
        for bad in ["", ".", "..", "a/b", "../x", "a\nb", "a\u{1b}[2J"] {
            assert!(BackupId::parse(bad).is_err(), "{bad:?}");
        }
        let forged: std::result::Result<BackupId, _> = serde_json::from_str("\"../../etc\"");
        assert!(forged.is_err());
    }
}
