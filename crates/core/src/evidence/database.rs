//! What a database is besides its rows: its encoding and locale (which decide how text
//! sorts), its settings and comment, its owner, and the roles its objects belong to
//! or are granted to. pg_dump without `--create` carries none of the database-level
//! part and no role at all, so pgproof records them at backup, recreates them on
//! restore, and compares them after.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::db_err;
pub use crate::pg::properties::{DatabaseProperties, RoleInfo};

/// The properties of the database `client` is connected to.
pub async fn read_properties(client: &Client) -> Result<DatabaseProperties> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(db_err("reading the server version"))?
        .get(0);
    // The locale provider came in 15; its locale column was renamed in 17.
    let (provider, locale) = match version {
        v if v >= 170000 => ("d.datlocprovider::text", "d.datlocale"),
        v if v >= 150000 => ("d.datlocprovider::text", "d.daticulocale"),
        _ => ("'c'", "NULL::text"),
    };
    let row = client
        .query_one(
            &format!(
                "SELECT pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, \
                        {provider}, {locale}::text, pg_get_userbyid(d.datdba)::text, \
                        shobj_description(d.oid, 'pg_database'), \
                        coalesce((SELECT s.setconfig FROM pg_db_role_setting s \
                                  WHERE s.setdatabase = d.oid AND s.setrole = 0), '{{}}')::text[], \
                        (SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'), \
                        (SELECT reset_val FROM pg_settings WHERE name = 'DateStyle') \
                 FROM pg_database d WHERE d.datname = current_database()"
            ),
            &[],
        )
        .await
        .map_err(db_err("reading the database's properties"))?;
    let provider: String = row.get(3);
    let role_rows = client
        .query(
            "SELECT pg_get_userbyid(s.setrole)::text, s.setconfig::text[] FROM pg_db_role_setting s \
             JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = current_database() AND s.setrole <> 0",
            &[],
        )
        .await
        .map_err(db_err("reading the database's per-role settings"))?;
    let mut settings: Vec<String> = row.get(7);
    settings.sort();
    Ok(DatabaseProperties {
        encoding: row.get(0),
        collate: row.get(1),
        ctype: row.get(2),
        locale_provider: match provider.as_str() {
            "i" => "icu",
            "b" => "builtin",
            _ => "libc",
        }
        .to_owned(),
        locale: row.get(4),
        owner: row.get(5),
        comment: row.get(6),
        settings,
        session_timezone: row.get(8),
        session_datestyle: row.get(9),
        role_settings: role_rows
            .into_iter()
            .map(|r| {
                let mut config: Vec<String> = r.get(1);
                config.sort();
                (r.get(0), config)
            })
            .collect(),
    })
}

/// `properties` with their settings lists put through [`normalize_settings`] on
/// `client`'s server.
pub async fn normalized(
    properties: &DatabaseProperties,
    client: &Client,
) -> Result<DatabaseProperties> {
    let mut out = properties.clone();
    out.settings = normalize_settings(client, &properties.settings).await?;
    for (role, settings) in &properties.role_settings {
        out.role_settings
            .insert(role.clone(), normalize_settings(client, settings).await?);
    }
    Ok(out)
}

/// Settings as the server spells them: `ALTER … SET x FROM CURRENT` (how restores
/// apply them) stores `64MB` for `65536`, `off` for `false`, so both sides are put
/// through `set_config` and read back before they are compared. Names are lowercased;
/// a setting the server cannot take is kept as written.
pub async fn normalize_settings(client: &Client, entries: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(entries.len());
    client
        .batch_execute("BEGIN")
        .await
        .map_err(db_err("normalizing settings"))?;
    for entry in entries {
        let Some((name, value)) = entry.split_once('=') else {
            out.push(entry.clone());
            continue;
        };
        client
            .batch_execute("SAVEPOINT s")
            .await
            .map_err(db_err("normalizing settings"))?;
        let shown = client
            .query_one(
                "SELECT set_config($1, $2, true), current_setting($1)",
                &[&name, &value],
            )
            .await;
        match shown {
            Ok(row) => {
                out.push(format!(
                    "{}={}",
                    name.to_lowercase(),
                    row.get::<_, String>(1)
                ));
                let _ = client.batch_execute("RELEASE SAVEPOINT s").await;
            }
            Err(_) => {
                out.push(format!("{}={value}", name.to_lowercase()));
                let _ = client.batch_execute("ROLLBACK TO SAVEPOINT s").await;
            }
        }
    }
    let _ = client.batch_execute("ROLLBACK").await;
    out.sort();
    Ok(out)
}

