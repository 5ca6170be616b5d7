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

/// What a target server already has that a restore of globals must know of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetState {
    /// `server_version_num`.
    pub server_version_num: i32,
    /// Its bootstrap superuser.
    pub bootstrap: String,
    /// The role connected (kept as it is, like the bootstrap superuser).
    pub current_user: String,
    /// Every role but the predefined ones.
    pub roles: BTreeSet<String>,
    /// Every tablespace but the built-in ones.
    pub tablespaces: BTreeSet<String>,
}

impl TargetState {
    /// Reads it.
    pub async fn read(client: &Client) -> Result<Self> {
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int4, \
                        (SELECT rolname::text FROM pg_roles WHERE oid = 10), current_user::text",
                &[],
            )
            .await
            .map_err(db_err("reading the target server's roles"))?;
        let names = |rows: Vec<tokio_postgres::Row>| -> BTreeSet<String> {
            rows.into_iter().map(|r| r.get(0)).collect()
        };
        Ok(Self {
            server_version_num: row.get(0),
            bootstrap: row.get(1),
            current_user: row.get(2),
            roles: names(
                client
                    .query("SELECT rolname::text FROM pg_roles WHERE rolname !~ '^pg_'", &[])
                    .await
                    .map_err(db_err("reading the target server's roles"))?,
            ),
            tablespaces: names(
                client
                    .query(
                        "SELECT spcname::text FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')",
                        &[],
                    )
                    .await
                    .map_err(db_err("reading the target server's tablespaces"))?,
            ),
        })
    }

    /// The roles a restore keeps as they are rather than creating them: the target's
    /// bootstrap superuser and the role the restore connects as.
    pub fn kept(&self) -> BTreeSet<String> {
        [self.bootstrap.clone(), self.current_user.clone()]
            .into_iter()
            .collect()
    }
}

/// What [`apply_globals`] created, to undo it if the restore fails later.
#[derive(Clone, Debug, Default)]
pub struct Created {
    /// Roles created, in order.
    pub roles: Vec<String>,
    /// Tablespaces created, in order.
    pub tablespaces: Vec<String>,
}

/// Runs `template` (a `format()` string of `%I` identifiers and `%L` literals) with
/// `args` quoted by the server itself: no recorded name or value is ever spliced into
/// SQL by pgproof. Errors say what was being done, never the statement (it may carry a
/// password verifier).
async fn formatted(client: &Client, doing: &str, template: &str, args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let statement: String = client
        .query_one(
            "SELECT format($1, VARIADIC $2::text[])",
            &[&template, &args],
        )
        .await
        .map_err(db_err("quoting a statement"))?
        .get(0);
    client.batch_execute(&statement).await.map_err(|e| {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        Error::database(format!("PostgreSQL refused {doing}: {detail}"))
    })
}

/// A role's attribute keywords; the recorded values are booleans and a number, so
/// nothing here comes from the backup's text.
fn attributes(role: &GlobalRole) -> String {
    let flag = |on: bool, name: &str| {
        if on {
            name.to_owned()
        } else {
            format!("NO{name}")
        }
    };
    [
        flag(role.superuser, "SUPERUSER"),
        flag(role.inherit, "INHERIT"),
        flag(role.createrole, "CREATEROLE"),
        flag(role.createdb, "CREATEDB"),
        flag(role.login, "LOGIN"),
        flag(role.replication, "REPLICATION"),
        flag(role.bypassrls, "BYPASSRLS"),
        format!("CONNECTION LIMIT {}", role.connection_limit),
    ]
    .join(" ")
}

/// Creates `globals` on the server `client` is connected to (a superuser's session):
/// the roles (but the `kept` ones, which exist already), their comments and
/// passwords, memberships, settings outside any database, then the tablespaces, each
/// at its recorded location or at the one `tablespace_dirs` gives for its name.
/// Settings inside a database come with that database's restore.
///
/// On failure what was created so far is dropped again and the error says which
/// object failed.
pub async fn apply_globals(
    client: &Client,
    globals: &Globals,
    kept: &BTreeSet<String>,
    tablespace_dirs: &BTreeMap<String, String>,
) -> Result<Created> {
    let mut created = Created::default();
    match apply_into(client, globals, kept, tablespace_dirs, &mut created).await {
        Ok(()) => Ok(created),
        Err(e) => {
            undo(client, &created).await;
            Err(e)
        }
    }
}

