//! The agent's alerts, through the one sender every milvus-dr program uses
//! ([`dr_proto::alert`]: Slack, PagerDuty and generic webhooks, retries
//! with backoff, de-duplication of repeats, resolves). This module names
//! what the agent alerts about; the source of every alert is the agent's
//! datacenter.

pub mod watch;

use serde_json::json;

use crate::config::Config;
pub use dr_proto::alert::{Alert, Event, Retry, Sender, Severity};

/// A backup run failed (resolved by the next successful run of the same
/// process).
pub const BACKUP_FAILED: &str = "backup_failed";

/// The newest backup is older than its schedule allows (raised by the
/// acting primary; resolved when a newer one exists).
pub const BACKUP_STALE: &str = "backup_stale";

/// `newest` (id, if any) is `age` old, over `allowed`.
pub fn backup_stale(
    newest: Option<&str>,
    age: chrono::Duration,
    allowed: chrono::Duration,
) -> Alert {
    Alert {
        key: BACKUP_STALE.into(),
        severity: Severity::Error,
        summary: match newest {
            Some(id) => format!(
                "the newest backup ({id}) is {} h old, over the {} h the schedule allows",
                age.num_hours(),
                allowed.num_hours()
            ),
            None => format!(
                "no complete backup exists, {} h after the schedule began",
                age.num_hours()
            ),
        },
        detail: json!({ "newest": newest, "age_s": age.num_seconds(), "allowed_s": allowed.num_seconds() }),
    }
}

/// The sender for this agent's configured webhooks (`alerts.webhooks`).
/// Starts its workers on the current tokio runtime.
pub fn sender(cfg: &Config) -> Sender {
    Sender::new(
        &cfg.datacenter,
        &cfg.alerts.webhooks,
        vec![],
        Retry::default(),
    )
}

/// `what` ("scheduled backup", "on-demand backup") failed with `error`.
pub fn backup_failed(what: &str, error: &str) -> Alert {
    Alert {
        key: BACKUP_FAILED.into(),
        severity: Severity::Error,
        summary: format!("{what} failed"),
        detail: json!({ "error": error }),
    }
}
