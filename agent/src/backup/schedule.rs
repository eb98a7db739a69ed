//! The agent's backup schedule: a cron expression in a time zone. Each run
//! backs up, verifies (unless disabled) and applies retention under the
//! backup lock; a failed run is logged at ERROR, counted, and alerted (the
//! alert resolved by the next run that succeeds).

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::create::{self, CreateOptions};
use super::{Settings, SharedStats, Store};
use crate::alert::{self, Sender};
use crate::config::{Config, RunOn};
use crate::milvus::Milvus;
use crate::replication::SharedState;
use dr_proto::now_ms;

/// The next run after `after`, in the configured zone.
pub fn next_run(schedule: &str, timezone: &str, after: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let cron = croner::Cron::from_str(schedule).context("parse backup.schedule")?;
    let tz: chrono_tz::Tz = timezone
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown backup.timezone {timezone}"))?;
    let next = cron
        .find_next_occurrence(&after.with_timezone(&tz), false)
        .context("no next run for backup.schedule")?;
    Ok(next.with_timezone(&Utc))
}

/// How old the newest backup may be before it is stale: two periods of the
/// schedule (a missed run is tolerated, two are not).
pub fn allowed_age(schedule: &str, timezone: &str, now: DateTime<Utc>) -> Result<chrono::Duration> {
    let a = next_run(schedule, timezone, now)?;
    let b = next_run(schedule, timezone, a)?;
    Ok((b - a) * 2)
}

/// `Some(age)` when the newest complete backup (of any datacenter) is older
/// than [`allowed_age`]; `None` when fresh, or when there is none yet and
/// the schedule has not had that long since `since` (the agent's start).
pub fn stale(
    newest: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    allowed: chrono::Duration,
    now: DateTime<Utc>,
) -> Option<chrono::Duration> {
    let age = now - newest.unwrap_or(since);
    (age > allowed).then_some(age)
}

