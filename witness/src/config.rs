//! The witness configuration: one YAML file per witness.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::timing::{FailoverSection, Timing};

pub use dr_proto::ConfigError;

fn err(
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::new(field, problem, fix)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// This witness's id: a key of `witnesses`.
    pub id: u64,
    /// Where the Raft log and state live (keep it on durable storage).
    pub state_dir: PathBuf,
    pub listen: Listen,
    /// Every witness of the group (exactly three): id -> gRPC address,
    /// e.g. `https://witness-1.example.net:7601`. This witness reaches its
    /// peers at these addresses (not at those the group was initialised
    /// with), so each site may name them as its own network routes them.
    pub witnesses: BTreeMap<u64, String>,
    /// The two datacenters, as in the agents' config.
    pub datacenters: BTreeMap<String, Datacenter>,
    /// The primary at epoch 1.
    pub initial_primary: String,
    pub tls: Tls,
    #[serde(default)]
    pub failover: FailoverSection,
    #[serde(default)]
    pub raft: RaftTimers,
    #[serde(default)]
    pub alerts: Alerts,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub grpc: SocketAddr,
    /// Prometheus `/metrics` (plain HTTP).
    pub metrics: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    /// The datacenter's Milvus health endpoint, probed by this witness,
    /// e.g. `http://milvus-a.example.net:9091/healthz`.
    pub health_url: String,
    /// DNS name in the datacenter agent's certificate. Default:
    /// `agent.<datacenter id>`.
    #[serde(default)]
    pub agent_identity: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "d_operators")]
    pub operator_identities: Vec<String>,
}

fn d_operators() -> Vec<String> {
    vec!["operator".into()]
}

/// Raft's own timers (leader heartbeats and elections among witnesses).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftTimers {
    #[serde(default = "d_raft_heartbeat")]
    pub heartbeat_ms: u64,
    #[serde(default = "d_election_min")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "d_election_max")]
    pub election_timeout_max_ms: u64,
}

fn d_raft_heartbeat() -> u64 {
    200
}
fn d_election_min() -> u64 {
    1_000
}
fn d_election_max() -> u64 {
    2_000
}

