//! The audit chain of the restored database, byte for byte against the snapshot.

use async_trait::async_trait;

use crate::error::Result;
use crate::evidence::audit;
use crate::verify::{Check, Restored, Verifier};

/// The audit chain: row count and head hash equal to the dump's snapshot, the
/// chain's own verify function clean, every row walked.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditChain;

#[async_trait]
impl Verifier for AuditChain {
    fn name(&self) -> &str {
        "audit-chain"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let Some(expected) = r
            .manifest
            .fingerprint
            .as_ref()
            .and_then(|f| f.audit_chain.as_ref())
        else {
            return Ok(Vec::new());
        };
        let Some(report) = audit::verify_chain(r.client).await? else {
            return Ok(vec![Check::fail(
                "audit-chain",
                "the backup had an audit chain but the restored database has none",
            )]);
        };
        let found = audit::chain_state(r.client).await?;
        let mut checks = Vec::new();
        let (rows, head) = found
            .as_ref()
            .map_or((-1, String::new()), |c| (c.rows, c.head_hash.clone()));
        checks.push(if rows == expected.rows {
            Check::pass("audit-chain:rows", format!("{rows} rows"))
        } else {
            Check::fail(
                "audit-chain:rows",
                format!("expected {} rows, found {rows}", expected.rows),
            )
        });
        checks.push(if head == expected.head_hash {
            Check::pass(
                "audit-chain:head",
                format!("head {head} at seq {}", expected.last_seq),
            )
        } else {
            Check::fail(
                "audit-chain:head",
                format!("expected head {}, found {head}", expected.head_hash),
            )
        });
        checks.push(match &report.first_break {
            None if report.head_matches => Check::pass(
                "audit-chain:verify",
                format!("chain intact through seq {}", report.last_seq),
            ),
            None => Check::fail(
                "audit-chain:verify",
                format!(
                    "chain ends at seq {} but its head says seq {}: rows were cut from the tail",
                    report.last_seq, report.head_seq
                ),
            ),
            Some(b) => Check::fail(
                "audit-chain:verify",
                format!("first break at seq {} (id {}): {}", b.seq, b.id, b.reason),
            ),
        });
        checks.push(if report.rows_walked == expected.rows {
            Check::pass(
                "audit-chain:walked",
                format!("{} rows walked", report.rows_walked),
            )
        } else {
            Check::fail(
                "audit-chain:walked",
                format!(
                    "walked {} rows, expected {}",
                    report.rows_walked, expected.rows
                ),
            )
        });
        Ok(checks)
    }
}
