//! Moving clients: the service name (`dns.record`) points at the primary.
//!
//! One [`Provider`] trait, implemented by [`rfc2136`] (dynamic update,
//! TSIG-signed, to BIND 9, Knot or PowerDNS) and [`route53`] (one atomic
//! change batch). Every switch is a compare-and-swap: the provider is
//! given the exact current values of the name and of its TXT marker
//! (`"epoch=N dc=X"`, at `_milvus-dr.<record>` unless configured) and
//! replaces them only if they are still exactly those, so an agent acting
//! on a stale epoch can never overwrite a newer switch.
//!
//! [`Switcher::run`] is started by the failover runtime when this agent
//! starts acting as primary at an epoch (it holds the lease), and is
//! cancelled when it stops: it reads the name, refuses to go backwards in
//! epochs, swaps (retried with backoff, alerted while failing), then waits
//! until every authoritative server answers the new value and proves the
//! service by calling Milvus through the name. Every step is logged with
//! its time.

pub mod rfc2136;
pub mod route53;
pub mod verify;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::alert::{Alert, Sender, Severity};
use crate::config::{Config, Dns};

/// The alert raised while a switch keeps failing (resolved once it is done).
pub const DNS_SWITCH_FAILED: &str = "dns_switch_failed";

/// One value of the service name: an address (A/AAAA) or a host name
/// (CNAME).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Addr(IpAddr),
    Name(String),
}

impl Value {
    pub fn parse(s: &str) -> Value {
        match s.parse::<IpAddr>() {
            Ok(ip) => Value::Addr(ip),
            Err(_) => Value::Name(fqdn(s)),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Addr(ip) => write!(f, "{ip}"),
            Value::Name(n) => write!(f, "{n}"),
        }
    }
}

/// `host:port` as one socket address (resolved once, at start).
pub fn resolve_addr(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("{s}: {e}; fix: give host:port"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{s}: no address"))
}

/// `name` with its trailing dot.
pub fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The TXT marker: which epoch and datacenter the name was last switched
/// for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub epoch: u64,
    pub dc: String,
}

impl Marker {
    pub fn text(&self) -> String {
        format!("epoch={} dc={}", self.epoch, self.dc)
    }

    /// Reads `"epoch=N dc=X"`; anything else is not a marker of ours.
    pub fn parse(text: &str) -> Option<Marker> {
        let mut epoch = None;
        let mut dc = None;
        for part in text.split_whitespace() {
            match part.split_once('=') {
                Some(("epoch", v)) => epoch = v.parse().ok(),
                Some(("dc", v)) if !v.is_empty() => dc = Some(v.to_string()),
                _ => return None,
            }
        }
        Some(Marker {
            epoch: epoch?,
            dc: dc?,
        })
    }
}

/// What the name holds: its values (sorted) and the marker's raw TXT
/// strings (kept exactly, for the compare-and-swap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordState {
    pub values: Vec<Value>,
    pub marker_txt: Vec<String>,
}

impl RecordState {
    /// The marker, if the TXT set is exactly one marker of ours.
    pub fn marker(&self) -> Option<Marker> {
        match self.marker_txt.as_slice() {
            [one] => Marker::parse(one),
            _ => None,
        }
    }

