//! Verify claims: which worker of a pool verifies a backup now.
//!
//! Several `verify` workers may share one catalog (processes on one host, pods of a
//! Kubernetes Job). Before a worker restores a backup it claims it, and no other
//! worker verifies that backup while the claim lives. A sink has one atomic
//! operation, the create-only put, and no conditional delete, so a claim is not one
//! object that is replaced but a line of them, one per generation:
//! `<db>/<id>/claim/<generation>.json` (signed, like every catalog object), holding
//! its holder and an expiry.
//!
//! - **The top decides.** Only the highest generation listed can hold the backup, and
//!   only while it is trusted, not released and not expired.
//! - **Taking** reads the top: a live one means the backup is busy; an expired,
//!   released or untrusted one (or none) lets a worker create the next generation,
//!   create-only, so of the workers that saw the same top exactly one wins. The
//!   winner then lists again: a generation above its own (its listing was older than
//!   a holder's renewals) means it lost after all, and it withdraws.
//! - **Renewing** is taking the next generation oneself, before the claim expires
//!   (every third of its lifetime). If that create finds the key taken, another
//!   worker judged the claim expired and took the backup over: the holder stops its
//!   verification and records nothing.
//! - **Releasing** creates one more generation marked released, then deletes the
//!   lower generations it can read as trusted ones. The top is never deleted, so
//!   generation numbers only grow and a stale listing can never win a key above a
//!   live claim; the only keys a late creator can win are deleted ones below the top,
//!   which its second listing sees through.
//! - **Not believed, not obeyed.** A claim no trusted key signed for its key, one for
//!   another backup or generation, or one claiming to last longer than
//!   [`MAX_CLAIM_TTL`] holds nothing: it is treated as expired (and reported), so a
//!   forged claim cannot keep a backup from being verified. It is never deleted: it
//!   is evidence.
//!
//! A worker killed mid-verify leaves a live claim that expires after its TTL; the
//! next worker that reads it takes the backup over.

use std::time::Duration;

use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::catalog::MANIFEST_LIMIT;
use crate::catalog::layout;
use crate::catalog::records::{CLOCK_SKEW, parse, refuse};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Sink, SinkExt};

/// The longest a claim may last without renewal; a claim that says longer is refused.
pub const MAX_CLAIM_TTL: Duration = Duration::from_secs(24 * 3600);

/// The shortest claim lifetime: renewals come every third of it.
pub const MIN_CLAIM_TTL: Duration = Duration::from_secs(3);

/// How many times one attempt to take a backup re-reads a top that moved under it
/// before it calls the backup busy.
const TAKE_ATTEMPTS: u32 = 5;

/// One generation of a backup's claim, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The database.
    pub database: String,
    /// The backup.
    pub backup_id: String,
    /// Its generation (also in its key).
    pub generation: u64,
    /// Who holds it (`verify worker on HOST, pid N`).
    pub holder: String,
    /// When this generation was written.
    pub claimed_at: Timestamp,
    /// When it stops holding the backup unless renewed.
    pub expires_at: Timestamp,
    /// Given back: holds nothing.
    #[serde(default)]
    pub released: bool,
}

impl Claim {
    /// Refuses a claim that lies about where it is stored, was written in the future,
    /// or claims to last longer than [`MAX_CLAIM_TTL`].
    pub fn check(
        &self,
        database: &str,
        backup_id: &str,
        generation: u64,
        now: Timestamp,
        key: &str,
    ) -> Result<()> {
        if self.database != database || self.backup_id != backup_id || self.generation != generation
        {
            return Err(refuse(
                key,
                format!(
                    "describes generation {} of {}/{}",
                    self.generation, self.database, self.backup_id
                ),
            ));
        }
        if self.claimed_at > now + CLOCK_SKEW {
            return Err(refuse(
                key,
                format!("says claimed_at {}, in the future", self.claimed_at),
            ));
        }
        let longest = SignedDuration::try_from(MAX_CLAIM_TTL).unwrap_or_default();
        if self.expires_at > now + longest + CLOCK_SKEW {
            return Err(refuse(
                key,
                format!(
                    "claims the backup until {}, longer than a claim may last ({}h)",
                    self.expires_at,
                    MAX_CLAIM_TTL.as_secs() / 3600
                ),
            ));
        }
        Ok(())
    }

    /// Whether it holds the backup at `now`.
    pub fn live(&self, now: Timestamp) -> bool {
        !self.released && self.expires_at > now
    }
}

/// What [`VerifyClaim::take`] got.
#[derive(Debug)]
pub enum Taken {
    /// This worker holds the backup now.
    Claimed(VerifyClaim),
    /// Another worker does.
    Busy {
        /// Who.
        holder: String,
        /// Until when, unless renewed.
        expires_at: Timestamp,
    },
}

/// A held claim on one backup: renew it every [`renew_every`](Self::renew_every),
/// check it with [`holds`](Self::holds) before acting as its holder, give it back
/// with [`release`](Self::release).
#[derive(Debug)]
pub struct VerifyClaim {
    database: String,
    backup_id: String,
    holder: String,
    ttl: Duration,
    generation: u64,
    expires_at: Timestamp,
}

