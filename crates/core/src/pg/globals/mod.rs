//! A cluster's globals: what belongs to the whole server rather than to one database,
//! and which pg_dump therefore never carries: roles with their attributes, comments
//! and (optionally) password verifiers, memberships, per-role settings, and
//! tablespaces. Read from the catalogs into a structured [`Globals`], applied to an
//! empty cluster with every identifier and value quoted by the server itself
//! (`format('%I', …)`, `%L`, bound parameters), and compared after a restore.
//!
//! Nothing here replays SQL text from a backup: a recorded name or value reaches the
//! server only as a quoted identifier, a quoted literal or a bound parameter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Error, Result, Setting};
use crate::pg::db_err;

mod apply;
mod compare;

pub use apply::{Created, TargetState, apply_globals, undo};
pub use compare::{Expectations, GlobalsDifferences, differences};

/// The cluster-wide state of a PostgreSQL server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Globals {
    /// `server_version_num` of the server they were read from.
    pub server_version_num: i32,
    /// The bootstrap superuser (the role with OID 10), which every cluster has under
    /// the name initdb gave it.
    pub bootstrap: String,
    /// Every role but the predefined `pg_*` ones, by name.
    pub roles: Vec<GlobalRole>,
    /// Who is a member of whom.
    pub memberships: Vec<Membership>,
    /// `ALTER ROLE … [IN DATABASE …] SET`.
    pub role_settings: Vec<RoleSetting>,
    /// Tablespaces but `pg_default` and `pg_global`.
    pub tablespaces: Vec<Tablespace>,
    /// Whether the roles' password verifiers were read (`[globals] passwords`).
    #[serde(default)]
    pub passwords: bool,
}

/// A role and its attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalRole {
    /// Name.
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
    /// `VALID UNTIL`, in ISO form and UTC (`infinity` included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// `COMMENT ON ROLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The password verifier (`SCRAM-SHA-256$…` or `md5…`), only when read with
    /// passwords, and then only ever stored encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Verifier>,
}

/// A password verifier: never shown, never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Verifier(String);

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(redacted)")
    }
}

/// `GRANT role TO member`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Membership {
    /// The role granted.
    pub role: String,
    /// The role it is granted to.
    pub member: String,
    /// `WITH ADMIN OPTION`.
    pub admin_option: bool,
    /// `INHERIT` of this grant (PostgreSQL 16 and newer; before, the member's
    /// `INHERIT` attribute decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit_option: Option<bool>,
    /// `SET` of this grant (PostgreSQL 16 and newer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_option: Option<bool>,
}

/// The settings of one role, everywhere or in one database.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoleSetting {
    /// The role.
    pub role: String,
    /// The database (`ALTER ROLE … IN DATABASE …`), or none: everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `name=value` entries, as the server stores them, sorted.
    pub settings: Vec<String>,
}

/// A tablespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// Name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Its directory on the server's host.
    pub location: String,
    /// `ALTER TABLESPACE … SET (name=value)` entries, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// `COMMENT ON TABLESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Globals {
    /// The recorded role named `name`.
    pub fn role(&self, name: &str) -> Option<&GlobalRole> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// Dates and times in one unambiguous spelling on both sides of a backup.
const SESSION: &str =
    "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'";