/// Every `every`: reads the newest complete backup in the store (any
/// datacenter's), keeps the last-success metric true from the start, and
/// on the acting primary alerts `backup_stale` while it is too old.
async fn watch_staleness(
    cfg: Config,
    store: Store,
    state: SharedState,
    stats: SharedStats,
    alerts: Sender,
    every: Duration,
    shutdown: CancellationToken,
) {
    let started = Utc::now();
    loop {
        match super::retention::list(&store).await {
            Ok(all) => {
                let newest = all.iter().filter(|b| b.complete).max_by_key(|b| b.created);
                if let Some(n) = newest {
                    let mut s = stats.lock().unwrap();
                    s.last_success_ms = s.last_success_ms.max(n.created.timestamp_millis());
                }
                let primary = state.lock().unwrap().role == crate::replication::Role::Source;
                let now = Utc::now();
                let verdict =
                    allowed_age(&cfg.backup.schedule, &cfg.backup.timezone, now).map(|allowed| {
                        (
                            allowed,
                            stale(newest.map(|b| b.created), started, allowed, now),
                        )
                    });
                match verdict {
                    Ok((allowed, Some(age))) if primary => {
                        let a = alert::backup_stale(newest.map(|b| b.id.as_str()), age, allowed);
                        if alerts.raise(a) {
                            tracing::warn!(
                                age_s = age.num_seconds(),
                                allowed_s = allowed.num_seconds(),
                                "alert raised: the newest backup is stale"
                            );
                        }
                    }
                    Ok(_) => {
                        alerts.resolve(alert::BACKUP_STALE);
                    }
                    Err(e) => error!(error = %format!("{e:#}"), "backup staleness not checked"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "backup staleness: cannot list the backups")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One scheduled run, with its bookkeeping. Returns whether it succeeded.
pub async fn run_once(
    cfg: &Config,
    store: &Store,
    milvus: &Milvus,
    epoch: Option<u64>,
    stats: &SharedStats,
    alerts: &Sender,
) -> bool {
    let settings = Settings::from_config(cfg);
    let opts = CreateOptions {
        only: vec![],
        epoch,
        holder: format!("agent {} (pid {})", cfg.datacenter, std::process::id()),
        interactive: false,
        verify: cfg.backup.verify_after_backup,
        prune: true,
    };
    let start = std::time::Instant::now();
    stats.lock().unwrap().running = true;
    let r = create::run(store, milvus, &settings, &opts).await;
    let failure = {
        let mut s = stats.lock().unwrap();
        s.running = false;
        s.runs += 1;
        s.last_duration_ms = start.elapsed().as_millis() as i64;
        match &r {
            Ok(rep) => {
                s.last_success_ms = now_ms();
                s.last_bytes = rep.manifest.total_bytes;
                s.last_rows = rep.manifest.total_rows;
                None
            }
            Err(e) => {
                s.failures += 1;
                Some(format!("{e:#}"))
            }
        }
    };
    match (r, failure) {
        (Ok(rep), _) => {
            info!(backup = %rep.manifest.id, rows = rep.manifest.total_rows, bytes = rep.manifest.total_bytes, seconds = format!("{:.1}", rep.seconds), verified = rep.verified, pruned = rep.pruned.len(), "scheduled backup done");
            alerts.resolve(alert::BACKUP_FAILED);
            true
        }
        (Err(_), detail) => {
            let detail = detail.unwrap_or_default();
            error!(error = %detail, "scheduled backup FAILED");
            alerts.raise(alert::backup_failed("scheduled backup", &detail));
            false
        }
    }
}

/// Runs backups on the configured schedule until `shutdown`.
pub async fn run(
    cfg: Config,
    milvus: Milvus,
    state: SharedState,
    stats: SharedStats,
    alerts: Sender,
    shutdown: CancellationToken,
) {
    let Some(s3) = cfg.backup.s3.clone() else {
        return;
    };
    let part = (cfg.backup.part_size_mib as usize) * 1024 * 1024;
    let store = match Store::connect(&s3, part).await {
        Ok(s) => s,
        Err(e) => {
            error!(error = %format!("{e:#}"), "backups disabled: cannot set up the S3 client");
            return;
        }
    };
    info!(schedule = %cfg.backup.schedule, timezone = %cfg.backup.timezone, bucket = %s3.bucket, "backup schedule active");
    tokio::spawn(watch_staleness(
        cfg.clone(),
        store.clone(),
        state.clone(),
        stats.clone(),
        alerts.clone(),
        Duration::from_secs(600),
        shutdown.clone(),
    ));
    loop {
        let next = match next_run(&cfg.backup.schedule, &cfg.backup.timezone, Utc::now()) {
            Ok(n) => n,
            Err(e) => {
                error!(error = %format!("{e:#}"), "backup schedule stopped");
                return;
            }
        };
        info!(next = %next.to_rfc3339(), "next scheduled backup");
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let (epoch, role) = {
            let st = state.lock().unwrap();
            ((st.epoch > 0).then_some(st.epoch), st.role)
        };
        if cfg.backup.run_on == RunOn::Primary && role != crate::replication::Role::Source {
            info!(role = %role, "scheduled backup skipped: this datacenter is not the acting primary (backup.run_on: primary)");
            stats.lock().unwrap().skipped += 1;
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                info!("shutdown during a scheduled backup: the run is abandoned (no manifest is written)");
                return;
            }
            _ = run_once(&cfg, &store, &milvus, epoch, &stats, &alerts) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_stale_after_two_periods_of_its_schedule() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let now = t("2026-12-02T12:00:00Z");
        let allowed = allowed_age("0 2 * * *", "UTC", now).unwrap();
        assert_eq!(allowed, chrono::Duration::hours(48));
        let started = t("2026-12-01T00:00:00Z");
        // One missed daily run is tolerated; two are not.
        assert_eq!(
            stale(Some(t("2026-12-01T02:00:00Z")), started, allowed, now),
            None
        );
        assert_eq!(
            stale(Some(t("2026-11-30T02:00:00Z")), started, allowed, now),
            Some(chrono::Duration::hours(58))
        );
        // No backup yet: counted from the agent's start.
        assert_eq!(stale(None, started, allowed, now), None);
        assert!(stale(None, t("2026-11-29T00:00:00Z"), allowed, now).is_some());
        // Hourly: two hours.
        assert_eq!(
            allowed_age("0 * * * *", "UTC", now).unwrap(),
            chrono::Duration::hours(2)
        );
    }

    #[test]
    fn next_run_honours_the_time_zone() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = next_run("0 2 * * *", "UTC", now).unwrap();
        assert_eq!(n.to_rfc3339(), "2026-11-26T02:00:00+00:00");
        // 02:00 in Berlin (UTC+1 in November) is 01:00 UTC.
        let n = next_run("0 2 * * *", "Europe/Berlin", now).unwrap();
        assert_eq!(n.to_rfc3339(), "2026-11-26T01:00:00+00:00");
        let n = next_run("*/15 * * * *", "UTC", now).unwrap();
        assert_eq!(n.to_rfc3339(), "2026-11-25T06:15:00+00:00");
    }
}
