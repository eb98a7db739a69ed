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
