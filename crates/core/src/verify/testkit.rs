//! The conformance suite every [`Verifier`] must pass (feature `testkit`): run it on a
//! restored database with the evidence of its backup. It panics on a violation, as
//! tests do.

// A conformance suite reports a violation by panicking.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use crate::evidence::Fingerprint;
use crate::verify::{Restored, Verifier};

/// Runs `verifier` twice on `restored` and checks what its contract promises: the
/// same checks both times, each named `name()` or `name():<subject>` once, each with
/// a detail, and the database unchanged. Returns the checks' pass/fail pattern so a
/// caller can also assert the verdict it expects.
pub async fn check_contract(verifier: &dyn Verifier, restored: &Restored<'_>) -> Vec<bool> {
    let before = Fingerprint::compute(restored.client).await.unwrap();
    let first = verifier.verify(restored).await.unwrap();
    let second = verifier.verify(restored).await.unwrap();
    let after = Fingerprint::compute(restored.client).await.unwrap();
    let name = verifier.name();
    assert!(!name.is_empty(), "a verifier needs a name");
    assert_eq!(
        before.tables, after.tables,
        "verifier {name} modified the restored database"
    );
    assert_eq!(
        first, second,
        "verifier {name} gave different checks on the same database"
    );
    let mut seen = BTreeSet::new();
    for check in &first {
        assert!(
            check.name == name || check.name.starts_with(&format!("{name}:")),
            "check {:?} of verifier {name} is not named {name} or {name}:<subject>",
            check.name
        );
        assert!(
            seen.insert(&check.name),
            "check {:?} appears twice",
            check.name
        );
        assert!(
            !check.detail.is_empty(),
            "check {:?} has no detail",
            check.name
        );
    }
    first.iter().map(|c| c.passed).collect()
}
