//! Applying recorded globals to an empty server, every name and value quoted by the
//! server itself, and undoing what was created when a step fails.

use super::*;

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

/// A role's attribute keywords, written as a restore writes a backup's roles
/// ([`RoleInfo::attributes`](crate::pg::properties::RoleInfo::attributes)); the recorded values are booleans and a number, so
/// nothing here comes from the backup's text.
pub(super) fn attributes(role: &GlobalRole) -> String {
    crate::pg::properties::RoleInfo {
        superuser: role.superuser,
        inherit: role.inherit,
        createrole: role.createrole,
        createdb: role.createdb,
        login: role.login,
        replication: role.replication,
        bypassrls: role.bypassrls,
        connection_limit: role.connection_limit,
        ..Default::default()
    }
    .attributes()
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
    // The kept roles (the target's bootstrap superuser, the role connected) stay as
    // they are: a recorded setting on them (a statement_timeout, read-only
    // transactions) would reach every restore that follows as that role.
    for role in globals.roles.iter().filter(|r| !kept.contains(&r.name)) {
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
        .filter(|s| s.database.is_none() && !kept.contains(&s.role))
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
