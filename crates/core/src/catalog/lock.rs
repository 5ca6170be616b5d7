//! The commit lock: backups of one database commit their manifests one at a time, so
//! each links to the manifest committed just before it and the chain stays a line
//! however many backups overlap (a cron overlap, a manual run beside the timer).
//!
//! The lock is a small create-only object, `<database>/_commit.lock`, holding its
//! owner and an expiry. Only the commit step (read the newest manifest, write the new
//! one) runs under it, which takes well under a second; a holder that died leaves a
//! lock that expires after [`LOCK_TTL`] and is then taken over.

use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Sink, SinkExt};

/// How long a lock stays valid; a holder that died blocks others at most this long.
pub const LOCK_TTL: Duration = Duration::from_secs(60);

/// How long a commit waits for the lock before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize, Deserialize)]
struct LockRecord {
    owner: String,
    expires_at: Timestamp,
}

/// A held commit lock; [`release`](CommitLock::release) it when the manifest is
/// written (a lock that is not released expires).
#[derive(Debug)]
pub struct CommitLock {
    key: String,
}

/// How many stale or untrusted locks one commit takes over before it stops: a lock
/// that reappears as fast as it is removed is someone's doing, not a dead run's.
const MAX_TAKEOVERS: u32 = 5;

/// Removes a lock that is expired, too long, or not trusted, pausing a little after.
async fn take_over(sink: &dyn Sink, key: &str, takeovers: &mut u32) -> Result<()> {
    *takeovers += 1;
    if *takeovers > MAX_TAKEOVERS {
        return Err(Error::integrity(format!(
            "the commit lock {key} in {} was replaced by an expired or untrusted one {MAX_TAKEOVERS} times while this backup tried to commit; something writes it on purpose: find out what (bucket access logs), then back up again",
            sink.describe()
        ))
        .with_object(key));
    }
    match sink.delete(key).await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

impl CommitLock {
    /// Takes the commit lock of `database`, waiting while another run holds it and
    /// taking over a lock whose holder let it expire. `owner` says who holds it (for
    /// the message another run shows while it waits).
    pub async fn acquire(sink: &dyn Sink, database: &str, owner: &str) -> Result<Self> {
        Self::acquire_within(sink, database, owner, LOCK_WAIT).await
    }

    /// [`acquire`](Self::acquire) with a chosen wait.
    pub async fn acquire_within(
        sink: &dyn Sink,
        database: &str,
        owner: &str,
        wait: Duration,
    ) -> Result<Self> {
        let key = crate::catalog::layout::lock(database);
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut takeovers = 0u32;
        loop {
            let record = LockRecord {
                owner: owner.to_owned(),
                expires_at: Timestamp::now()
                    + jiff::SignedDuration::try_from(LOCK_TTL).unwrap_or_default(),
            };
            let body = serde_json::to_vec(&record)
                .map_err(|e| Error::tool(format!("cannot serialize the commit lock: {e}")))?;
            let held_by = match sink.put_bytes(&key, Bytes::from(body)).await {
                Ok(_) => return Ok(Self { key }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let read = sink.get_bytes(&key, 64 << 10).await;
                    let now = Timestamp::now();
                    let longest = now
                        + jiff::SignedDuration::try_from(LOCK_TTL).unwrap_or_default()
                        + crate::catalog::CLOCK_SKEW;
                    match read {
                        Err(e) if e.kind() == ErrorKind::Integrity => {
                            tracing::warn!(lock = %key, problem = %e, "taking over a commit lock no trusted key signed");
                            take_over(sink, &key, &mut takeovers).await?;
                            continue;
                        }
                        Ok(bytes) => match serde_json::from_slice::<LockRecord>(&bytes) {
                            Ok(held) if held.expires_at > now && held.expires_at <= longest => {
                                held.owner
                            }
                            // Expired, valid for longer than a lock is, or not a lock
                            // pgproof wrote: take it over.
                            _ => {
                                tracing::warn!(lock = %key, "taking over an expired commit lock");
                                take_over(sink, &key, &mut takeovers).await?;
                                continue;
                            }
                        },
                        // Released between the two requests.
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if started.elapsed() >= wait {
                return Err(Error::exhausted(format!(
                    "the commit lock {key} in {} has been held by {held_by} for more than {}s; if no other pgproof run is committing a backup of {database}, delete that object",
                    sink.describe(),
                    wait.as_secs()
                ))
                .with_object(key));
            }
            tracing::debug!(lock = %key, holder = %held_by, "waiting for the commit lock");
            // Spread the waiters so they do not retry in step.
            let jitter = Duration::from_millis(u64::from(
                Timestamp::now().subsec_nanosecond().unsigned_abs() % 50,
            ));
            tokio::time::sleep(pause + jitter).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Releases the lock. A failure only delays the next commit until the lock expires,
    /// so it is logged, not returned.
    pub async fn release(self, sink: &dyn Sink) {
        if let Err(e) = sink.delete(&self.key).await {
            tracing::warn!(lock = %self.key, error = %e, "could not release the commit lock; it expires by itself");
        }
    }
}
