//! A lease in a JetStream key-value bucket: at most one holder at a time, taken over
//! by the next contender once a holder stops renewing it. The writer takes one before
//! it runs goose, so that replicas starting together migrate one after the other
//! (goose has no lock of its own for ClickHouse).
//!
//! Contract:
//!
//! * The bucket keeps one revision per key, and its `max_age` is the lease's TTL:
//!   every revision expires TTL after the server stored it.
//! * [`Bucket::open`] finds or creates the bucket, retrying until its deadline (the
//!   writer's start-up deadline: like connecting, it fails fast when JetStream does not
//!   answer).
//! * [`Bucket::acquire`] takes the lease with `kv.create`, which the server refuses
//!   while the key holds a live value, so two contenders can never both succeed. A
//!   contender that is refused waits, polling, and reports who holds the lease (the
//!   holder's value: host, pid, since when) until it gets it or its deadline passes.
//! * [`Lease::run`] runs the work while renewing the lease every TTL/3 with
//!   `kv.update` against the revision it last wrote, so a holder that lost the lease
//!   never overwrites its successor's. If the lease cannot be renewed before 3/4 of
//!   the TTL has passed since the last renewal (NATS unreachable), or the key was
//!   taken over, the work is dropped at once (goose runs with `kill_on_drop`) and
//!   [`LeaseError::Lost`] returned: the work never runs past the lease.
//! * A holder that dies stops renewing: its lease expires within the TTL and the next
//!   contender takes it. When the work is over the lease is deleted (only if it is
//!   still ours), so a waiting contender gets it at its next poll.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::time::Instant;

/// Where the lease lives and how long it survives its holder.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The key-value bucket (created on first use with `max_age` = `ttl`).
    pub bucket: String,
    /// The key within the bucket: one lease per key.
    pub key: String,
    /// How long a lease outlives its last renewal.
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Retryable: JetStream did not answer or refused the bucket.
    #[error(
        "the lease bucket {bucket:?} in JetStream is not usable: {detail}; the NATS user needs \
         JetStream access to create and use key-value buckets (streams named KV_*)"
    )]
    Bucket { bucket: String, detail: String },
    /// Retryable: another holder kept the lease until the deadline.
    #[error(
        "the lease {key:?} was still held by {holder} after waiting {waited:?}; if that holder \
         is gone, the lease expires within its TTL"
    )]
    TimedOut {
        key: String,
        holder: String,
        waited: Duration,
    },
    /// Retryable (the next attempt resumes the work): the lease could not be renewed in
    /// time, or was taken over, and the work was stopped.
    #[error("lost the lease {key:?} while holding it: {detail}")]
    Lost { key: String, detail: String },
}

/// Who holds the lease, as a contender sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder(pub String);

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// This process, as the lease's value names it: host and pid.
pub fn this_process() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host} pid {}", std::process::id())
}

/// How often a waiting contender tries again: often enough to take a released lease
/// promptly, rarely enough to cost nothing.
fn poll_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// How often a waiting contender logs who holds the lease (and whenever that changes).
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// A held lease. Dropping it without [`Lease::run`] leaves it to expire.
pub struct Lease {
    kv: kv::Store,
    key: String,
    value: Bytes,
    revision: u64,
    ttl: Duration,
    renewed_at: Instant,
}

/// [`Bucket::open`] then [`Bucket::acquire`], both against `deadline`.
pub async fn acquire(
    js: &jetstream::Context,
    config: &LeaseConfig,
    holder: &str,
    deadline: Instant,
    waiting: impl FnMut(&Holder),
) -> Result<Lease, LeaseError> {
    Bucket::open(js, config, deadline)
        .await?
        .acquire(holder, deadline, waiting)
        .await
}

/// The bucket the lease lives in, and the lease's key and TTL.
pub struct Bucket {
    store: kv::Store,
    config: LeaseConfig,
    ttl: Duration,
}

impl Bucket {
    /// Finds the bucket, or creates it (two contenders creating it at once both
    /// succeed: the same stream configuration twice). JetStream not answering is
    /// retried until `deadline`.
    pub async fn open(
        js: &jetstream::Context,
        config: &LeaseConfig,
        deadline: Instant,
    ) -> Result<Bucket, LeaseError> {
        let store = bucket(js, config, deadline).await?;
        // The bucket's own max_age governs expiry: an existing bucket made with another
        // TTL keeps it, and renewals must keep pace with that one.
        let ttl = match store.status().await {
            Ok(status) if !status.max_age().is_zero() => status.max_age(),
            _ => config.ttl,
        };
        if ttl != config.ttl {
            tracing::warn!(
                bucket = %config.bucket,
                bucket_ttl = ?ttl,
                configured_ttl = ?config.ttl,
                "the lease bucket exists with another max_age; using the bucket's"
            );
        }
        Ok(Bucket {
            store,
            config: config.clone(),
            ttl,
        })
    }

