//! Listing backups and retention: keep backups for `retention_days` (0 = no
//! age limit) and at most `keep_last` of them, but never delete the newest
//! backup that verified good. Incomplete folders (a failed or killed run)
//! go once they are a day old.

use anyhow::Result;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::lock::Lock;
use super::manifest::{Manifest, Verified, MANIFEST, VERIFIED};
use super::{Settings, Store};

/// One backup folder as `list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub id: String,
    pub created: DateTime<Utc>,
    /// Has a readable manifest.
    pub complete: bool,
    /// Time of the last passing verify, if any.
    pub verified_at: Option<String>,
    pub datacenter: Option<String>,
    pub collections: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// The time encoded at the start of an id (`20261125T021500Z-…`).
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let t = id.get(..16)?;
    NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|n| n.and_utc())
}

/// Every backup folder under the prefix, oldest first.
pub async fn list(store: &Store) -> Result<Vec<Summary>> {
    let mut out = Vec::new();
    for id in store.folders().await? {
        let Some(created) = id_time(&id) else {
            continue; // not ours
        };
        let manifest = match store.get(&format!("{id}/{MANIFEST}")).await? {
            Some(b) => Manifest::from_json(&b).ok(),
            None => None,
        };
        let verified: Option<Verified> = match store.get(&format!("{id}/{VERIFIED}")).await? {
            Some(b) => serde_json::from_slice(&b).ok(),
            None => None,
        };
        // The manifest's start time is precise; the id only to the second.
        let created = manifest
            .as_ref()
            .and_then(|m| DateTime::parse_from_rfc3339(&m.started_at).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(created);
        out.push(Summary {
            id,
            created,
            complete: manifest.is_some(),
            verified_at: verified.map(|v| v.at),
            datacenter: manifest.as_ref().map(|m| m.source.datacenter.clone()),
            collections: manifest.as_ref().map_or(0, |m| m.collections.len()),
            rows: manifest.as_ref().map_or(0, |m| m.total_rows),
            bytes: manifest.as_ref().map_or(0, |m| m.total_bytes),
        });
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// One retention decision with its reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub id: String,
    pub delete: bool,
    pub reason: String,
}

/// Decides what goes. Pure: `now` and the listing in, decisions out.
pub fn plan(
    backups: &[Summary],
    now: DateTime<Utc>,
    retention_days: u32,
    keep_last: Option<u32>,
    running: Option<&str>,
) -> Vec<Decision> {
    let mut complete: Vec<&Summary> = backups.iter().filter(|b| b.complete).collect();
    complete.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
    let newest_good = complete
        .iter()
        .find(|b| b.verified_at.is_some())
        .map(|b| b.id.clone());
    let max_age = chrono::Duration::days(i64::from(retention_days));
    let mut out = Vec::new();
    for (rank, b) in complete.iter().enumerate() {
        let age = now - b.created;
        let too_old = retention_days > 0 && age > max_age;
        let too_many = keep_last.is_some_and(|k| rank >= k as usize);
        let (delete, reason) = if Some(&b.id) == newest_good.as_ref() {
            (false, "newest backup that verified good".to_string())
        } else if too_old {
            (true, format!("older than {retention_days} days"))
        } else if too_many {
            (
                true,
                format!("beyond the newest {}", keep_last.unwrap_or_default()),
            )
        } else {
            (false, "within retention".to_string())
        };
        out.push(Decision {
            id: b.id.clone(),
            delete,
            reason,
        });
    }
    for b in backups.iter().filter(|b| !b.complete) {
        let stale = now - b.created > chrono::Duration::days(1);
        let (delete, reason) = if Some(b.id.as_str()) == running {
            (false, "being written".to_string())
        } else if stale {
            (true, "incomplete and over a day old".to_string())
        } else {
            (false, "incomplete (possibly still running)".to_string())
        };
        out.push(Decision {
            id: b.id.clone(),
            delete,
            reason,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Applies retention under `lock`. With `dry_run`, only reports. Each
/// backup's deletion starts with a renewal of the lock and every object's
/// with a look at its fence: a run that lost the lock deletes nothing more
/// ([`BackupError::LostLock`](super::BackupError::LostLock)).
pub async fn prune(
    store: &Store,
    settings: &Settings,
    dry_run: bool,
    running: Option<&str>,
    lock: &Lock,
) -> Result<Vec<Decision>> {
    let backups = list(store).await?;
    let decisions = plan(
        &backups,
        Utc::now(),
        settings.retention_days,
        settings.keep_last,
        running,
    );
    if !dry_run {
        let fence = lock.fence();
        for d in decisions.iter().filter(|d| d.delete) {
            lock.confirm(&format!("deleting backup {}", d.id)).await?;
            let n = store
                .delete_folder(&format!("{}/", d.id), || Ok(fence.check()?))
                .await?;
            info!(backup = %d.id, objects = n, reason = %d.reason, "deleted backup");
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id_day: u32, complete: bool, verified: bool) -> Summary {
        let id = format!("202611{id_day:02}T020000Z-dc-a-0000");
        Summary {
            created: id_time(&id).unwrap(),
            id,
            complete,
            verified_at: verified.then(|| "x".into()),
            datacenter: None,
            collections: 1,
            rows: 1,
            bytes: 1,
        }
    }

    fn deleted(d: &[Decision]) -> Vec<String> {
        d.iter()
            .filter(|d| d.delete)
            .map(|d| d.id[6..8].to_string())
            .collect()
    }

    #[test]
    fn ids_carry_their_time() {
        let t = id_time("20261125T021500Z-dc-a-1a2b").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T02:15:00+00:00");
        assert!(id_time("lock.json").is_none());
    }

    #[test]
    fn old_backups_go_but_never_the_newest_good_one() {
        let now = id_time("20261125T030000Z").unwrap();
        // Only day 01 verified; every later backup failed verification.
        let all = vec![
            b(1, true, true),
            b(2, true, false),
            b(20, true, false),
            b(24, true, false),
        ];
        let d = plan(&all, now, 10, None, None);
        assert_eq!(deleted(&d), vec!["02"]);
        let keep = d.iter().find(|d| d.id.starts_with("20261101")).unwrap();
        assert!(keep.reason.contains("verified good"));
        // keep_last 1 with no age limit: only the newest, plus the newest good.
        let d = plan(&all, now, 0, Some(1), None);
        assert_eq!(deleted(&d), vec!["02", "20"]);
    }

    #[test]
    fn incomplete_runs_go_after_a_day_unless_running() {
        let now = id_time("20261125T030000Z").unwrap();
        let all = vec![b(1, false, false), b(25, false, false), b(24, true, true)];
        let d = plan(&all, now, 30, None, None);
        assert_eq!(deleted(&d), vec!["01"]);
        let d = plan(&all, now, 30, None, Some(&all[0].id));
        assert!(deleted(&d).is_empty());
    }
}