/// What reading the top generation found.
enum Top {
    /// No generation at all.
    Empty,
    /// A trusted claim that holds the backup.
    Live(Claim),
    /// Expired, released or not believed: the next generation is free to take.
    Free(u64),
    /// Gone between the listing and the read: list again.
    Moved,
}

impl VerifyClaim {
    /// Tries to claim `database`/`backup_id` for `ttl` as `holder`. Claims that are not
    /// believed are pushed to `untrusted` (and treated as expired).
    pub async fn take(
        sink: &dyn Sink,
        database: &str,
        backup_id: &str,
        holder: &str,
        ttl: Duration,
        untrusted: &mut Vec<Error>,
    ) -> Result<Taken> {
        check_claim_ttl(ttl)?;
        for _ in 0..TAKE_ATTEMPTS {
            let generations = generations(sink, database, backup_id).await?;
            let next = match top(sink, database, backup_id, &generations, untrusted).await? {
                Top::Empty => 1,
                Top::Live(claim) => {
                    return Ok(Taken::Busy {
                        holder: claim.holder,
                        expires_at: claim.expires_at,
                    });
                }
                Top::Free(generation) => generation.checked_add(1).ok_or_else(|| {
                    let key = layout::claim(database, backup_id, generation);
                    Error::integrity(format!(
                        "{key} holds the largest generation a claim can have; pgproof never writes it: find who did (bucket access logs), then delete it"
                    ))
                    .with_object(key)
                })?,
                Top::Moved => continue,
            };
            let mut claim = Self {
                database: database.to_owned(),
                backup_id: backup_id.to_owned(),
                holder: holder.to_owned(),
                ttl,
                generation: next,
                expires_at: Timestamp::now(),
            };
            match claim.create(sink, next, false).await {
                Ok(expires_at) => claim.expires_at = expires_at,
                // Another worker took this generation first: read what it holds.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            if claim.on_top(sink).await? {
                tracing::debug!(database, backup_id, generation = next, "claimed");
                return Ok(Taken::Claimed(claim));
            }
            // Won a key below the top (a generation deleted since this worker's
            // listing): not a claim. Withdraw it and read the top again.
            claim.delete_own(sink, next).await;
        }
        Ok(Taken::Busy {
            holder: "other workers (the claim kept changing while it was read)".into(),
            expires_at: Timestamp::now(),
        })
    }

    /// The backup's database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The backup's id.
    pub fn backup_id(&self) -> &str {
        &self.backup_id
    }

    /// The generation held now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the claim expires unless renewed.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// The lifetime each generation is given.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often to [`renew`](Self::renew): a third of the lifetime, so a renewal that
    /// fails once is retried before the claim expires.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Extends the claim by creating the next generation. `Ok(false)`: another worker
    /// took the backup over (it judged this claim expired); stop working on it.
    pub async fn renew(&mut self, sink: &dyn Sink) -> Result<bool> {
        let next = self
            .generation
            .checked_add(1)
            .ok_or_else(|| Error::integrity("a claim's generation overflowed"))?;
        let expires_at = match self.create(sink, next, false).await {
            Ok(at) => at,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        };
        let old = self.generation;
        self.generation = next;
        self.expires_at = expires_at;
        if !self.on_top(sink).await? {
            return Ok(false);
        }
        // Below the top now: nothing reads it any more.
        self.delete_own(sink, old).await;
        Ok(true)
    }

    /// Whether this worker still holds the backup, for at least `margin` more: its
    /// generation is the top one and has not expired. Asked just before a result is
    /// recorded.
    pub async fn holds(&self, sink: &dyn Sink, margin: Duration) -> Result<bool> {
        let margin = SignedDuration::try_from(margin).unwrap_or_default();
        Ok(self.expires_at > Timestamp::now() + margin && self.on_top(sink).await?)
    }

    /// Gives the backup back: a released generation on top, then the trusted lower
    /// generations deleted. Failures are logged: an unreleased claim expires.
    pub async fn release(self, sink: &dyn Sink) {
        let Some(marker) = self.generation.checked_add(1) else {
            return;
        };
        match self.create(sink, marker, true).await {
            Ok(_) => {}
            // Taken over meanwhile: the top is someone else's.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return,
            Err(e) => {
                tracing::warn!(database = %self.database, backup_id = %self.backup_id, error = %e, "could not release a verify claim; it expires by itself");
                return;
            }
        }
        let Ok(generations) = generations(sink, &self.database, &self.backup_id).await else {
            return;
        };
        let now = Timestamp::now();
        for generation in generations.into_iter().filter(|g| *g < marker) {
            // Only what is believed: a forged claim stays as evidence.
            if read(sink, &self.database, &self.backup_id, generation, now)
                .await
                .is_ok()
            {
                self.delete_own(sink, generation).await;
            }
        }
    }