/// The cluster's roles (not the predefined `pg_*` ones), each marked with whether the
/// database `client` is connected to needs it.
pub async fn read_roles(client: &Client) -> Result<Vec<RoleInfo>> {
    let rows = client
        .query(
            "SELECT r.rolname::text, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
                    r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
                    coalesce(ARRAY(SELECT g.rolname::text FROM pg_auth_members m \
                                   JOIN pg_roles g ON g.oid = m.roleid \
                                   WHERE m.member = r.oid AND g.rolname !~ '^pg_' ORDER BY 1), '{}'), \
                    coalesce((SELECT s.setconfig FROM pg_db_role_setting s \
                              WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}')::text[], \
                    r.oid = 10 \
                       OR EXISTS (SELECT 1 FROM pg_shdepend sd JOIN pg_database d ON d.oid = sd.dbid \
                                  WHERE d.datname = current_database() \
                                    AND sd.refclassid = 'pg_authid'::regclass AND sd.refobjid = r.oid) \
                       OR EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = current_database() \
                                    AND d.datdba = r.oid) \
                       OR EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
                                  WHERE d.datname = current_database() AND s.setrole = r.oid) \
             FROM pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_err("reading the cluster's roles"))?;
    let mut roles: Vec<RoleInfo> = rows
        .into_iter()
        .map(|r| {
            let mut settings: Vec<String> = r.get(10);
            settings.sort();
            RoleInfo {
                name: r.get(0),
                superuser: r.get(1),
                inherit: r.get(2),
                createrole: r.get(3),
                createdb: r.get(4),
                login: r.get(5),
                replication: r.get(6),
                bypassrls: r.get(7),
                connection_limit: r.get(8),
                member_of: r.get(9),
                settings,
                needed: r.get(11),
            }
        })
        .collect();
    mark_parents_needed(&mut roles);
    Ok(roles)
}

/// A needed role's memberships are part of what it may do: its parents are needed too.
fn mark_parents_needed(roles: &mut [RoleInfo]) {
    let mut needed: BTreeSet<String> = roles
        .iter()
        .filter(|r| r.needed)
        .map(|r| r.name.clone())
        .collect();
    loop {
        let parents: BTreeSet<String> = roles
            .iter()
            .filter(|r| needed.contains(&r.name))
            .flat_map(|r| r.member_of.iter().cloned())
            .filter(|p| !needed.contains(p))
            .collect();
        if parents.is_empty() {
            break;
        }
        needed.extend(parents);
    }
    for role in roles {
        role.needed = needed.contains(&role.name);
    }
}

/// How the roles `found` on a restore's server compare with the needed ones recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleDifferences {
    /// Needed roles the server lacks: the restored objects' owners or grantees are
    /// gone.
    pub missing: Vec<String>,
    /// Roles the server has with other attributes or memberships: the server's own
    /// (pgproof creates missing roles as recorded, so these existed before), which is
    /// the environment, not the backup.
    pub differing: Vec<String>,
}

/// Compares the needed roles of `expected` with the roles `found`.
pub fn role_differences(expected: &[RoleInfo], found: &[RoleInfo]) -> RoleDifferences {
    let found: BTreeMap<&str, &RoleInfo> = found.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut differences = RoleDifferences::default();
    let out = &mut differences.differing;
    for role in expected.iter().filter(|r| r.needed) {
        let Some(there) = found.get(role.name.as_str()) else {
            differences.missing.push(role.name.clone());
            continue;
        };
        if role.attributes() != there.attributes() {
            out.push(format!(
                "role {} has {} instead of {}",
                role.name,
                there.attributes(),
                role.attributes()
            ));
        }
        let lost: Vec<&String> = role
            .member_of
            .iter()
            .filter(|p| !there.member_of.contains(p))
            .collect();
        if !lost.is_empty() {
            out.push(format!("role {} is no member of {lost:?}", role.name));
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, needed: bool, member_of: &[&str]) -> RoleInfo {
        RoleInfo {
            name: name.into(),
            needed,
            member_of: member_of.iter().map(|s| s.to_string()).collect(),
            ..RoleInfo::default()
        }
    }

    #[test]
    fn parents_of_needed_roles_are_needed() {
        let mut roles = vec![
            role("app", true, &["readers"]),
            role("readers", false, &["base"]),
            role("base", false, &[]),
            role("other", false, &[]),
        ];
        mark_parents_needed(&mut roles);
        let needed: Vec<&str> = roles
            .iter()
            .filter(|r| r.needed)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(needed, ["app", "readers", "base"]);
    }

    #[test]
    fn role_differences_name_missing_changed_and_lost_memberships() {
        let expected = vec![
            role("a", true, &["g"]),
            role("b", true, &[]),
            role("unneeded", false, &[]),
        ];
        let mut b = role("b", false, &[]);
        b.login = true;
        let found = vec![role("a", false, &[]), b];
        let diffs = role_differences(&expected, &found);
        assert!(diffs.missing.is_empty());
        let diffs = diffs.differing;
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs[0].contains("no member of"));
        assert!(
            diffs[1].starts_with("role b has") && diffs[1].contains(" LOGIN "),
            "{diffs:?}"
        );
        let missing = role_differences(&expected, &[]);
        assert_eq!(missing.missing, ["a", "b"]);
    }

    #[test]
    fn locale_differences_cover_what_decides_sorting() {
        let recorded = DatabaseProperties {
            encoding: "UTF8".into(),
            collate: "C.UTF-8".into(),
            ctype: "C.UTF-8".into(),
            locale_provider: "libc".into(),
            ..DatabaseProperties::default()
        };
        let mut found = recorded.clone();
        assert!(recorded.differences(&found).is_empty());
        found.collate = "C".into();
        found.settings = vec!["TimeZone=UTC".into()];
        assert_eq!(recorded.locale_differences(&found).len(), 1);
        assert_eq!(recorded.differences(&found).len(), 2);
    }
}
