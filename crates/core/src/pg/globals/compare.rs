//! The globals found on a server after a restore against the recorded ones.

use super::apply::attributes;
use super::*;

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
    compare_roles(recorded, found, expect, &mut out);
    compare_memberships(recorded, found, expect, &mut out);
    compare_role_settings(recorded, found, expect, &mut out);
    compare_tablespaces(recorded, found, expect, &mut out);
    out
}

/// Roles (attributes, validity, comments, verifiers), missing or not recorded.
fn compare_roles(
    recorded: &Globals,
    found: &Globals,
    expect: &Expectations<'_>,
    out: &mut GlobalsDifferences,
) {
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
    for role in recorded
        .roles
        .iter()
        .filter(|r| !expect.kept.contains(&r.name))
    {
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
}

/// Memberships, with the options a server before 16 did not record left out.
fn compare_memberships(
    recorded: &Globals,
    found: &Globals,
    expect: &Expectations<'_>,
    out: &mut GlobalsDifferences,
) {
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
}

/// Role settings, everywhere and in the databases restored.
fn compare_role_settings(
    recorded: &Globals,
    found: &Globals,
    expect: &Expectations<'_>,
    out: &mut GlobalsDifferences,
) {
    let in_scope = |s: &&RoleSetting| {
        s.database
            .as_ref()
            .is_none_or(|db| expect.databases.contains(db))
            && !expect.preexisting.contains(&s.role)
            && !expect.kept.contains(&s.role)
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
}

/// Tablespaces, at their recorded (or remapped) locations.
fn compare_tablespaces(
    recorded: &Globals,
    found: &Globals,
    expect: &Expectations<'_>,
    out: &mut GlobalsDifferences,
) {
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