/// Reads the globals of `client`'s server; with `passwords`, the roles' password
/// verifiers too (which needs a superuser: `pg_authid` is readable by superusers only).
pub async fn read_globals(client: &Client, passwords: bool) -> Result<Globals> {
    client
        .batch_execute(SESSION)
        .await
        .map_err(db_err("preparing to read the cluster's globals"))?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(db_err("reading the server version"))?
        .get(0);
    let bootstrap: String = client
        .query_one("SELECT rolname::text FROM pg_roles WHERE oid = 10", &[])
        .await
        .map_err(db_err("reading the bootstrap superuser"))?
        .get(0);
    let mut roles: Vec<GlobalRole> = client
        .query(
            "SELECT r.rolname::text, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
                    r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
                    r.rolvaliduntil::text, shobj_description(r.oid, 'pg_authid') \
             FROM pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_err("reading the cluster's roles"))?
        .into_iter()
        .map(|r| GlobalRole {
            name: r.get(0),
            superuser: r.get(1),
            inherit: r.get(2),
            createrole: r.get(3),
            createdb: r.get(4),
            login: r.get(5),
            replication: r.get(6),
            bypassrls: r.get(7),
            connection_limit: r.get(8),
            valid_until: r.get(9),
            comment: r.get(10),
            password: None,
        })
        .collect();
    if passwords {
        let rows = client
            .query(
                "SELECT rolname::text, rolpassword FROM pg_authid \
                 WHERE rolpassword IS NOT NULL AND rolname !~ '^pg_'",
                &[],
            )
            .await
            .map_err(|e| {
                let detail = e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                Error::permission(format!(
                    "cannot read the roles' password verifiers ({detail}): pg_authid is readable by superusers only; back up as a superuser, or leave the passwords out"
                ))
            })?;
        let verifiers: BTreeMap<String, String> =
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        for role in &mut roles {
            role.password = verifiers.get(&role.name).cloned().map(Verifier);
        }
    }
    // Grants of the predefined roles (pg_read_all_data, …) are part of what a role may
    // do; memberships of predefined roles in each other are the server's own.
    let options = if version >= 160000 {
        "m.inherit_option, m.set_option"
    } else {
        "NULL::bool, NULL::bool"
    };
    let mut memberships: Vec<Membership> = client
        .query(
            &format!(
                "SELECT g.rolname::text, u.rolname::text, m.admin_option, {options} \
                 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                 JOIN pg_roles u ON u.oid = m.member WHERE u.rolname !~ '^pg_'"
            ),
            &[],
        )
        .await
        .map_err(db_err("reading the cluster's role memberships"))?
        .into_iter()
        .map(|r| Membership {
            role: r.get(0),
            member: r.get(1),
            admin_option: r.get(2),
            inherit_option: r.get(3),
            set_option: r.get(4),
        })
        .collect();
    // From 16 a membership may be granted more than once (by different grantors):
    // one grant with the widest options says what the member may do.
    memberships.sort();
    memberships.dedup_by(|later, earlier| {
        if later.role == earlier.role && later.member == earlier.member {
            earlier.admin_option |= later.admin_option;
            earlier.inherit_option = or(earlier.inherit_option, later.inherit_option);
            earlier.set_option = or(earlier.set_option, later.set_option);
            true
        } else {
            false
        }
    });
    let mut role_settings: Vec<RoleSetting> = client
        .query(
            "SELECT r.rolname::text, d.datname::text, s.setconfig::text[] \
             FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole \
             LEFT JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE s.setrole <> 0 AND (s.setdatabase = 0 OR d.oid IS NOT NULL)",
            &[],
        )
        .await
        .map_err(db_err("reading the roles' settings"))?
        .into_iter()
        .map(|r| {
            let mut settings: Vec<String> = r.get(2);
            settings.sort();
            RoleSetting {
                role: r.get(0),
                database: r.get(1),
                settings,
            }
        })
        .collect();
    role_settings.sort();
    let tablespaces = client
        .query(
            "SELECT t.spcname::text, pg_get_userbyid(t.spcowner)::text, \
                    pg_tablespace_location(t.oid), coalesce(t.spcoptions, '{}')::text[], \
                    shobj_description(t.oid, 'pg_tablespace') \
             FROM pg_tablespace t WHERE t.spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_err("reading the cluster's tablespaces"))?
        .into_iter()
        .map(|r| {
            let mut options: Vec<String> = r.get(3);
            options.sort();
            Tablespace {
                name: r.get(0),
                owner: r.get(1),
                location: r.get(2),
                options,
                comment: r.get(4),
            }
        })
        .collect();
    Ok(Globals {
        server_version_num: version,
        bootstrap,
        roles,
        memberships,
        role_settings,
        tablespaces,
        passwords,
    })
}

fn or(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(false) | b.unwrap_or(false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> GlobalRole {
        GlobalRole {
            name: name.into(),
            inherit: true,
            connection_limit: -1,
            ..GlobalRole::default()
        }
    }

    fn globals() -> Globals {
        Globals {
            server_version_num: 150000,
            bootstrap: "postgres".into(),
            roles: vec![role("postgres"), role("app"), role("readers")],
            memberships: vec![Membership {
                role: "readers".into(),
                member: "app".into(),
                admin_option: true,
                inherit_option: None,
                set_option: None,
            }],
            role_settings: vec![RoleSetting {
                role: "app".into(),
                database: None,
                settings: vec!["work_mem=64MB".into()],
            }],
            tablespaces: vec![Tablespace {
                name: "fast".into(),
                owner: "app".into(),
                location: "/srv/fast".into(),
                options: vec![],
                comment: None,
            }],
            passwords: false,
        }
    }

    #[test]
    fn equal_globals_have_no_differences_and_remapped_tablespaces_count_as_equal() {
        let recorded = globals();
        let mut found = recorded.clone();
        found.tablespaces[0].location = "/elsewhere".into();
        let kept = BTreeSet::from(["postgres".to_owned()]);
        let dirs = BTreeMap::from([("fast".to_owned(), "/elsewhere".to_owned())]);
        let none = BTreeSet::new();
        let expect = Expectations {
            kept: &kept,
            preexisting: &none,
            tablespace_dirs: &dirs,
            databases: &none,
        };
        assert_eq!(
            differences(&recorded, &found, &expect),
            GlobalsDifferences::default()
        );
        let expect = Expectations {
            tablespace_dirs: &BTreeMap::new(),
            ..expect
        };
        assert_eq!(differences(&recorded, &found, &expect).tablespaces.len(), 1);
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let recorded = globals();
        let mut found = recorded.clone();
        found.roles[1].login = true;
        found.roles.push(role("stranger"));
        found.memberships[0].admin_option = false;
        found.role_settings.clear();
        found.tablespaces[0].owner = "postgres".into();
        let kept = BTreeSet::from(["postgres".to_owned()]);
        let none = BTreeSet::new();
        let expect = Expectations {
            kept: &kept,
            preexisting: &none,
            tablespace_dirs: &BTreeMap::new(),
            databases: &none,
        };
        let d = differences(&recorded, &found, &expect);
        assert_eq!(d.roles.len(), 2, "{d:?}");
        assert!(d.roles[0].contains(" LOGIN "), "{d:?}");
        assert!(d.roles[1].contains("stranger"), "{d:?}");
        assert_eq!(d.memberships.len(), 2, "{d:?}");
        assert_eq!(d.role_settings.len(), 1, "{d:?}");
        assert_eq!(d.tablespaces.len(), 1, "{d:?}");
        // A kept role's own attributes are the target's.
        let mut found = recorded.clone();
        found.roles[0].superuser = true;
        assert_eq!(
            differences(&recorded, &found, &expect),
            GlobalsDifferences::default()
        );
    }

    #[test]
    fn passwords_are_compared_when_recorded_and_never_shown() {
        let mut recorded = globals();
        recorded.passwords = true;
        recorded.roles[1].password = Some(Verifier("SCRAM-SHA-256$4096:secret".into()));
        let mut found = recorded.clone();
        found.roles[1].password = Some(Verifier("SCRAM-SHA-256$4096:other".into()));
        let kept = BTreeSet::new();
        let expect = Expectations {
            kept: &kept,
            preexisting: &kept,
            tablespace_dirs: &BTreeMap::new(),
            databases: &kept,
        };
        let d = differences(&recorded, &found, &expect);
        assert_eq!(d.passwords.len(), 1);
        assert!(!format!("{d:?}{recorded:?}").contains("secret"));
    }
}