    pub fn is(&self, values: &[Value], marker: &Marker) -> bool {
        self.values == values && self.marker() == Some(marker.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The compare-and-swap was refused: the name no longer holds what
    /// was read (someone else switched it meanwhile).
    #[error("the name changed since it was read: {0}")]
    Changed(String),
    /// Refused for good (credentials, TSIG key, zone, permissions): retrying
    /// will not help until the configuration is fixed.
    #[error("refused: {0}")]
    Refused(String),
    /// Worth retrying (server down, timeout, throttled).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A DNS provider: reads the name and swaps it atomically.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// For logs: provider and where it sends changes.
    fn describe(&self) -> String;
    /// The name's current values and marker, from the provider's source of
    /// truth (the primary server, the hosted zone).
    async fn read(&self) -> Result<RecordState, DnsError>;
    /// Replaces exactly `current` by `values` and `marker`, atomically, or
    /// fails with [`DnsError::Changed`]. Returns once the provider has
    /// applied it (Route 53: INSYNC).
    async fn swap(
        &self,
        current: &RecordState,
        values: &[Value],
        marker: &Marker,
    ) -> Result<(), DnsError>;
}

/// The provider `dns` configures (`None` for `provider: none`).
pub async fn provider(dns: &Dns) -> anyhow::Result<Option<Arc<dyn Provider>>> {
    Ok(match dns.provider.as_str() {
        "rfc2136" => Some(Arc::new(rfc2136::Rfc2136::from_config(dns)?)),
        "route53" => Some(Arc::new(route53::Route53::from_config(dns).await?)),
        _ => None,
    })
}

/// How a switch went (for logs, tests and the audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Swapped now.
    Switched,
    /// The name already pointed here at this epoch.
    AlreadyCurrent,
    /// The name is marked with a newer epoch: not touched.
    Newer(Marker),
}

/// What a switch came to, for the witnesses' audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchReport {
    pub outcome: Outcome,
    /// The steps, with their times since the switch started.
    pub evidence: String,
    /// When the provider accepted the change (wall ms; `None` if the name
    /// was already current or is newer).
    pub changed_wall_ms: Option<u64>,
    /// The proof through the name, if it succeeded.
    pub proof: Option<verify::Proof>,
}

impl SwitchReport {
    pub fn what(&self) -> String {
        match &self.outcome {
            Outcome::Switched => "DNS switched".into(),
            Outcome::AlreadyCurrent => "DNS already pointed here".into(),
            Outcome::Newer(m) => format!("DNS not switched: marked for epoch {}", m.epoch),
        }
    }
}

/// Switches the name for one epoch, and proves it.
#[derive(Clone)]
pub struct Switcher {
    pub provider: Arc<dyn Provider>,
    pub dc: String,
    pub values: Vec<Value>,
    pub verify: verify::Verify,
    pub alerts: Sender,
    /// First retry delay, doubled up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Switcher {
    /// The switcher of this agent, or `None` without a DNS provider.
    pub async fn from_config(cfg: &Config, alerts: Sender) -> anyhow::Result<Option<Switcher>> {
        let Some(provider) = provider(&cfg.dns).await? else {
            return Ok(None);
        };
        let mut values: Vec<Value> = cfg
            .dns
            .values
            .get(&cfg.datacenter)
            .map(|v| v.iter().map(|s| Value::parse(s)).collect())
            .unwrap_or_default();
        values.sort();
        Ok(Some(Switcher {
            provider,
            dc: cfg.datacenter.clone(),
            values,
            verify: verify::Verify::from_config(cfg)?,
            alerts,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }))
    }

    /// Switches the name to this datacenter for `epoch`, retrying until it
    /// is done, refused by a newer epoch, or `stop` is cancelled (this
    /// agent stopped acting as primary). Then verifies it.
    pub async fn run(&self, epoch: u64, stop: CancellationToken) -> Option<SwitchReport> {
        let started = Instant::now();
        let outcome = self.switch(epoch, &stop).await?;
        let switched_ms = started.elapsed().as_millis() as u64;
        let changed_wall_ms =
            matches!(outcome, Outcome::Switched).then(|| dr_proto::now_ms().max(0) as u64);
        let mut evidence = format!(
            "{} -> {:?} via {} after {switched_ms} ms",
            self.dc,
            self.values
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            self.provider.describe()
        );
        match &outcome {
            Outcome::Newer(m) => {
                warn!(epoch, newer = m.epoch, by = %m.dc, "DNS: the name is already switched for a newer epoch; not touching it");
                return Some(SwitchReport {
                    outcome,
                    evidence,
                    changed_wall_ms,
                    proof: None,
                });
            }
            Outcome::AlreadyCurrent => {
                info!(epoch, "DNS: the name already points here at this epoch")
            }
            Outcome::Switched => {
                info!(epoch, ms = switched_ms, provider = %self.provider.describe(), "DNS: switched")
            }
        }
        let mut proof = None;
        tokio::select! {
            _ = stop.cancelled() => return Some(SwitchReport { outcome, evidence, changed_wall_ms, proof }),
            r = self.verify.run(&self.values) => match r {
                Ok(p) => {
                    info!(epoch, ms = started.elapsed().as_millis() as u64, "DNS: {}", p.text);
                    evidence = format!("{evidence}; {}", p.text);
                    proof = Some(p);
                }
                Err(e) => {
                    error!(epoch, error = %format!("{e:#}"), "DNS: the switch is not yet visible or the service not reachable through the name");
                    evidence = format!("{evidence}; NOT VERIFIED: {e:#}");
                }
            },
        }
        Some(SwitchReport {
            outcome,
            evidence,
            changed_wall_ms,
            proof,
        })
    }