async fn apply_into(
    client: &Client,
    globals: &Globals,
    kept: &BTreeSet<String>,
    tablespace_dirs: &BTreeMap<String, String>,
    created: &mut Created,
) -> Result<()> {
    client
        .batch_execute(SESSION)
        .await
        .map_err(db_err("preparing to create the cluster's globals"))?;
    for role in globals.roles.iter().filter(|r| !kept.contains(&r.name)) {
        let doing = format!("creating role {:?}", role.name);
        let mut template = format!("CREATE ROLE %I WITH {}", attributes(role));
        let mut args = vec![role.name.as_str()];
        if let Some(until) = &role.valid_until {
            template.push_str(" VALID UNTIL %L");
            args.push(until);
        }
        if let Some(Verifier(password)) = &role.password {
            template.push_str(" PASSWORD %L");
            args.push(password);
        }
        formatted(client, &doing, &template, &args).await?;
        created.roles.push(role.name.clone());
        tracing::info!(role = %role.name, "created role");
    }
    for role in &globals.roles {
        if let Some(comment) = &role.comment {
            formatted(
                client,
                &format!("the comment on role {:?}", role.name),
                "COMMENT ON ROLE %I IS %L",
                &[&role.name, comment],
            )
            .await?;
        }
    }
    for m in &globals.memberships {
        let doing = format!("granting role {:?} to {:?}", m.role, m.member);
        let mut options = Vec::new();
        if m.admin_option {
            options.push("ADMIN TRUE");
        }
        // A server before 16 has only the admin option; a grant recorded there leaves
        // the rest to the server's defaults (as they were).
        if globals.server_version_num >= 160000 {
            match m.inherit_option {
                Some(true) => options.push("INHERIT TRUE"),
                Some(false) => options.push("INHERIT FALSE"),
                None => {}
            }
            match m.set_option {
                Some(true) => options.push("SET TRUE"),
                Some(false) => options.push("SET FALSE"),
                None => {}
            }
        }
        let with = if options.is_empty() {
            String::new()
        } else if options == ["ADMIN TRUE"] {
            " WITH ADMIN OPTION".to_owned()
        } else {
            format!(" WITH {}", options.join(", "))
        };
        formatted(
            client,
            &doing,
            &format!("GRANT %I TO %I{with}"),
            &[&m.role, &m.member],
        )
        .await?;
    }
    for entry in globals
        .role_settings
        .iter()
        .filter(|s| s.database.is_none())
    {
        for setting in &entry.settings {
            set_role_setting(client, &entry.role, setting).await?;
        }
    }
    for ts in &globals.tablespaces {
        let location = tablespace_dirs.get(&ts.name).unwrap_or(&ts.location);
        formatted(
            client,
            &format!(
                "creating tablespace {:?} at {:?} (give another directory for it if that one is not usable on this server)",
                ts.name, location
            ),
            "CREATE TABLESPACE %I OWNER %I LOCATION %L",
            &[&ts.name, &ts.owner, location],
        )
        .await
        .map_err(|e| e.with_setting(Setting::TablespaceDir))?;
        created.tablespaces.push(ts.name.clone());
        tracing::info!(tablespace = %ts.name, location = %location, "created tablespace");
        for option in &ts.options {
            let Some((name, value)) = option.split_once('=') else {
                continue;
            };
            formatted(
                client,
                &format!("setting {name} on tablespace {:?}", ts.name),
                "ALTER TABLESPACE %I SET (%I = %L)",
                &[&ts.name, name, value],
            )
            .await?;
        }
        if let Some(comment) = &ts.comment {
            formatted(
                client,
                &format!("the comment on tablespace {:?}", ts.name),
                "COMMENT ON TABLESPACE %I IS %L",
                &[&ts.name, comment],
            )
            .await?;
        }
    }
    Ok(())
}

