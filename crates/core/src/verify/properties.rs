//! The database-level verifiers: its properties (encoding, locale, owner, settings,
//! comment), the roles it needs, and the application's invariants.

use async_trait::async_trait;

use crate::error::{ErrorKind, Result};
use crate::evidence::database::{normalized, read_properties, read_roles, role_differences};
use crate::evidence::invariant::Invariant;
use crate::verify::{Check, Restored, Verifier};

/// The restored database's encoding, locale, owner, settings and comment are the
/// source's: one check, `database`. A backup taken before pgproof recorded them gives
/// no check.
#[derive(Clone, Copy, Debug, Default)]
pub struct DatabaseProperties;

#[async_trait]
impl Verifier for DatabaseProperties {
    fn name(&self) -> &str {
        "database"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let Some(recorded) = &r.manifest.properties else {
            return Ok(Vec::new());
        };
        let found = normalized(&read_properties(r.client).await?, r.client).await?;
        let differences = normalized(recorded, r.client).await?.differences(&found);
        Ok(vec![if differences.is_empty() {
            Check::pass(
                self.name(),
                format!(
                    "encoding {}, LC_COLLATE {:?}, LC_CTYPE {:?}, provider {}, owner {}, {} settings, comment as recorded",
                    found.encoding,
                    found.collate,
                    found.ctype,
                    found.locale_provider,
                    found.owner,
                    found.settings.len()
                        + found.role_settings.values().map(Vec::len).sum::<usize>()
                ),
            )
        } else {
            Check::fail(self.name(), differences.join("; "))
        }])
    }
}

/// Every role the database needs exists on the restored server: one check, `roles`.
/// Attributes or memberships that differ are named in its detail for information:
/// pgproof creates missing roles as recorded, so a role that differs was the server's
/// own (a managed service's admin role, a shared scratch server's), not the backup's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Roles;

#[async_trait]
impl Verifier for Roles {
    fn name(&self) -> &str {
        "roles"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let needed = r.manifest.roles.iter().filter(|r| r.needed).count();
        if needed == 0 {
            return Ok(Vec::new());
        }
        let found = read_roles(r.client).await?;
        let differences = role_differences(&r.manifest.roles, &found);
        if !differences.missing.is_empty() {
            return Ok(vec![Check::fail(
                self.name(),
                format!(
                    "roles the database needs are missing: {}",
                    differences.missing.join(", ")
                ),
            )]);
        }
        let mut detail = format!("{needed} roles the database needs exist on the restore's server");
        if differences.differing.is_empty() {
            detail.push_str(", with their recorded attributes and memberships");
        } else {
            detail.push_str(&format!(
                "; the server's own roles differ (information): {}",
                differences.differing.join("; ")
            ));
        }
        Ok(vec![Check::pass(self.name(), detail)])
    }
}

/// The application's invariant queries: each one recorded at backup is run again on
/// the restore and must give the same result (and the expected one, when one was
/// given); invariants configured only now must give their expected result. One check
/// per invariant, `invariant:<name>`.
#[derive(Clone, Debug, Default)]
pub struct Invariants {
    configured: Vec<Invariant>,
}

impl Invariants {
    /// Also runs `configured` (by name, replacing a recorded one's query).
    pub fn new(configured: Vec<Invariant>) -> Self {
        Self { configured }
    }
}

#[async_trait]
impl Verifier for Invariants {
    fn name(&self) -> &str {
        "invariant"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let mut checks = Vec::new();
        let recorded = &r.manifest.invariants;
        let mut names: Vec<&str> = recorded.iter().map(|i| i.invariant.name.as_str()).collect();
        for c in &self.configured {
            if !names.contains(&c.name.as_str()) {
                names.push(&c.name);
            }
        }
        for name in names {
            let at_backup = recorded.iter().find(|i| i.invariant.name == name);
            let configured = self.configured.iter().find(|c| c.name == name);
            let check_name = format!("invariant:{name}");
            // The comparison with the source runs the query the source ran; a query
            // configured since under the same name is held only to its `expect`.
            let mut runs: Vec<&Invariant> = at_backup.map(|i| &i.invariant).into_iter().collect();
            if let Some(c) = configured
                && at_backup.is_none_or(|i| i.invariant.sql != c.sql)
            {
                runs.push(c);
            }
            let mut problems = Vec::new();
            let mut shown = None;
            for invariant in runs {
                let outcome = match invariant.run(r.client).await {
                    Ok(outcome) => outcome,
                    // A query the restore cannot answer is a verdict (the restore lacks
                    // what the source had); a lost connection is not.
                    Err(e) if e.kind() == ErrorKind::Config => {
                        problems.push(e.to_string());
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if let Some(source) = at_backup.filter(|s| s.invariant.sql == invariant.sql) {
                    if source.as_expected == Some(false) {
                        problems.push(
                            "the source already broke it at backup time (its result was not the expected one)"
                                .to_owned(),
                        );
                    }
                    if source.sha256 != outcome.sha256() {
                        problems.push(format!(
                            "the restore returned {} rows, {} (sha256 {}), the source {} rows (sha256 {})",
                            outcome.rows,
                            outcome.shown(),
                            outcome.sha256(),
                            source.rows,
                            source.sha256
                        ));
                    }
                }
                let expected = configured
                    .filter(|c| c.sql == invariant.sql)
                    .unwrap_or(invariant);
                if outcome.as_expected(expected) == Some(false) {
                    problems.push(format!(
                        "returned {}, expected {:?}",
                        outcome.shown(),
                        expected.expect.as_deref().unwrap_or_default()
                    ));
                }
                shown.get_or_insert(outcome);
            }
            checks.push(match (problems.is_empty(), shown) {
                (true, Some(outcome)) => Check::pass(
                    check_name,
                    format!(
                        "{} rows (sha256 {}){}",
                        outcome.rows,
                        outcome.sha256(),
                        if at_backup.is_some() {
                            ", as at backup time"
                        } else {
                            ", not recorded at backup time"
                        }
                    ),
                ),
                _ => Check::fail(check_name, problems.join("; ")),
            });
        }
        Ok(checks)
    }
}
