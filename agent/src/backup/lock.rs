//! One backup run at a time per bucket and prefix: a lease object in S3.
//!
//! `lock.json` names its holder and expires unless renewed (every
//! [`RENEW`], lease [`LEASE`]), so a run killed with the lock held blocks
//! others for at most one lease. Every write is conditional: taking a free
//! lock is `If-None-Match: *`, taking over an expired one and renewing are
//! `If-Match` on the ETag read, so of two runs racing exactly one wins on
//! S3 (AWS, MinIO and others). A store that ignores conditions is still
//! covered by reading the lock back after writing it, which narrows the
//! window to milliseconds.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::store::Cond;
use super::{BackupError, Store};

pub const LOCK: &str = "lock.json";
pub const LEASE: Duration = Duration::from_secs(300);
pub const RENEW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockBody {
    token: String,
    holder: String,
    started: DateTime<Utc>,
    expires: DateTime<Utc>,
}

/// A held lock; release it with [`Lock::release`] (dropping it stops the
/// renewals and leaves the lease to expire).
pub struct Lock {
    store: Store,
    token: String,
    stop: CancellationToken,
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn body(token: &str, holder: &str, started: DateTime<Utc>) -> LockBody {
    LockBody {
        token: token.into(),
        holder: holder.into(),
        started,
        expires: Utc::now() + chrono::Duration::from_std(LEASE).unwrap_or_default(),
    }
}

async fn read(store: &Store) -> Result<Option<(LockBody, String)>> {
    // An unreadable lock body counts as expired (it can be taken over).
    Ok(store.get_tagged(LOCK).await?.map(|(b, etag)| {
        let body = serde_json::from_slice(&b).unwrap_or(LockBody {
            token: String::new(),
            holder: "an unreadable lock".into(),
            started: Utc::now(),
            expires: DateTime::<Utc>::MIN_UTC,
        });
        (body, etag)
    }))
}

fn busy(cur: LockBody) -> anyhow::Error {
    BackupError::Busy {
        holder: cur.holder,
        started: cur.started.to_rfc3339(),
        expires: cur.expires.to_rfc3339(),
    }
    .into()
}

/// Why a conditional write lost, for the Busy message.
async fn winner(store: &Store) -> anyhow::Error {
    match read(store).await {
        Ok(Some((cur, _))) => busy(cur),
        _ => BackupError::Busy {
            holder: "another run, which took the lock at the same moment".into(),
            started: Utc::now().to_rfc3339(),
            expires: "-".into(),
        }
        .into(),
    }
}

impl Lock {
    /// Takes the lock or fails with [`BackupError::Busy`].
    pub async fn acquire(store: &Store, holder: &str) -> Result<Lock> {
        let cond = match read(store).await? {
            Some((cur, _)) if cur.expires > Utc::now() => return Err(busy(cur)),
            Some((_, etag)) => Cond::ETag(etag),
            None => Cond::Absent,
        };
        let token = uuid::Uuid::new_v4().to_string();
        let started = Utc::now();
        let b = body(&token, holder, started);
        let written = store
            .put_if(LOCK, serde_json::to_vec(&b)?, cond)
            .await
            .context("write the backup lock")?;
        if written.is_none() {
            return Err(winner(store).await);
        }
        let mut etag = match read(store).await? {
            Some((cur, e)) if cur.token == token => e,
            Some((cur, _)) => return Err(busy(cur)),
            None => anyhow::bail!("the backup lock vanished right after it was written"),
        };
        let stop = CancellationToken::new();
        {
            let (store, token, holder, stop) = (
                store.clone(),
                token.clone(),
                holder.to_string(),
                stop.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(RENEW) => {}
                    }
                    // Conditional on our last write: never overwrites a lock
                    // someone else took after ours lapsed.
                    let b = body(&token, &holder, started);
                    match store
                        .put_if(
                            LOCK,
                            serde_json::to_vec(&b).unwrap_or_default(),
                            Cond::ETag(etag.clone()),
                        )
                        .await
                    {
                        Ok(Some(e)) => etag = e,
                        Ok(None) => {
                            tracing::error!("the backup lock lapsed and was taken by another run; no longer renewing it");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "could not renew the backup lock");
                        }
                    }
                }
            });
        }
        Ok(Lock {
            store: store.clone(),
            token,
            stop,
        })
    }

    /// Stops renewing and deletes the lock if it is still ours.
    pub async fn release(self) {
        self.stop.cancel();
        match read(&self.store).await {
            Ok(Some((cur, _))) if cur.token == self.token => {
                if let Err(e) = self.store.delete(LOCK).await {
                    tracing::warn!(error = %format!("{e:#}"), "could not delete the backup lock; it expires by itself");
                }
            }
            _ => {}
        }
    }
}

/// Who holds the lock now, if anyone (for `list`).
pub async fn holder(store: &Store) -> Result<Option<String>> {
    Ok(read(store)
        .await?
        .map(|(l, _)| l)
        .filter(|l| l.expires > Utc::now())
        .map(|l| format!("{} since {}", l.holder, l.started.to_rfc3339())))
}