/// `ALTER ROLE r SET name FROM CURRENT` after `set_config(name, value)` in a
/// transaction of its own: the value is a bound parameter in the server's own
/// spelling (a list like `search_path` included), never SQL text.
async fn set_role_setting(client: &Client, role: &str, setting: &str) -> Result<()> {
    let Some((name, value)) = setting.split_once('=') else {
        return Ok(());
    };
    let statement: String = client
        .query_one(
            "SELECT format('ALTER ROLE %I SET %s FROM CURRENT', $1::text, \
                    (SELECT string_agg(quote_ident(p), '.') FROM unnest(string_to_array($2::text, '.')) p))",
            &[&role, &name],
        )
        .await
        .map_err(db_err("quoting a role setting"))?
        .get(0);
    let result = async {
        client.batch_execute("BEGIN").await?;
        client
            .execute("SELECT set_config($1, $2, true)", &[&name, &value])
            .await?;
        client.batch_execute(&statement).await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if let Err(e) = result {
        let _ = client.batch_execute("ROLLBACK").await;
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        return Err(Error::database(format!(
            "cannot apply the recorded setting {name} of role {role:?}: {detail}; restore onto a server that knows the setting, or remove it from the source"
        )));
    }
    Ok(())
}

/// Drops what [`apply_globals`] created (tablespaces, then roles, newest first);
/// failures are logged, not returned: this runs on the way out of a failure.
pub async fn undo(client: &Client, created: &Created) {
    for name in created.tablespaces.iter().rev() {
        if let Err(e) = formatted(
            client,
            &format!("dropping tablespace {name:?}"),
            "DROP TABLESPACE IF EXISTS %I",
            &[name],
        )
        .await
        {
            tracing::error!(tablespace = %name, error = %e, "could not drop a tablespace this restore created; drop it by hand");
        }
    }
    for name in created.roles.iter().rev() {
        if let Err(e) = formatted(
            client,
            &format!("dropping role {name:?}"),
            "DROP ROLE IF EXISTS %I",
            &[name],
        )
        .await
        {
            tracing::error!(role = %name, error = %e, "could not drop a role this restore created; drop it by hand");
        }
    }
}

/// How the globals found on a server after a restore differ from those recorded, one
/// list per kind of object; empty lists mean equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalsDifferences {
    /// Roles missing, added, or with other attributes or comments.
    pub roles: Vec<String>,
    /// Memberships missing, added, or with other options.
    pub memberships: Vec<String>,
    /// Role settings missing, added or different.
    pub role_settings: Vec<String>,
    /// Tablespaces missing, added, or with another owner, location or options.
    pub tablespaces: Vec<String>,
    /// Roles whose password verifier differs (never the verifiers themselves).
    pub passwords: Vec<String>,
}

/// What [`differences`] is told about the restore it judges.
#[derive(Clone, Debug)]
pub struct Expectations<'a> {
    /// Roles that were there before and kept as found: their attributes and passwords
    /// are the target's, not the backup's.
    pub kept: &'a BTreeSet<String>,
    /// Roles that were there before and are none of the recorded ones.
    pub preexisting: &'a BTreeSet<String>,
    /// Where each tablespace was put instead of its recorded location.
    pub tablespace_dirs: &'a BTreeMap<String, String>,
    /// The databases restored: settings in other databases are not compared.
    pub databases: &'a BTreeSet<String>,
}

