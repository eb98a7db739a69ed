//! Alerts for failed backup runs, to the configured webhooks
//! (`alerts.webhooks`: slack, pagerduty, generic). Delivery is best effort
//! and logged; the failure itself is always logged at ERROR and counted.

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use crate::config::Webhook;

const PAGERDUTY_EVENTS: &str = "https://events.pagerduty.com/v2/enqueue";

/// The body a webhook of `kind` receives.
pub fn body(
    kind: &str,
    secret: &str,
    datacenter: &str,
    summary: &str,
    detail: &str,
) -> serde_json::Value {
    match kind {
        "slack" => {
            json!({ "text": format!(":rotating_light: milvus-dr {datacenter}: {summary}\n{detail}") })
        }
        "pagerduty" => json!({
            "routing_key": secret,
            "event_action": "trigger",
            "payload": {
                "summary": format!("milvus-dr {datacenter}: {summary}"),
                "source": datacenter,
                "severity": "error",
                "custom_details": { "detail": detail },
            }
        }),
        _ => json!({
            "event": "backup_failed",
            "severity": "error",
            "datacenter": datacenter,
            "summary": summary,
            "detail": detail,
            "time": chrono::Utc::now().to_rfc3339(),
        }),
    }
}

/// Posts an alert to every webhook; returns how many accepted it.
pub async fn alert(webhooks: &[Webhook], datacenter: &str, summary: &str, detail: &str) -> usize {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        return 0;
    };
    let mut delivered = 0;
    for w in webhooks {
        let Ok(secret) = std::env::var(&w.url_env) else {
            warn!(webhook = %w.kind, env = %w.url_env, "alert not sent: the webhook's environment variable is not set");
            continue;
        };
        let url = if w.kind == "pagerduty" {
            PAGERDUTY_EVENTS.to_string()
        } else {
            secret.clone()
        };
        let b = body(&w.kind, &secret, datacenter, summary, detail);
        match http.post(&url).json(&b).send().await {
            Ok(r) if r.status().is_success() => {
                delivered += 1;
                info!(webhook = %w.kind, "alert sent");
            }
            Ok(r) => warn!(webhook = %w.kind, status = %r.status(), "alert refused by the webhook"),
            Err(e) => warn!(webhook = %w.kind, error = %e, "alert not delivered"),
        }
    }
    delivered
}
