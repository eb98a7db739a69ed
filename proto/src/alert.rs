//! Alerts: the one sender every milvus-dr program uses (agents for backups
//! and replication, witnesses for failover decisions, drctl for on-demand
//! backups).
//!
//! An alert has a stable key (`backup_failed`, `failover_held`, ...) and a
//! source (the datacenter or witness). Raising an alert that is already
//! active is not sent again (de-duplication; the text of a held failover
//! changes every tick), until [`REPEAT_AFTER`] has passed; resolving an
//! active alert sends a resolve (PagerDuty resolves the incident by its
//! dedup key). Each target has its own queue and worker, so a webhook that
//! is down neither delays the others nor reorders a trigger and its
//! resolve; each delivery is retried with exponential backoff on network
//! errors, 429 and 5xx, and given up (ERROR log) on any other refusal.
//!
//! Kinds: `slack` (incoming webhook, `{"text": ...}`), `pagerduty` (Events
//! API v2: trigger and resolve with a dedup key) and `generic` (a JSON
//! document with the key, status, severity, source, summary and detail).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::ConfigError;

/// PagerDuty's Events API v2.
pub const PAGERDUTY_EVENTS: &str = "https://events.pagerduty.com/v2/enqueue";
/// An alert still active is sent again after this long.
pub const REPEAT_AFTER: Duration = Duration::from_secs(4 * 3600);
/// Alerts waiting for one target beyond this many are dropped (logged).
const QUEUE: usize = 256;

/// One configured webhook (`alerts.webhooks[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `slack`, `pagerduty` or `generic`.
    pub kind: String,
    /// Environment variable holding the URL (the routing key for
    /// PagerDuty): secrets stay out of config files.
    pub url_env: String,
    /// PagerDuty only: the Events API endpoint (default
    /// [`PAGERDUTY_EVENTS`]; e.g. the EU service region's).
    #[serde(default)]
    pub events_url: Option<String>,
}