    /// Waits until the lease is free and takes it, or fails at `deadline`. The value
    /// stored while it is held is `holder` (see [`this_process`]) followed by
    /// ` since <UTC time it was taken>`; `waiting` is called with the current holder's
    /// value whenever the lease is found taken, for `/readyz`.
    pub async fn acquire(
        self,
        holder: &str,
        deadline: Instant,
        mut waiting: impl FnMut(&Holder),
    ) -> Result<Lease, LeaseError> {
        let Bucket { store, config, ttl } = self;
        let started = Instant::now();
        let mut last_report: Option<(Holder, Instant)> = None;
        loop {
            let attempt_at = Instant::now();
            let value = Bytes::from(format!(
                "{holder} since {}",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
            ));
            let refused = match store.create(&config.key, value.clone()).await {
                Ok(revision) => {
                    tracing::info!(
                        bucket = %config.bucket,
                        key = %config.key,
                        waited = ?started.elapsed(),
                        ttl = ?ttl,
                        "migration lease taken"
                    );
                    return Ok(Lease {
                        kv: store,
                        key: config.key.clone(),
                        value,
                        revision,
                        ttl,
                        renewed_at: attempt_at,
                    });
                }
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                    current_holder(&store, &config.key).await
                }
                Err(error) => Holder(format!("unknown (reading the lease failed: {error})")),
            };
            waiting(&refused);
            let report_due = match &last_report {
                None => true,
                Some((previous, at)) => *previous != refused || at.elapsed() >= REPORT_EVERY,
            };
            if report_due {
                tracing::info!(
                    key = %config.key,
                    held_by = %refused,
                    waited = ?started.elapsed(),
                    "waiting for the migration lease"
                );
                last_report = Some((refused.clone(), Instant::now()));
            }
            if Instant::now() >= deadline {
                return Err(LeaseError::TimedOut {
                    key: config.key.clone(),
                    holder: refused.0,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(
                poll_interval(ttl).min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }
}

async fn bucket(
    js: &jetstream::Context,
    config: &LeaseConfig,
    deadline: Instant,
) -> Result<kv::Store, LeaseError> {
    let mut pause = Duration::from_millis(200);
    loop {
        let attempt = async {
            match js.get_key_value(&config.bucket).await {
                Ok(store) => Ok(store),
                Err(_) => js
                    .create_key_value(kv::Config {
                        bucket: config.bucket.clone(),
                        description: "ponix-writer: who runs the migrations".to_owned(),
                        history: 1,
                        max_age: config.ttl,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|error| error.to_string()),
            }
        };
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let detail = match tokio::time::timeout(remaining, attempt).await {
            Ok(Ok(store)) => return Ok(store),
            Ok(Err(detail)) => detail,
            Err(_) => format!("no answer within {remaining:?}"),
        };
        if Instant::now() >= deadline {
            return Err(LeaseError::Bucket {
                bucket: config.bucket.clone(),
                detail,
            });
        }
        tracing::info!(bucket = %config.bucket, error = %detail, retry_in = ?pause, "lease bucket: not yet");
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn current_holder(store: &kv::Store, key: &str) -> Holder {
    match store.get(key).await {
        Ok(Some(value)) => Holder(String::from_utf8_lossy(&value).into_owned()),
        // Released or expired since the create was refused: the next attempt takes it.
        Ok(None) => Holder("nobody (just released)".to_owned()),
        Err(error) => Holder(format!("unknown (reading the lease failed: {error})")),
    }
}

impl Lease {
    /// The key's revision this holder wrote last.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Runs `work` while keeping the lease, then releases it. If the lease is lost
    /// meanwhile, `work` is dropped unfinished and the error returned.
    pub async fn run<T>(mut self, work: impl Future<Output = T>) -> Result<T, LeaseError> {
        let output = {
            let renewing = self.keep();
            tokio::pin!(renewing, work);
            tokio::select! {
                output = &mut work => output,
                lost = &mut renewing => return Err(lost),
            }
        };
        self.release().await;
        Ok(output)
    }

    /// Renews until the lease is lost; returns why. Never returns while renewing works.
    async fn keep(&mut self) -> LeaseError {
        let every = self.ttl / 3;
        // Past this age without a renewal, the lease may expire before the next
        // attempt: stop working before anyone else can start.
        let give_up_after = self.ttl.mul_f64(0.75);
        loop {
            tokio::time::sleep_until(self.renewed_at + every).await;
            loop {
                let attempt_at = Instant::now();
                let remaining = give_up_after.saturating_sub(self.renewed_at.elapsed());
                let result = tokio::time::timeout(
                    remaining,
                    self.kv.update(&self.key, self.value.clone(), self.revision),
                )
                .await;
                match result {
                    Ok(Ok(revision)) => {
                        self.revision = revision;
                        self.renewed_at = attempt_at;
                        break;
                    }
                    Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        return LeaseError::Lost {
                            key: self.key.clone(),
                            detail: "it expired or was taken over".to_owned(),
                        };
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(key = %self.key, %error, "renewing the migration lease failed; retrying");
                    }
                    // No answer in time: whether to try again is decided below.
                    Err(_) => {}
                }
                if self.renewed_at.elapsed() >= give_up_after {
                    return LeaseError::Lost {
                        key: self.key.clone(),
                        detail: format!(
                            "not renewed for {:?} of its {:?} TTL (NATS unreachable?)",
                            self.renewed_at.elapsed(),
                            self.ttl
                        ),
                    };
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Deletes the lease if it is still ours; otherwise it expires by itself.
    async fn release(self) {
        match self
            .kv
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            Ok(()) => tracing::info!(key = %self.key, "migration lease released"),
            Err(error) => tracing::warn!(
                key = %self.key,
                %error,
                "releasing the migration lease failed; it expires within its TTL"
            ),
        }
    }
}
