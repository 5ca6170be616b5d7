//! The database-level verifiers: its properties (encoding, locale, owner, settings,
//! comment), the roles it needs, and the application's invariants.

use async_trait::async_trait;

use crate::error::Result;
use crate::evidence::database::{read_properties, read_roles, role_differences};
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
        let found = read_properties(r.client).await?;
        let differences = recorded.differences(&found);
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

/// Every role the database needs exists on the restored server with the recorded
/// attributes and memberships: one check, `roles`.
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
        Ok(vec![Check::judge(
            self.name(),
            differences.is_empty(),
            if differences.is_empty() {
                format!("{needed} roles the database needs, with their attributes and memberships")
            } else {
                differences.join("; ")
            },
        )])
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
            let invariant = self
                .configured
                .iter()
                .find(|c| c.name == name)
                .or(at_backup.map(|i| &i.invariant));
            let Some(invariant) = invariant else { continue };
            let check_name = format!("invariant:{name}");
            let outcome = match invariant.run(r.client).await {
                Ok(outcome) => outcome,
                // A query that cannot run on the restore is a verdict: the restore
                // lacks what the source had.
                Err(e) => {
                    checks.push(Check::fail(check_name, e.to_string()));
                    continue;
                }
            };
            let mut problems = Vec::new();
            if let Some(source) = at_backup {
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
            if outcome.as_expected(invariant) == Some(false) {
                problems.push(format!(
                    "returned {}, expected {:?}",
                    outcome.shown(),
                    invariant.expect.as_deref().unwrap_or_default()
                ));
            }
            checks.push(if problems.is_empty() {
                Check::pass(
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
                )
            } else {
                Check::fail(check_name, problems.join("; "))
            });
        }
        Ok(checks)
    }
}