    /// The compare-and-swap loop. `None` when stopped before it was done.
    pub async fn switch(&self, epoch: u64, stop: &CancellationToken) -> Option<Outcome> {
        let marker = Marker {
            epoch,
            dc: self.dc.clone(),
        };
        let mut backoff = self.backoff;
        let mut attempt = 0u32;
        // Refused compare-and-swaps in a row: a name that keeps changing
        // under us (or a provider that refuses our batch) is alerted too.
        let mut changed = 0u32;
        loop {
            if stop.is_cancelled() {
                return None;
            }
            attempt += 1;
            let r = match self.provider.read().await {
                Ok(cur) => match cur.marker() {
                    Some(m) if m.epoch > epoch => Ok(Outcome::Newer(m)),
                    _ if cur.is(&self.values, &marker) => Ok(Outcome::AlreadyCurrent),
                    _ => {
                        info!(epoch, from = ?cur.values.iter().map(ToString::to_string).collect::<Vec<_>>(), marker = ?cur.marker_txt, to = ?self.values.iter().map(ToString::to_string).collect::<Vec<_>>(), "DNS: switching the name");
                        self.provider
                            .swap(&cur, &self.values, &marker)
                            .await
                            .map(|()| Outcome::Switched)
                    }
                },
                Err(e) => Err(e),
            };
            match r {
                Ok(o) => {
                    if self.alerts.resolve(DNS_SWITCH_FAILED) {
                        info!(epoch, attempt, "DNS switch alert resolved");
                    }
                    return Some(o);
                }
                Err(DnsError::Changed(why)) if changed < 3 => {
                    // Someone switched between our read and our write: read
                    // again shortly (a newer epoch then stops us).
                    changed += 1;
                    warn!(epoch, attempt, %why, "DNS: compare-and-swap refused; reading again");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(self.backoff) => {}
                    }
                    continue;
                }
                Err(e) => {
                    let permanent = matches!(e, DnsError::Refused(_));
                    error!(epoch, attempt, error = %e, retry_in = ?backoff, "DNS switch failed");
                    self.alerts.raise(Alert {
                        key: DNS_SWITCH_FAILED.into(),
                        severity: Severity::Critical,
                        summary: format!(
                            "DNS switch to {} at epoch {epoch} failed: clients still use the old address",
                            self.dc
                        ),
                        detail: json!({
                            "error": e.to_string(),
                            "provider": self.provider.describe(),
                            "permanent": permanent,
                            "attempt": attempt,
                        }),
                    });
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_read_back_and_foreign_text_is_not_one() {
        let m = Marker {
            epoch: 12,
            dc: "dc-b".into(),
        };
        assert_eq!(Marker::parse(&m.text()), Some(m));
        assert_eq!(Marker::parse("v=spf1 -all"), None);
        assert_eq!(Marker::parse("epoch=x dc=a"), None);
        assert_eq!(Marker::parse("epoch=3"), None);
    }

    #[test]
    fn values_are_addresses_or_names() {
        assert_eq!(
            Value::parse("10.0.0.1"),
            Value::Addr("10.0.0.1".parse().unwrap())
        );
        assert_eq!(Value::parse("::1"), Value::Addr("::1".parse().unwrap()));
        assert_eq!(
            Value::parse("lb.dc-a.example.net"),
            Value::Name("lb.dc-a.example.net.".into())
        );
    }
}
