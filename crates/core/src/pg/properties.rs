//! What a database is besides its rows, as PostgreSQL defines it: its encoding and
//! locale, owner, settings and comment, and the roles its objects belong to. Read by
//! [`evidence::database`](crate::evidence::database), recorded in manifests, and
//! recreated on restore.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Database-level properties.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    /// Server encoding (`UTF8`, `SQL_ASCII`, `LATIN1`, …).
    pub encoding: String,
    /// `LC_COLLATE`.
    pub collate: String,
    /// `LC_CTYPE`.
    pub ctype: String,
    /// `libc`, `icu` or `builtin`.
    pub locale_provider: String,
    /// The ICU (or builtin) locale, when the provider is not libc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The owner's role name.
    pub owner: String,
    /// `COMMENT ON DATABASE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// `ALTER DATABASE … SET`, as `name=value` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// `ALTER ROLE … IN DATABASE … SET`, per role.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub role_settings: BTreeMap<String, Vec<String>>,
    /// The TimeZone and DateStyle a new session of the backup role got: every restore
    /// pgproof runs uses them, so a generated column whose "immutable" expression
    /// depends on them comes out of verification's restore and of any later one alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timezone: Option<String>,
    /// See [`session_timezone`](Self::session_timezone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_datestyle: Option<String>,
}

impl DatabaseProperties {
    /// Environment for a restore program: the session settings recorded at backup.
    pub fn restore_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(tz) = &self.session_timezone {
            env.push(("PGTZ", tz.clone()));
        }
        if let Some(style) = &self.session_datestyle {
            env.push(("PGDATESTYLE", style.clone()));
        }
        env
    }
}

impl DatabaseProperties {
    /// Where `found` differs from `self` in what decides how text is stored and
    /// sorted (encoding, collation, character classes, locale provider): a database
    /// that differs here holds other data, or sorts it otherwise.
    pub fn locale_differences(&self, found: &DatabaseProperties) -> Vec<String> {
        let mut out = Vec::new();
        let mut compare = |what: &str, expected: &str, got: &str| {
            if expected != got {
                out.push(format!("{what} {expected:?} recorded, {got:?} found"));
            }
        };
        compare("encoding", &self.encoding, &found.encoding);
        compare("LC_COLLATE", &self.collate, &found.collate);
        compare("LC_CTYPE", &self.ctype, &found.ctype);
        compare(
            "locale provider",
            &self.locale_provider,
            &found.locale_provider,
        );
        compare(
            "locale",
            self.locale.as_deref().unwrap_or(""),
            found.locale.as_deref().unwrap_or(""),
        );
        out
    }

    /// Every difference: locale, owner, comment, settings.
    pub fn differences(&self, found: &DatabaseProperties) -> Vec<String> {
        let mut out = self.locale_differences(found);
        if self.owner != found.owner {
            out.push(format!(
                "owner {:?} recorded, {:?} found",
                self.owner, found.owner
            ));
        }
        if self.comment != found.comment {
            out.push(format!(
                "comment {:?} recorded, {:?} found",
                self.comment, found.comment
            ));
        }
        if self.settings != found.settings {
            out.push(format!(
                "settings {:?} recorded, {:?} found",
                self.settings, found.settings
            ));
        }
        if self.role_settings != found.role_settings {
            out.push(format!(
                "per-role settings {:?} recorded, {:?} found",
                self.role_settings, found.role_settings
            ));
        }
        out
    }
}

/// A role, without its password (pgproof never reads or stores one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    /// Role name.
    pub name: String,
    /// `SUPERUSER`.
    pub superuser: bool,
    /// `INHERIT`.
    pub inherit: bool,
    /// `CREATEROLE`.
    pub createrole: bool,
    /// `CREATEDB`.
    pub createdb: bool,
    /// `LOGIN`.
    pub login: bool,
    /// `REPLICATION`.
    pub replication: bool,
    /// `BYPASSRLS`.
    pub bypassrls: bool,
    /// `CONNECTION LIMIT` (-1: none).
    pub connection_limit: i32,
    /// Roles it is a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
    /// `ALTER ROLE … SET` outside any database, as `name=value` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// Whether the database depends on it: it owns objects, holds grants, is named
    /// by a policy or a per-role setting, owns the database, is the bootstrap
    /// superuser, or is one of those roles' (transitive) parents. A restore needs
    /// exactly these.
    pub needed: bool,
}

impl RoleInfo {
    /// The attribute keywords of `CREATE ROLE`, for this role.
    pub fn attributes(&self) -> String {
        let flag = |on: bool, name: &str| {
            if on {
                name.to_owned()
            } else {
                format!("NO{name}")
            }
        };
        [
            flag(self.superuser, "SUPERUSER"),
            flag(self.inherit, "INHERIT"),
            flag(self.createrole, "CREATEROLE"),
            flag(self.createdb, "CREATEDB"),
            flag(self.login, "LOGIN"),
            flag(self.replication, "REPLICATION"),
            flag(self.bypassrls, "BYPASSRLS"),
            format!("CONNECTION LIMIT {}", self.connection_limit),
        ]
        .join(" ")
    }
}