/// Compares `recorded` with `found` (read back with the same `passwords` setting,
/// both sides' settings already normalized by the server).
pub fn differences(
    recorded: &Globals,
    found: &Globals,
    expect: &Expectations<'_>,
) -> GlobalsDifferences {
    let mut out = GlobalsDifferences::default();
    let found_roles: BTreeMap<&str, &GlobalRole> =
        found.roles.iter().map(|r| (r.name.as_str(), r)).collect();
    for role in &recorded.roles {
        let Some(there) = found_roles.get(role.name.as_str()) else {
            out.roles.push(format!("role {:?} is missing", role.name));
            continue;
        };
        if expect.kept.contains(&role.name) {
            continue;
        }
        if attributes(role) != attributes(there) {
            out.roles.push(format!(
                "role {:?} has {} instead of {}",
                role.name,
                attributes(there),
                attributes(role)
            ));
        }
        if role.valid_until != there.valid_until {
            out.roles.push(format!(
                "role {:?} is valid until {:?} instead of {:?}",
                role.name, there.valid_until, role.valid_until
            ));
        }
        if recorded.passwords && role.password != there.password {
            out.passwords.push(format!(
                "role {:?} has {} password verifier than recorded",
                role.name,
                if there.password.is_none() {
                    "no"
                } else {
                    "another"
                }
            ));
        }
    }
    for role in &recorded.roles {
        if let Some(there) = found_roles.get(role.name.as_str())
            && role.comment != there.comment
        {
            out.roles.push(format!(
                "role {:?} has the comment {:?} instead of {:?}",
                role.name, there.comment, role.comment
            ));
        }
    }
    for role in &found.roles {
        if recorded.role(&role.name).is_none()
            && !expect.kept.contains(&role.name)
            && !expect.preexisting.contains(&role.name)
        {
            out.roles.push(format!(
                "role {:?} is there but was not recorded",
                role.name
            ));
        }
    }
    let recorded_m: BTreeSet<&Membership> = recorded.memberships.iter().collect();
    let found_m: BTreeSet<&Membership> = found
        .memberships
        .iter()
        .filter(|m| !expect.preexisting.contains(&m.member))
        .collect();
    let comparable = |m: &Membership| {
        // Options a server before 16 did not record are the target's defaults.
        let mut m = m.clone();
        if recorded.server_version_num < 160000 || found.server_version_num < 160000 {
            m.inherit_option = None;
            m.set_option = None;
        }
        m
    };
    let recorded_c: BTreeSet<Membership> = recorded_m.iter().map(|m| comparable(m)).collect();
    let found_c: BTreeSet<Membership> = found_m.iter().map(|m| comparable(m)).collect();
    for m in recorded_c.difference(&found_c) {
        out.memberships.push(format!(
            "{:?} is no member of {:?} as recorded ({})",
            m.member,
            m.role,
            describe_membership(m)
        ));
    }
    for m in found_c.difference(&recorded_c) {
        out.memberships.push(format!(
            "{:?} is a member of {:?} ({}), which was not recorded",
            m.member,
            m.role,
            describe_membership(m)
        ));
    }
    let in_scope = |s: &&RoleSetting| {
        s.database
            .as_ref()
            .is_none_or(|db| expect.databases.contains(db))
            && !expect.preexisting.contains(&s.role)
    };
    let recorded_s: BTreeSet<&RoleSetting> =
        recorded.role_settings.iter().filter(in_scope).collect();
    let found_s: BTreeSet<&RoleSetting> = found.role_settings.iter().filter(in_scope).collect();
    for s in recorded_s.difference(&found_s) {
        out.role_settings.push(format!(
            "role {:?}{}: {:?} recorded, {:?} found",
            s.role,
            s.database
                .as_ref()
                .map(|db| format!(" in database {db:?}"))
                .unwrap_or_default(),
            s.settings,
            found
                .role_settings
                .iter()
                .find(|f| f.role == s.role && f.database == s.database)
                .map(|f| f.settings.clone())
                .unwrap_or_default()
        ));
    }
    for s in found_s.difference(&recorded_s) {
        if !recorded_s
            .iter()
            .any(|r| r.role == s.role && r.database == s.database)
        {
            out.role_settings.push(format!(
                "role {:?}{} has settings {:?}, none recorded",
                s.role,
                s.database
                    .as_ref()
                    .map(|db| format!(" in database {db:?}"))
                    .unwrap_or_default(),
                s.settings
            ));
        }
    }
    let found_ts: BTreeMap<&str, &Tablespace> = found
        .tablespaces
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for ts in &recorded.tablespaces {
        let Some(there) = found_ts.get(ts.name.as_str()) else {
            out.tablespaces
                .push(format!("tablespace {:?} is missing", ts.name));
            continue;
        };
        let location = expect.tablespace_dirs.get(&ts.name).unwrap_or(&ts.location);
        let mut expected = ts.clone();
        expected.location = location.clone();
        if **there != expected {
            out.tablespaces.push(format!(
                "tablespace {:?}: {expected:?} expected, {there:?} found",
                ts.name
            ));
        }
    }
    for ts in &found.tablespaces {
        if !recorded.tablespaces.iter().any(|r| r.name == ts.name) {
            out.tablespaces.push(format!(
                "tablespace {:?} is there but was not recorded",
                ts.name
            ));
        }
    }
    out
}

fn describe_membership(m: &Membership) -> String {
    let mut parts = vec![format!("admin {}", m.admin_option)];
    if let Some(inherit) = m.inherit_option {
        parts.push(format!("inherit {inherit}"));
    }
    if let Some(set) = m.set_option {
        parts.push(format!("set {set}"));
    }
    parts.join(", ")
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
