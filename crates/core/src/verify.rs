//! The [`Verifier`] trait: checks run against a restored database.
//!
//! Implementations (archive integrity, fingerprint comparison, audit chain) come with
//! the proof work; the trait's shape is fixed here so the pipeline can call them.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::Result;
use crate::manifest::Manifest;

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Short name, e.g. `fingerprint:public.orders`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Figures or the precise difference (expected vs found).
    pub detail: String,
}

/// Checks a restored database against what the manifest promises.
///
/// An implementation:
/// - MUST return one [`Check`] per thing it examined, passed or not, with figures, so a
///   report shows what was proven and not only what failed;
/// - MUST describe a failure precisely (which table or row, expected vs found);
/// - MUST NOT modify the restored database;
/// - MUST return `Err` only when it could not run (connection lost, …), never for a
///   failed check.
#[async_trait]
pub trait Verifier: Send + Sync {
    /// Name for reports, e.g. `fingerprint`.
    fn name(&self) -> &'static str;

    /// Runs the checks against `restored`, a connection to the restored database.
    async fn verify(&self, manifest: &Manifest, restored: &Client) -> Result<Vec<Check>>;
}