    /// Stores `generation` of this claim, create-only; returns its expiry.
    async fn create(&self, sink: &dyn Sink, generation: u64, released: bool) -> Result<Timestamp> {
        let now = Timestamp::now();
        let expires_at = if released {
            now
        } else {
            now + SignedDuration::try_from(self.ttl).unwrap_or_default()
        };
        let claim = Claim {
            database: self.database.clone(),
            backup_id: self.backup_id.clone(),
            generation,
            holder: self.holder.clone(),
            claimed_at: now,
            expires_at,
            released,
        };
        let body = serde_json::to_vec(&claim)
            .map_err(|e| Error::tool(format!("cannot serialize a verify claim: {e}")))?;
        sink.put_bytes(
            &layout::claim(&self.database, &self.backup_id, generation),
            Bytes::from(body),
        )
        .await?;
        Ok(expires_at)
    }

    /// Whether no generation above this claim's exists.
    async fn on_top(&self, sink: &dyn Sink) -> Result<bool> {
        let generations = generations(sink, &self.database, &self.backup_id).await?;
        Ok(generations
            .first()
            .is_none_or(|top| *top <= self.generation))
    }

    async fn delete_own(&self, sink: &dyn Sink, generation: u64) {
        let key = layout::claim(&self.database, &self.backup_id, generation);
        match sink.delete(&key).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => tracing::debug!(key, error = %e, "could not delete a claim generation"),
        }
    }
}

/// Refuses a claim lifetime outside [`MIN_CLAIM_TTL`]..=[`MAX_CLAIM_TTL`].
pub fn check_claim_ttl(ttl: Duration) -> Result<()> {
    if ttl < MIN_CLAIM_TTL || ttl > MAX_CLAIM_TTL {
        return Err(Error::config(format!(
            "a verify claim must last between {}s and {}h, not {}s",
            MIN_CLAIM_TTL.as_secs(),
            MAX_CLAIM_TTL.as_secs() / 3600,
            ttl.as_secs()
        )));
    }
    Ok(())
}

/// The well-formed claim generations of a backup, highest first.
async fn generations(sink: &dyn Sink, database: &str, backup_id: &str) -> Result<Vec<u64>> {
    let mut found: Vec<u64> = sink
        .list(&layout::claims(database, backup_id))
        .await?
        .iter()
        .filter_map(|o| layout::claim_generation(&o.key))
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    Ok(found)
}

/// Reads and checks one generation.
async fn read(
    sink: &dyn Sink,
    database: &str,
    backup_id: &str,
    generation: u64,
    now: Timestamp,
) -> Result<Claim> {
    let key = layout::claim(database, backup_id, generation);
    let body = sink.get_bytes(&key, MANIFEST_LIMIT).await?;
    let claim: Claim = parse(&key, &body)?;
    claim.check(database, backup_id, generation, now, &key)?;
    Ok(claim)
}

/// What the top of `generations` (highest first) says.
async fn top(
    sink: &dyn Sink,
    database: &str,
    backup_id: &str,
    generations: &[u64],
    untrusted: &mut Vec<Error>,
) -> Result<Top> {
    let Some(&generation) = generations.first() else {
        return Ok(Top::Empty);
    };
    let now = Timestamp::now();
    match read(sink, database, backup_id, generation, now).await {
        Ok(claim) if claim.live(now) => Ok(Top::Live(claim)),
        Ok(claim) => {
            if !claim.released {
                tracing::info!(database, backup_id, holder = %claim.holder, expired_at = %claim.expires_at, "taking over an expired verify claim");
            }
            Ok(Top::Free(generation))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Top::Moved),
        Err(e) if e.kind() == ErrorKind::Integrity => {
            tracing::warn!(database, backup_id, problem = %e, "a verify claim is not trusted; it holds nothing");
            untrusted.push(e);
            Ok(Top::Free(generation))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(expires_in: i64) -> Claim {
        let now = Timestamp::now();
        Claim {
            database: "app".into(),
            backup_id: "1".into(),
            generation: 3,
            holder: "w".into(),
            claimed_at: now,
            expires_at: now + SignedDuration::from_secs(expires_in),
            released: false,
        }
    }

    #[test]
    fn a_claim_is_checked_against_where_it_lies_and_how_long_it_claims() {
        let now = Timestamp::now();
        assert!(claim(60).check("app", "1", 3, now, "k").is_ok());
        assert!(claim(60).live(now));
        assert!(!claim(-1).live(now));
        let released = Claim {
            released: true,
            ..claim(60)
        };
        assert!(!released.live(now));
        for (db, id, generation) in [("other", "1", 3), ("app", "2", 3), ("app", "1", 4)] {
            let e = claim(60).check(db, id, generation, now, "k").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
        }
        let forever = claim(10 * 24 * 3600);
        let e = forever.check("app", "1", 3, now, "k").unwrap_err();
        assert!(
            e.to_string().contains("longer than a claim may last"),
            "{e}"
        );
    }

    #[test]
    fn claim_lifetimes_are_bounded() {
        assert!(check_claim_ttl(Duration::from_secs(1)).is_err());
        assert!(check_claim_ttl(Duration::from_secs(300)).is_ok());
        assert!(check_claim_ttl(MAX_CLAIM_TTL + Duration::from_secs(1)).is_err());
    }
}
