//! The content verifiers: tables, sequences and large objects of the restored database
//! against the fingerprint taken in the dump's snapshot.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::error::Result;
use crate::evidence::fingerprint::{
    self, Fingerprint, Method, TableFingerprint, sequence_differences, table_differences,
};
use crate::verify::{Check, Restored, Verifier};

/// The recorded fingerprint and its method, or the one failed check that says why
/// there is none to compare with.
fn recorded<'a>(
    r: &'a Restored<'_>,
    name: &str,
) -> std::result::Result<(&'a Fingerprint, Method), Check> {
    let Some(expected) = &r.manifest.fingerprint else {
        return Err(Check::fail(
            name,
            "the manifest holds no fingerprint, so the restore cannot be compared",
        ));
    };
    match Method::parse(&expected.method) {
        Some(method) => Ok((expected, method)),
        None => Err(Check::fail(
            name,
            format!(
                "the manifest's fingerprint method {} is unknown to this version (it knows up to {}); verify with the pgproof version that wrote it",
                expected.method,
                fingerprint::METHOD
            ),
        )),
    }
}

/// Every table's row count and content hash, recomputed on the restore and compared
/// with the snapshot's: one check per table, named `fingerprint:<table>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableFingerprints;

#[async_trait]
impl Verifier for TableFingerprints {
    fn name(&self) -> &str {
        "fingerprint"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let (expected, method) = match recorded(r, self.name()) {
            Ok(f) => f,
            Err(check) => return Ok(vec![check]),
        };
        // Recomputed the way the backup's fingerprint was taken; on several
        // connections when the restore can be reached again (nothing else runs on it
        // now, so every core helps).
        let found = match r.target {
            Some(target) => {
                let connections = fingerprint::hashing_connections();
                Fingerprint::tables_parallel(target, method, connections, r.hashed_while_restoring)
                    .await?
            }
            None => Fingerprint::compute_with(r.client, method).await?,
        };
        let mut checks = compare_relations("fingerprint", &expected.tables, &found.tables, "");
        // A restore does not copy a materialized view's rows, it re-runs its query: a
        // difference is named as such, apart from the tables.
        checks.extend(compare_relations(
            "materialized-view",
            &expected.materialized_views,
            &found.materialized_views,
            " (the restore recomputed the view from its query; its stored contents at backup time were different)",
        ));
        if checks.is_empty() {
            checks.push(Check::pass(self.name(), "no tables recorded, none found"));
        }
        Ok(checks)
    }
}

/// One check per relation: `<prefix>:<name>`, failed with `hint` appended where the
/// restore differs.
pub(crate) fn compare_relations(
    prefix: &str,
    expected: &BTreeMap<String, TableFingerprint>,
    found: &BTreeMap<String, TableFingerprint>,
    hint: &str,
) -> Vec<Check> {
    let differences = table_differences(expected, found);
    let mut checks: Vec<Check> = expected
        .iter()
        .filter(|(name, _)| !differences.iter().any(|d| &d.subject == *name))
        .map(|(name, t)| {
            let mut detail = format!("{} rows, hash {}", t.rows, t.hash);
            if let Some(now) = found.get(name)
                && !now.partitions.is_empty()
            {
                detail.push_str(&format!("; rows per partition {:?}", now.partitions));
                if now.partitions != t.partitions && !t.partitions.is_empty() {
                    detail.push_str(&format!(
                        " (at backup {:?}: the restore routed rows to other partitions)",
                        t.partitions
                    ));
                }
            }
            Check::pass(format!("{prefix}:{name}"), detail)
        })
        .collect();
    checks.extend(differences.into_iter().map(|d| {
        Check::fail(
            format!("{prefix}:{}", d.subject),
            format!("expected {}, found {}{hint}", d.expected, d.found),
        )
    }));
    checks
}

/// Every sequence at or past the value read in the snapshot (sequences are not
/// transactional, so a busy one may have moved on while pg_dump ran, never back).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequences;

#[async_trait]
impl Verifier for Sequences {
    fn name(&self) -> &str {
        "sequences"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let (expected, _) = match recorded(r, self.name()) {
            Ok(f) => f,
            Err(check) => return Ok(vec![check]),
        };
        let found = fingerprint::sequences(r.client).await?;
        let differences = sequence_differences(&expected.sequences, &found);
        if differences.is_empty() {
            return Ok(vec![Check::pass(
                self.name(),
                format!(
                    "{} sequences at or past their recorded values",
                    expected.sequences.len()
                ),
            )]);
        }
        Ok(differences
            .into_iter()
            .map(|d| {
                Check::fail(
                    format!("sequences:{}", d.subject),
                    format!("expected {}, found {}", d.expected, d.found),
                )
            })
            .collect())
    }
}

/// The number of large objects equals the snapshot's.
#[derive(Clone, Copy, Debug, Default)]
pub struct LargeObjects;

#[async_trait]
impl Verifier for LargeObjects {
    fn name(&self) -> &str {
        "large-objects"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let (expected, _) = match recorded(r, self.name()) {
            Ok(f) => f,
            Err(check) => return Ok(vec![check]),
        };
        let found = fingerprint::large_objects(r.client).await?;
        let mut check = Check::judge(
            self.name(),
            found == expected.large_objects,
            format!(
                "{} large objects recorded, {found} found",
                expected.large_objects
            ),
        );
        if check.passed
            && let Some(recorded) = &expected.large_object_hash
        {
            let hash = fingerprint::large_object_hash(r.client).await?;
            check = Check::judge(
                self.name(),
                &hash == recorded,
                if &hash == recorded {
                    format!(
                        "{found} large objects, contents, owners and ACLs as recorded (hash {hash})"
                    )
                } else {
                    format!(
                        "{found} large objects as recorded, but their contents, owners or ACLs differ: expected hash {recorded}, found {hash}"
                    )
                },
            );
        }
        Ok(vec![check])
    }
}
