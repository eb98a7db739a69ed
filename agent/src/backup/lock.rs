//! One backup run at a time per bucket and prefix: a lease object in S3.
//!
//! `lock.json` names its holder and expires unless renewed (every
//! [`RENEW`], lease [`LEASE`]), so a run killed with the lock held blocks
//! others for at most one lease. Taking it is "read, write ours, read back":
//! two runs starting within the same instant could both win on a store
//! without conditional writes; the read-back makes the window milliseconds,
//! not the length of a run.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

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

async fn read(store: &Store) -> Result<Option<LockBody>> {
    Ok(match store.get(LOCK).await? {
        Some(b) => serde_json::from_slice(&b).ok(),
        None => None,
    })
}

impl Lock {
    /// Takes the lock or fails with [`BackupError::Busy`].
    pub async fn acquire(store: &Store, holder: &str) -> Result<Lock> {
        if let Some(cur) = read(store).await? {
            if cur.expires > Utc::now() {
                return Err(BackupError::Busy {
                    holder: cur.holder,
                    started: cur.started.to_rfc3339(),
                    expires: cur.expires.to_rfc3339(),
                }
                .into());
            }
        }
        let token = uuid::Uuid::new_v4().to_string();
        let started = Utc::now();
        let b = body(&token, holder, started);
        store
            .put(LOCK, serde_json::to_vec(&b)?)
            .await
            .context("write the backup lock")?;
        match read(store).await? {
            Some(cur) if cur.token == token => {}
            Some(cur) => {
                return Err(BackupError::Busy {
                    holder: cur.holder,
                    started: cur.started.to_rfc3339(),
                    expires: cur.expires.to_rfc3339(),
                }
                .into())
            }
            None => anyhow::bail!("the backup lock vanished right after it was written"),
        }
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
                    // Never overwrite a lock someone else took after ours
                    // lapsed (a renewal that kept failing, a paused process).
                    match read(&store).await {
                        Ok(Some(cur)) if cur.token != token => {
                            tracing::error!(holder = %cur.holder, "the backup lock lapsed and was taken by another run; no longer renewing it");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "could not read the backup lock to renew it");
                            continue;
                        }
                        _ => {}
                    }
                    let b = body(&token, &holder, started);
                    if let Err(e) = store
                        .put(LOCK, serde_json::to_vec(&b).unwrap_or_default())
                        .await
                    {
                        tracing::warn!(error = %format!("{e:#}"), "could not renew the backup lock");
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
            Ok(Some(cur)) if cur.token == self.token => {
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
        .filter(|l| l.expires > Utc::now())
        .map(|l| format!("{} since {}", l.holder, l.started.to_rfc3339())))
}