/// Checks `webhooks` (config field `field`, e.g. `alerts.webhooks`).
pub fn validate(field: &str, webhooks: &[Webhook]) -> Result<(), ConfigError> {
    for (i, w) in webhooks.iter().enumerate() {
        if Kind::parse(&w.kind).is_none() {
            return Err(ConfigError::new(
                format!("{field}[{i}].kind"),
                format!("unknown kind '{}'", w.kind),
                "use slack, pagerduty or generic",
            ));
        }
        if w.url_env.is_empty() {
            return Err(ConfigError::new(
                format!("{field}[{i}].url_env"),
                "is empty",
                "name the environment variable that holds the webhook URL (PagerDuty: the routing key)",
            ));
        }
        if w.events_url.is_some() && w.kind != "pagerduty" {
            return Err(ConfigError::new(
                format!("{field}[{i}].events_url"),
                format!("set for a {} webhook", w.kind),
                "remove it: only pagerduty webhooks take an events_url",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Slack,
    PagerDuty,
    Generic,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "slack" => Some(Kind::Slack),
            "pagerduty" => Some(Kind::PagerDuty),
            "generic" => Some(Kind::Generic),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Slack => "slack",
            Kind::PagerDuty => "pagerduty",
            Kind::Generic => "generic",
        }
    }
}

/// Where alerts go: a kind and the resolved URL (and routing key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub url: String,
    /// PagerDuty's routing key.
    pub routing_key: Option<String>,
}

impl Target {
    /// A Slack-compatible webhook at a literal URL.
    pub fn slack(url: impl Into<String>) -> Target {
        Target {
            kind: Kind::Slack,
            url: url.into(),
            routing_key: None,
        }
    }

    /// Resolves a configured webhook through its environment variable.
    pub fn from_webhook(w: &Webhook) -> Result<Target, String> {
        let kind = Kind::parse(&w.kind).ok_or_else(|| format!("unknown kind '{}'", w.kind))?;
        let secret = std::env::var(&w.url_env).map_err(|_| {
            format!(
                "the {} webhook's environment variable {} is not set",
                w.kind, w.url_env
            )
        })?;
        Ok(match kind {
            Kind::PagerDuty => Target {
                kind,
                url: w
                    .events_url
                    .clone()
                    .unwrap_or_else(|| PAGERDUTY_EVENTS.to_string()),
                routing_key: Some(secret),
            },
            _ => Target {
                kind,
                url: secret,
                routing_key: None,
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Error,
    Warning,
}

impl Severity {
    fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One alert: what happened, with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Stable: the same condition has the same key (`backup_failed`).
    pub key: String,
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
    /// The evidence: whatever the condition rests on.
    pub detail: Value,
}

/// What is sent: an alert raised, or one resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Trigger(Alert),
    Resolve { key: String, summary: String },
}

impl Event {
    fn key(&self) -> &str {
        match self {
            Event::Trigger(a) => &a.key,
            Event::Resolve { key, .. } => key,
        }
    }
}

/// The request body `target` receives for `event` from `source`.
pub fn body(target: &Target, source: &str, event: &Event) -> Value {
    let dedup_key = format!("milvus-dr/{source}/{}", event.key());
    match (target.kind, event) {
        (Kind::Slack, Event::Trigger(a)) => json!({
            "text": format!(
                ":rotating_light: milvus-dr {source}: {}\n{}",
                a.summary,
                detail_text(&a.detail)
            )
        }),
        (Kind::Slack, Event::Resolve { summary, .. }) => json!({
            "text": format!(":white_check_mark: milvus-dr {source}: resolved: {summary}")
        }),
        (Kind::PagerDuty, Event::Trigger(a)) => json!({
            "routing_key": target.routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": format!("milvus-dr {source}: {}", a.summary),
                "source": source,
                "severity": a.severity.name(),
                "component": "milvus-dr",
                "class": a.key,
                "custom_details": a.detail,
            }
        }),
        (Kind::PagerDuty, Event::Resolve { .. }) => json!({
            "routing_key": target.routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }),
        (Kind::Generic, Event::Trigger(a)) => json!({
            "event": a.key,
            "status": "firing",
            "severity": a.severity.name(),
            "source": source,
            "summary": a.summary,
            "detail": a.detail,
            "dedup_key": dedup_key,
            "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }),
        (Kind::Generic, Event::Resolve { key, summary }) => json!({
            "event": key,
            "status": "resolved",
            "source": source,
            "summary": summary,
            "dedup_key": dedup_key,
            "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }),
    }
}

fn detail_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// How deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Per request.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Counts since start (for `/metrics`).
#[derive(Debug, Default)]
pub struct Counts {
    /// Deliveries a target accepted.
    pub delivered: AtomicU64,
    /// Deliveries given up after retries or refused.
    pub failed: AtomicU64,
    /// Repeats of an active alert not sent again.
    pub suppressed: AtomicU64,
}

struct Active {
    last_sent: Instant,
    summary: String,
}

struct Inner {
    source: String,
    queues: Vec<(Target, mpsc::Sender<Event>)>,
    /// Targets whose environment variable was unset, said at start.
    missing: Vec<String>,
    active: Mutex<HashMap<String, Active>>,
    counts: Arc<Counts>,
    http: reqwest::Client,
    retry: Retry,
}

/// The alert sender of one process. Cheap to clone.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

impl Sender {
    /// A sender to `webhooks` (and `extra` targets given literally),
    /// alerting as `source`. Starts one worker per target on the current
    /// tokio runtime. Webhooks whose environment variable is unset are
    /// reported now (WARN) and skipped.
    pub fn new(source: &str, webhooks: &[Webhook], extra: Vec<Target>, retry: Retry) -> Sender {
        let mut targets = extra;
        let mut missing = vec![];
        for w in webhooks {
            match Target::from_webhook(w) {
                Ok(t) => targets.push(t),
                Err(e) => {
                    warn!(webhook = %w.kind, "alerts will not reach this webhook: {e}");
                    missing.push(e);
                }
            }
        }
        let http = reqwest::Client::builder()
            .timeout(retry.timeout)
            .build()
            .unwrap_or_default();
        let counts = Arc::new(Counts::default());
        let queues = targets
            .into_iter()
            .map(|t| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(worker(
                    t.clone(),
                    source.to_string(),
                    rx,
                    http.clone(),
                    retry,
                    counts.clone(),
                ));
                (t, tx)
            })
            .collect();
        Sender {
            inner: Arc::new(Inner {
                source: source.to_string(),
                queues,
                missing,
                active: Mutex::new(HashMap::new()),
                counts,
                http,
                retry,
            }),
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.inner.counts
    }

    /// No target configured (or none resolvable).
    pub fn is_empty(&self) -> bool {
        self.inner.queues.is_empty()
    }

    /// Raises `alert` unless the same key is active and was sent less than
    /// [`REPEAT_AFTER`] ago. Returns whether it was queued.
    pub fn raise(&self, alert: Alert) -> bool {
        {
            let mut active = self.inner.active.lock().unwrap();
            let now = Instant::now();
            match active.get_mut(&alert.key) {
                Some(a) if now.duration_since(a.last_sent) < REPEAT_AFTER => {
                    self.inner.counts.suppressed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Some(a) => {
                    a.last_sent = now;
                    a.summary = alert.summary.clone();
                }
                None => {
                    active.insert(
                        alert.key.clone(),
                        Active {
                            last_sent: now,
                            summary: alert.summary.clone(),
                        },
                    );
                }
            }
        }
        self.enqueue(Event::Trigger(alert));
        true
    }

    /// Raises `alert` even if its key is active (its condition changed in
    /// a way the caller already decided is news, e.g. a failover now held
    /// by another rule); keeps it active.
    pub fn update(&self, alert: Alert) {
        self.inner.active.lock().unwrap().insert(
            alert.key.clone(),
            Active {
                last_sent: Instant::now(),
                summary: alert.summary.clone(),
            },
        );
        self.enqueue(Event::Trigger(alert));
    }

    /// Resolves `key` if it is active here. Returns whether a resolve was
    /// queued.
    pub fn resolve(&self, key: &str) -> bool {
        let Some(a) = self.inner.active.lock().unwrap().remove(key) else {
            return false;
        };
        self.enqueue(Event::Resolve {
            key: key.to_string(),
            summary: a.summary,
        });
        true
    }

    /// Whether `key` is active (raised and not resolved).
    pub fn is_active(&self, key: &str) -> bool {
        self.inner.active.lock().unwrap().contains_key(key)
    }

    fn enqueue(&self, event: Event) {
        for (t, q) in &self.inner.queues {
            if q.try_send(event.clone()).is_err() {
                self.inner.counts.failed.fetch_add(1, Ordering::Relaxed);
                error!(
                    webhook = t.kind.name(),
                    key = event.key(),
                    "alert dropped: the webhook's queue is full (is it down?)"
                );
            }
        }
    }

    /// Sends `event` to every target now and waits for the outcome (for
    /// short-lived commands that exit right after). Returns how many
    /// targets accepted it.
    pub async fn send_now(&self, event: Event) -> usize {
        let i = &self.inner;
        if !i.missing.is_empty() && i.queues.is_empty() {
            warn!("alert not sent: no webhook could be used");
        }
        let mut delivered = 0;
        for (t, _) in &i.queues {
            if deliver(&i.http, t, &i.source, &event, i.retry, &i.counts).await {
                delivered += 1;
            }
        }
        delivered
    }
}

async fn worker(
    target: Target,
    source: String,
    mut rx: mpsc::Receiver<Event>,
    http: reqwest::Client,
    retry: Retry,
    counts: Arc<Counts>,
) {
    while let Some(event) = rx.recv().await {
        deliver(&http, &target, &source, &event, retry, &counts).await;
    }
}

/// One delivery with retries; true when the target accepted it.
async fn deliver(
    http: &reqwest::Client,
    target: &Target,
    source: &str,
    event: &Event,
    retry: Retry,
    counts: &Counts,
) -> bool {
    let b = body(target, source, event);
    let kind = target.kind.name();
    let mut backoff = retry.first_backoff;
    for attempt in 1..=retry.attempts.max(1) {
        let (retryable, why) = match http.post(&target.url).json(&b).send().await {
            Ok(r) if r.status().is_success() => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                info!(
                    webhook = kind,
                    key = event.key(),
                    attempt,
                    "alert delivered"
                );
                return true;
            }
            Ok(r) => {
                let s = r.status();
                (
                    s.as_u16() == 429 || s.is_server_error(),
                    format!("HTTP {s}"),
                )
            }
            Err(e) => (true, e.to_string()),
        };
        if !retryable {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            error!(webhook = kind, key = event.key(), error = %why, "alert refused by the webhook; fix its URL or routing key");
            return false;
        }
        if attempt < retry.attempts {
            warn!(webhook = kind, key = event.key(), attempt, error = %why, retry_in = ?backoff, "alert not delivered; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(retry.max_backoff);
        } else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            error!(webhook = kind, key = event.key(), attempts = attempt, error = %why, "alert not delivered; gave up");
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            key: "backup_failed".into(),
            severity: Severity::Error,
            summary: "scheduled backup failed".into(),
            detail: json!({"error": "S3 unreachable"}),
        }
    }

    #[test]
    fn each_kind_gets_its_own_payload() {
        let slack = body(&Target::slack("http://x"), "dc-a", &Event::Trigger(alert()));
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("dc-a: scheduled backup failed") && text.contains("S3 unreachable"));
        let pd = Target {
            kind: Kind::PagerDuty,
            url: "http://x".into(),
            routing_key: Some("R".into()),
        };
        let t = body(&pd, "dc-a", &Event::Trigger(alert()));
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["routing_key"], "R");
        assert_eq!(t["dedup_key"], "milvus-dr/dc-a/backup_failed");
        assert_eq!(t["payload"]["severity"], "error");
        assert_eq!(t["payload"]["custom_details"]["error"], "S3 unreachable");
        let r = body(
            &pd,
            "dc-a",
            &Event::Resolve {
                key: "backup_failed".into(),
                summary: "x".into(),
            },
        );
        assert_eq!(r["event_action"], "resolve");
        assert_eq!(r["dedup_key"], t["dedup_key"]);
        let g = Target {
            kind: Kind::Generic,
            url: "http://x".into(),
            routing_key: None,
        };
        let b = body(&g, "witness-1", &Event::Trigger(alert()));
        assert_eq!(b["event"], "backup_failed");
        assert_eq!(b["status"], "firing");
        assert_eq!(b["source"], "witness-1");
    }

    #[test]
    fn config_errors_name_the_field_and_the_fix() {
        let w = |kind: &str, env: &str, events: Option<&str>| Webhook {
            kind: kind.into(),
            url_env: env.into(),
            events_url: events.map(Into::into),
        };
        assert!(validate("alerts.webhooks", &[w("slack", "X", None)]).is_ok());
        let e = validate(
            "alerts.webhooks",
            &[w("slack", "X", None), w("teams", "X", None)],
        )
        .unwrap_err();
        assert_eq!(e.field, "alerts.webhooks[1].kind");
        assert!(e.fix.contains("slack, pagerduty or generic"));
        let e = validate("alerts.webhooks", &[w("generic", "", None)]).unwrap_err();
        assert_eq!(e.field, "alerts.webhooks[0].url_env");
        let e = validate("alerts.webhooks", &[w("slack", "X", Some("http://y"))]).unwrap_err();
        assert_eq!(e.field, "alerts.webhooks[0].events_url");
        assert!(validate("alerts.webhooks", &[w("pagerduty", "X", Some("http://y"))]).is_ok());
    }

    #[tokio::test]
    async fn repeats_are_suppressed_until_resolved() {
        // No target: the de-duplication state alone.
        let s = Sender::new("dc-a", &[], vec![], Retry::default());
        assert!(s.raise(alert()));
        assert!(!s.raise(alert()), "an active alert is not sent again");
        assert_eq!(s.counts().suppressed.load(Ordering::Relaxed), 1);
        assert!(s.is_active("backup_failed"));
        assert!(s.resolve("backup_failed"));
        assert!(!s.resolve("backup_failed"), "nothing to resolve twice");
        assert!(s.raise(alert()), "raised again after the resolve");
    }
}