impl Default for RaftTimers {
    fn default() -> Self {
        RaftTimers {
            heartbeat_ms: d_raft_heartbeat(),
            election_timeout_min_ms: d_election_min(),
            election_timeout_max_ms: d_election_max(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// Slack, PagerDuty or generic webhooks, as in the agent's config
    /// (`{ kind, url_env }`): held failovers are alerted, and resolved when
    /// the hold ends.
    #[serde(default)]
    pub webhooks: Vec<dr_proto::alert::Webhook>,
    /// A Slack-compatible webhook URL given literally (older configs; the
    /// same as a `slack` entry in `webhooks`).
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// The certificate identity of witness `id`.
pub fn witness_identity(id: u64) -> String {
    format!("witness-{id}")
}

impl WitnessConfig {
    pub fn load(path: &Path) -> Result<WitnessConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "config",
                format!("cannot read {}: {e}", path.display()),
                "pass the path of a readable YAML file with --config",
            )
        })?;
        let mut cfg = Self::parse(&text)?;
        // Relative paths are relative to the config file's folder.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.state_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<WitnessConfig, ConfigError> {
        let cfg: WitnessConfig = serde_norway::from_str(text).map_err(|e| {
            err(
                "config",
                format!("not a valid witness config: {e}"),
                "compare with deploy/examples/witness.yaml",
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn timing(&self) -> Timing {
        self.failover.resolve().expect("validated")
    }

    pub fn agent_identity(&self, dc: &str) -> String {
        self.datacenters
            .get(dc)
            .and_then(|d| d.agent_identity.clone())
            .unwrap_or_else(|| format!("agent.{dc}"))
    }

    /// The datacenter whose agent has this certificate identity.
    pub fn dc_of_identity(&self, identity: &str) -> Option<String> {
        self.datacenters
            .keys()
            .find(|dc| self.agent_identity(dc) == identity)
            .cloned()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.witnesses.len() != 3 {
            return Err(err(
                "witnesses",
                format!("{} witnesses configured", self.witnesses.len()),
                "configure exactly three witnesses (id: address), in three failure domains",
            ));
        }
        if !self.witnesses.contains_key(&self.id) {
            return Err(err(
                "id",
                format!("{} is not a key of witnesses", self.id),
                format!("use one of {:?}", self.witnesses.keys().collect::<Vec<_>>()),
            ));
        }
        for (id, addr) in &self.witnesses {
            if !addr.starts_with("https://") {
                return Err(err(
                    format!("witnesses.{id}"),
                    format!("'{addr}' is not an https:// address"),
                    "witnesses talk mutual TLS: use https://host:port",
                ));
            }
        }
        if self.datacenters.len() != 2 {
            return Err(err(
                "datacenters",
                format!("{} datacenters configured", self.datacenters.len()),
                "configure exactly two datacenters",
            ));
        }
        if !self.datacenters.contains_key(&self.initial_primary) {
            return Err(err(
                "initial_primary",
                format!("'{}' is not one of the datacenters", self.initial_primary),
                format!(
                    "set it to one of {:?}",
                    self.datacenters.keys().collect::<Vec<_>>()
                ),
            ));
        }
        for (dc, d) in &self.datacenters {
            if !(d.health_url.starts_with("http://") || d.health_url.starts_with("https://")) {
                return Err(err(
                    format!("datacenters.{dc}.health_url"),
                    format!("'{}' is not an http(s) URL", d.health_url),
                    "use Milvus' health endpoint, e.g. http://milvus:9091/healthz",
                ));
            }
        }
        self.failover.resolve()?;
        let r = self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= 2 * r.heartbeat_ms {
            return Err(err(
                "raft.election_timeout_min_ms",
                format!(
                    "{} is not more than twice raft.heartbeat_ms ({})",
                    r.election_timeout_min_ms, r.heartbeat_ms
                ),
                "keep election timeouts several Raft heartbeats long, e.g. 1000 with 200",
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(err(
                "raft.election_timeout_max_ms",
                "not above election_timeout_min_ms".to_string(),
                "use a range, e.g. 1000..2000",
            ));
        }
        dr_proto::alert::validate("alerts.webhooks", &self.alerts.webhooks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/examples/witness.yaml");

    #[test]
    fn the_example_is_valid() {
        let c = WitnessConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.witnesses.len(), 3);
        assert_eq!(c.dc_of_identity("agent.dc-a").as_deref(), Some("dc-a"));
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = EXAMPLE
            .replace("/var/lib/milvus-dr/witness-1", "w1")
            .replace("/etc/milvus-dr/certs/ca.pem", "certs/ca.pem");
        let path = dir.path().join("witness.yaml");
        std::fs::write(&path, text).unwrap();
        let c = WitnessConfig::load(&path).unwrap();
        assert_eq!(c.state_dir, dir.path().join("w1"));
        assert_eq!(c.tls.ca, dir.path().join("certs/ca.pem"));
        assert!(c.tls.key.is_absolute());
    }

    #[test]
    fn errors_name_the_field() {
        let bad = EXAMPLE.replace("initial_primary: dc-a", "initial_primary: dc-z");
        assert_eq!(
            WitnessConfig::parse(&bad).unwrap_err().field,
            "initial_primary"
        );
        let bad = EXAMPLE.replace("id: 1\n", "id: 9\n");
        assert_eq!(WitnessConfig::parse(&bad).unwrap_err().field, "id");
        let bad = EXAMPLE.replace("profile: default", "profile: default\n  lease_ms: 100");
        assert_eq!(
            WitnessConfig::parse(&bad).unwrap_err().field,
            "failover.lease_ms"
        );
    }
}
