//! The agent's configuration: one YAML file per agent.
//!
//! Shaped after the familiar `dr_config.yaml`: the datacenters (each with its
//! Milvus and its agent), this agent's listeners and TLS files, and the
//! replication, backup, dns, monitoring and alerts sections. Every field has
//! a documented default where one is sensible; [`Config::validate`] names the
//! offending field and the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
pub struct Config {
    /// Id of the datacenter this agent runs in; a key of `datacenters`.
    pub datacenter: String,
    /// Every datacenter of the deployment (exactly two).
    pub datacenters: BTreeMap<String, Datacenter>,
    /// The primary at epoch 1, before any failover has been decided.
    pub initial_primary: String,
    /// Where this agent keeps its checkpoints and capture state.
    pub state_dir: PathBuf,
    pub listen: Listen,
    pub tls: Tls,
    #[serde(default)]
    pub replication: Replication,
    #[serde(default)]
    pub backup: Backup,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub monitoring: Monitoring,
    #[serde(default)]
    pub alerts: Alerts,
    /// The witness quorum (exactly three: id -> address). Empty: no
    /// automatic failover; `initial_primary` stays primary at epoch 1.
    #[serde(default)]
    pub witnesses: BTreeMap<u64, String>,
    /// Failover timing; must be identical on every agent and witness.
    #[serde(default)]
    pub failover: dr_witness::timing::FailoverSection,
    #[serde(default)]
    pub hooks: Hooks,
    /// The front door: a gRPC proxy for Milvus clients. Off when absent.
    #[serde(default)]
    pub frontdoor: Option<Frontdoor>,
}

/// `frontdoor`: clients (pymilvus, the SDKs) connect here instead of to
/// Milvus; calls are forwarded unchanged to this datacenter's Milvus, and
/// writes are refused unless this agent is the acting primary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frontdoor {
    /// Where clients connect: cleartext HTTP/2 (gRPC without TLS), e.g.
    /// `0.0.0.0:19530`.
    pub listen: SocketAddr,
    /// What reads (search, query, describe, ...) get while this agent is
    /// not the acting primary: `allow` (default: served by the local
    /// Milvus, which may lag the primary) or `refuse` (refused like writes).
    #[serde(default)]
    pub reads_when_not_primary: ReadsWhenNotPrimary,
    /// Bound of the change log on disk (writes acknowledged to clients and
    /// not yet applied on the standby), in MiB. Past it the log is cleared
    /// and a full scan pass replicates what it held (alert
    /// `change_log_overflow`; the Prometheus rule MilvusDrChangeLogBacklog
    /// fires well before).
    #[serde(default = "d_change_log_max_mb")]
    pub change_log_max_mb: u64,
    /// With the front door, writes reach the standby through the change
    /// log; the scan of every collection becomes the backstop for writes
    /// that bypass the door, run this often (alert `bypass_writes` when it
    /// finds any).
    #[serde(default = "d_scan_interval", with = "humantime_serde")]
    pub scan_interval: Duration,
}

fn d_change_log_max_mb() -> u64 {
    1024
}

fn d_scan_interval() -> Duration {
    Duration::from_secs(600)
}

/// `replication.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A write is acknowledged once the primary's Milvus has it (and the
    /// change log, with the front door).
    #[default]
    Async,
    /// A write through the front door is acknowledged once the standby
    /// applied it too (RPO 0).
    Sync,
}

/// `replication.sync_on_timeout`: what sync mode does while the standby
/// does not confirm writes in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncOnTimeout {
    /// Refuse writes (UNAVAILABLE) until the standby confirms again.
    #[default]
    Refuse,
    /// Accept them asynchronously, with the alert `sync_degraded`.
    Async,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadsWhenNotPrimary {
    #[default]
    Allow,
    Refuse,
}

/// Commands run on role changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run (via `sh -c`) when this agent starts acting as primary at a new
    /// epoch, with `MILVUS_DR_EPOCH` and `MILVUS_DR_DATACENTER` set. The
    /// built-in DNS switch runs at the same point. It runs beside the
    /// failover logic, never in its way: a hook that hangs delays nothing.
    #[serde(default)]
    pub on_promote: Option<String>,
    /// A hook still running after this long is killed and reported.
    #[serde(default = "d_hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            on_promote: None,
            timeout: d_hook_timeout(),
        }
    }
}

fn d_hook_timeout() -> Duration {
    Duration::from_secs(120)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    pub milvus: MilvusEndpoint,
    /// Address at which this datacenter's agent serves gRPC (replication and
    /// admin), e.g. `https://dr-a.example.net:7443`.
    pub agent: String,
    /// DNS name in the agent's certificate. Default: `agent.<datacenter id>`.
    #[serde(default)]
    pub agent_identity: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilvusEndpoint {
    /// gRPC endpoint, e.g. `http://127.0.0.1:19530`.
    pub endpoint: String,
    /// Management health URL, e.g. `http://127.0.0.1:9091/healthz`.
    #[serde(default)]
    pub health_url: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (never put secrets in this YAML).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "d_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// gRPC (replication from the peer agent, admin from operators).
    pub grpc: SocketAddr,
    /// Prometheus `/metrics` (plain HTTP).
    pub metrics: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The deployment's CA certificate (PEM).
    pub ca: PathBuf,
    /// This agent's certificate (PEM) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate DNS names allowed to call the admin API.
    #[serde(default = "d_operators")]
    pub operator_identities: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// Pause between two capture passes when nothing is pending.
    #[serde(default = "d_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Rows per scan page (at most 16384, Milvus' query window).
    #[serde(default = "d_page_rows")]
    pub page_rows: usize,
    /// Batches sent but not yet acknowledged.
    #[serde(default = "d_in_flight")]
    pub max_in_flight: usize,
    /// Databases to replicate; empty = all.
    #[serde(default)]
    pub databases: Vec<String>,
    /// `database.collection` names never replicated.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Delay before reconnecting after the stream broke (doubles up to 30 s).
    #[serde(default = "d_reconnect", with = "humantime_serde")]
    pub reconnect_backoff: Duration,
    /// A collection the standby refuses for a permanent reason (a schema
    /// conflict, rows its Milvus rejects) is held, alone, and tried again
    /// after this long.
    #[serde(default = "d_held_retry", with = "humantime_serde")]
    pub held_retry: Duration,
    /// How often the source compares what the standby holds (its
    /// inventory) with the capture base, and resends rows written, changed
    /// or deleted straight in the standby's Milvus. `0s` = never.
    #[serde(default = "d_anti_entropy", with = "humantime_serde")]
    pub anti_entropy_interval: Duration,
    /// `async` (default) or `sync` (needs the front door).
    #[serde(default)]
    pub mode: Mode,
    /// Sync mode: how long a write waits for the standby.
    #[serde(default = "d_sync_timeout", with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// Sync mode: `refuse` (default) or `async` while the standby does not
    /// confirm in time.
    #[serde(default)]
    pub sync_on_timeout: SyncOnTimeout,
}

fn d_sync_timeout() -> Duration {
    Duration::from_secs(2)
}

fn d_anti_entropy() -> Duration {
    Duration::from_secs(600)
}

fn d_held_retry() -> Duration {
    Duration::from_secs(60)
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            poll_interval: d_poll(),
            page_rows: d_page_rows(),
            max_in_flight: d_in_flight(),
            databases: vec![],
            exclude: vec![],
            reconnect_backoff: d_reconnect(),
            held_retry: d_held_retry(),
            anti_entropy_interval: d_anti_entropy(),
            mode: Mode::Async,
            sync_timeout: d_sync_timeout(),
            sync_on_timeout: SyncOnTimeout::Refuse,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// Run scheduled backups from this agent (`drctl backup` works either way).
    #[serde(default)]
    pub enabled: bool,
    /// Which agent's scheduled runs go ahead: `primary` (default: only while
    /// this datacenter is the acting primary, so two agents sharing a bucket
    /// back up the primary's data once, and the duty follows a failover) or
    /// `any` (every scheduled run, e.g. a separate bucket per datacenter).
    #[serde(default)]
    pub run_on: RunOn,
    /// Cron expression (with seconds omitted), e.g. `0 2 * * *`.
    #[serde(default = "d_schedule")]
    pub schedule: String,
    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`.
    #[serde(default = "d_tz")]
    pub timezone: String,
    /// Delete backups older than this many days (0 = no age limit).
    #[serde(default = "d_retention_days")]
    pub retention_days: u32,
    /// Keep at most this many backups (newest first).
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Re-read a backup (checksums, digests) right after writing it.
    #[serde(default = "d_true")]
    pub verify_after_backup: bool,
    /// Databases to back up; empty = all.
    #[serde(default)]
    pub databases: Vec<String>,
    /// `database.collection` names never backed up.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Rows per scan page (at most 16384).
    #[serde(default = "d_page_rows")]
    pub page_rows: usize,
    /// Size of one multipart-upload part in MiB. AWS S3 needs at least 5
    /// for every part but the last; some S3-compatible stores accept less.
    #[serde(default = "d_part_size_mib")]
    pub part_size_mib: u64,
    /// A collection's rows are split into Parquet objects of about this size.
    #[serde(default = "d_object_max_mib")]
    pub object_max_mib: u64,
    /// Lease of the backup lock (`lock.json`): how long a run that died
    /// blocks the next one. Renewed every fifth of it; a run that cannot
    /// renew stops once less than a fifth is left.
    #[serde(default = "d_lock_lease", with = "humantime_serde")]
    pub lock_lease: Duration,
    #[serde(default)]
    pub s3: Option<S3>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOn {
    #[default]
    Primary,
    Any,
}

impl Default for Backup {
    fn default() -> Self {
        Self {
            enabled: false,
            run_on: RunOn::Primary,
            schedule: d_schedule(),
            timezone: d_tz(),
            retention_days: d_retention_days(),
            keep_last: None,
            verify_after_backup: true,
            databases: vec![],
            exclude: vec![],
            page_rows: d_page_rows(),
            part_size_mib: d_part_size_mib(),
            object_max_mib: d_object_max_mib(),
            lock_lease: d_lock_lease(),
            s3: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    pub bucket: String,
    /// Folder in the bucket under which backups are written, e.g. `milvus/`.
    #[serde(default)]
    pub prefix: String,
    /// Endpoint of an S3-compatible store, e.g. `http://minio:9000`
    /// (default: AWS for the region).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "d_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), for most non-AWS stores.
    #[serde(default)]
    pub force_path_style: bool,
    /// Static credentials: environment variables holding the key id and
    /// secret. Without static credentials, the AWS default chain is used
    /// (environment, profile, web identity, ECS, instance metadata).
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// Static credentials from files (never put secrets in this YAML).
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// `none`, `route53` or `rfc2136`.
    #[serde(default = "d_dns_provider")]
    pub provider: String,
    /// The name clients use for Milvus, e.g. `milvus.example.net.`.
    #[serde(default)]
    pub record: Option<String>,
    #[serde(default = "d_ttl")]
    pub ttl: u32,
    /// What the name holds while each datacenter is primary: addresses
    /// (A/AAAA records) or one host name (a CNAME).
    #[serde(default)]
    pub values: BTreeMap<String, Vec<String>>,
    /// Where the TXT marker (`"epoch=N dc=X"`) lives. Default:
    /// `_milvus-dr.<record>` (a CNAME may not share its name).
    #[serde(default)]
    pub marker: Option<String>,
    #[serde(default)]
    pub rfc2136: Option<Rfc2136>,
    #[serde(default)]
    pub route53: Option<Route53>,
    #[serde(default)]
    pub verify: DnsVerify,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            provider: d_dns_provider(),
            record: None,
            ttl: d_ttl(),
            values: BTreeMap::new(),
            marker: None,
            rfc2136: None,
            route53: None,
            verify: DnsVerify::default(),
        }
    }
}

impl Dns {
    /// The marker's name (absolute).
    pub fn marker_name(&self) -> String {
        match (&self.marker, &self.record) {
            (Some(m), _) => crate::dns::fqdn(m),
            (None, Some(r)) => crate::dns::fqdn(&format!("_milvus-dr.{r}")),
            (None, None) => String::new(),
        }
    }
}

/// `dns.rfc2136`: dynamic updates to the zone's primary server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136 {
    /// The primary server, `host:port`.
    pub server: String,
    /// The zone, e.g. `example.net.`.
    pub zone: String,
    /// The TSIG key as `tsig-keygen -a hmac-sha256 NAME` writes it.
    pub tsig_key_file: PathBuf,
    #[serde(default = "d_dns_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `dns.route53`: one hosted zone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route53 {
    pub hosted_zone_id: String,
    /// Another endpoint (an emulator); default AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "d_region")]
    pub region: String,
    /// Static credentials (else the AWS default chain), as for S3.
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// How long to wait for a change to be INSYNC.
    #[serde(default = "d_insync_timeout", with = "humantime_serde")]
    pub insync_timeout: Duration,
    /// For `drctl dns plan/apply`: failover routing records whose Route 53
    /// health checks probe each agent's `/dr/primary`.
    #[serde(default)]
    pub failover_records: Option<FailoverRecords>,
}

/// `dns.route53.failover_records`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRecords {
    /// Per datacenter: `http://<agent ip>:<metrics port>/dr/primary`.
    pub health_checks: BTreeMap<String, String>,
    /// Seconds between probes: 10 or 30.
    #[serde(default = "d_request_interval")]
    pub request_interval_s: i32,
    /// Failed probes before unhealthy (1..=10).
    #[serde(default = "d_hc_failures")]
    pub failure_threshold: i32,
}

fn d_request_interval() -> i32 {
    10
}
fn d_hc_failures() -> i32 {
    1
}

/// `dns.verify`: proving a switch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsVerify {
    /// Authoritative servers (`host:port`) that must all answer the new
    /// value. Default: the RFC 2136 server; none for Route 53.
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default = "d_verify_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Call Milvus through the name after the switch (CheckHealth and
    /// ListDatabases).
    #[serde(default = "d_true")]
    pub service_check: bool,
    /// The Milvus API's port behind the name. Default: this agent's front
    /// door port, else its Milvus port.
    #[serde(default)]
    pub milvus_port: Option<u16>,
}

impl Default for DnsVerify {
    fn default() -> Self {
        Self {
            nameservers: vec![],
            timeout: d_verify_timeout(),
            service_check: true,
            milvus_port: None,
        }
    }
}

fn d_dns_timeout() -> Duration {
    Duration::from_secs(5)
}
fn d_insync_timeout() -> Duration {
    Duration::from_secs(300)
}
fn d_verify_timeout() -> Duration {
    Duration::from_secs(120)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitoring {
    /// How often the local Milvus is probed.
    #[serde(default = "d_health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// Consecutive failed probes before Milvus counts as unhealthy.
    #[serde(default = "d_failure_threshold")]
    pub failure_threshold: u32,
    /// Lag above which an alert fires.
    #[serde(default = "d_lag_alert", with = "humantime_serde")]
    pub lag_alert: Duration,
}

impl Default for Monitoring {
    fn default() -> Self {
        Self {
            health_interval: d_health_interval(),
            failure_threshold: d_failure_threshold(),
            lag_alert: d_lag_alert(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
}

pub use dr_proto::alert::Webhook;

fn d_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_operators() -> Vec<String> {
    vec!["operator".into()]
}
fn d_poll() -> Duration {
    Duration::from_millis(500)
}
fn d_page_rows() -> usize {
    8192
}
fn d_in_flight() -> usize {
    4
}
fn d_reconnect() -> Duration {
    Duration::from_millis(200)
}
fn d_schedule() -> String {
    "0 2 * * *".into()
}
fn d_tz() -> String {
    "UTC".into()
}
fn d_retention_days() -> u32 {
    30
}
fn d_true() -> bool {
    true
}
fn d_part_size_mib() -> u64 {
    16
}
fn d_object_max_mib() -> u64 {
    1024
}
fn d_lock_lease() -> Duration {
    crate::backup::lock::LEASE
}
fn d_region() -> String {
    "us-east-1".into()
}
fn d_dns_provider() -> String {
    "none".into()
}
fn d_ttl() -> u32 {
    30
}
fn d_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn d_failure_threshold() -> u32 {
    3
}
fn d_lag_alert() -> Duration {
    Duration::from_secs(60)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                path.display().to_string(),
                format!("cannot read the config file: {e}"),
                "pass an existing, readable file with --config",
            )
        })?;
        let mut cfg = Self::parse(&text)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses YAML without validating.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        serde_norway::from_str(text).map_err(|e| {
            let loc = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "config".into());
            err(
                loc,
                e.to_string(),
                "see deploy/examples/agent.yaml for every field and its format",
            )
        })
    }

    /// Relative file paths are relative to the config file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        fix(&mut self.tls.ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        for dc in self.datacenters.values_mut() {
            if let Some(p) = &mut dc.milvus.password_file {
                fix(p);
            }
        }
        if let Some(s3) = &mut self.backup.s3 {
            for p in [&mut s3.access_key_id_file, &mut s3.secret_access_key_file]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.datacenters.len() != 2 {
            return Err(err(
                "datacenters",
                format!("{} datacenters configured", self.datacenters.len()),
                "configure exactly two datacenters (the primary and the standby)",
            ));
        }
        let ids: Vec<&String> = self.datacenters.keys().collect();
        if !self.datacenters.contains_key(&self.datacenter) {
            return Err(err(
                "datacenter",
                format!("'{}' is not one of the datacenters", self.datacenter),
                format!("set it to one of {ids:?}"),
            ));
        }
        if !self.datacenters.contains_key(&self.initial_primary) {
            return Err(err(
                "initial_primary",
                format!("'{}' is not one of the datacenters", self.initial_primary),
                format!("set it to one of {ids:?}"),
            ));
        }
        for (id, dc) in &self.datacenters {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(err(
                    format!("datacenters.{id}"),
                    "datacenter ids may only use letters, digits and '-'",
                    "rename the datacenter, e.g. dc-a",
                ));
            }
            let f = format!("datacenters.{id}.milvus.endpoint");
            check_url(&f, &dc.milvus.endpoint, &["http", "https"])?;
            if let Some(u) = &dc.milvus.health_url {
                check_url(
                    &format!("datacenters.{id}.milvus.health_url"),
                    u,
                    &["http", "https"],
                )?;
            }
            check_url(&format!("datacenters.{id}.agent"), &dc.agent, &["https"])?;
            if dc.milvus.password_file.is_some() && dc.milvus.password_env.is_some() {
                return Err(err(
                    format!("datacenters.{id}.milvus"),
                    "both password_file and password_env are set",
                    "keep one of them",
                ));
            }
            if (dc.milvus.password_file.is_some() || dc.milvus.password_env.is_some())
                && dc.milvus.username.is_none()
            {
                return Err(err(
                    format!("datacenters.{id}.milvus.username"),
                    "a password is configured without a username",
                    "set username",
                ));
            }
            if dc.milvus.request_timeout < Duration::from_secs(1) {
                return Err(err(
                    format!("datacenters.{id}.milvus.request_timeout"),
                    "shorter than 1s",
                    "use at least 1s (a scan page can take a while)",
                ));
            }
        }
        if self.listen.grpc == self.listen.metrics && self.listen.grpc.port() != 0 {
            return Err(err(
                "listen.metrics",
                "same address as listen.grpc",
                "use another port for metrics",
            ));
        }
        if let Some(fd) = &self.frontdoor {
            for (other, addr) in [
                ("listen.grpc", self.listen.grpc),
                ("listen.metrics", self.listen.metrics),
            ] {
                if fd.listen == addr && addr.port() != 0 {
                    return Err(err(
                        "frontdoor.listen",
                        format!("same address as {other}"),
                        "give the front door a port of its own, e.g. 19530",
                    ));
                }
            }
            let endpoint = &self.local().milvus.endpoint;
            if !endpoint.starts_with("http://") {
                return Err(err(
                    format!("datacenters.{}.milvus.endpoint", self.datacenter),
                    format!("'{endpoint}' is not cleartext: the front door forwards to Milvus over h2c only"),
                    "use the local Milvus's http:// endpoint, or remove the frontdoor section",
                ));
            }
            if fd.change_log_max_mb == 0 {
                return Err(err(
                    "frontdoor.change_log_max_mb",
                    "0",
                    "give the change log room for the writes of a standby outage, e.g. 1024",
                ));
            }
            if fd.scan_interval < Duration::from_secs(1) {
                return Err(err(
                    "frontdoor.scan_interval",
                    "shorter than 1s",
                    "use minutes (default 10m): the scan is the backstop for writes that bypass the front door",
                ));
            }
        }
        let r = &self.replication;
        if r.mode == Mode::Sync && self.frontdoor.is_none() {
            return Err(err(
                "replication.mode",
                "sync without a frontdoor section",
                "add a frontdoor section (sync mode acknowledges writes that come through it), or use mode: async",
            ));
        }
        if r.mode == Mode::Sync
            && (r.sync_timeout < Duration::from_millis(10)
                || r.sync_timeout > Duration::from_secs(60))
        {
            return Err(err(
                "replication.sync_timeout",
                format!(
                    "{} is out of range",
                    humantime::format_duration(r.sync_timeout)
                ),
                "use 10ms to 60s (default 2s): every write waits up to this long for the standby",
            ));
        }
        if r.page_rows == 0 || r.page_rows > crate::milvus::MAX_QUERY_WINDOW {
            return Err(err(
                "replication.page_rows",
                format!("{} is out of range", r.page_rows),
                "use 1 to 16384 (Milvus' maxQueryResultWindow); 8192 is a good default",
            ));
        }
        if r.max_in_flight == 0 || r.max_in_flight > 64 {
            return Err(err(
                "replication.max_in_flight",
                format!("{} is out of range", r.max_in_flight),
                "use 1 to 64",
            ));
        }
        if r.poll_interval > Duration::from_secs(3600) {
            return Err(err(
                "replication.poll_interval",
                "longer than an hour",
                "use a pause of seconds: lag grows by at least this much",
            ));
        }
        if !r.anti_entropy_interval.is_zero() && r.anti_entropy_interval < Duration::from_secs(1) {
            return Err(err(
                "replication.anti_entropy_interval",
                format!(
                    "{} is shorter than 1s",
                    humantime::format_duration(r.anti_entropy_interval)
                ),
                "use at least 1s (each run reads the standby's whole inventory; default 10m), or 0s to turn it off",
            ));
        }
        for e in &r.exclude {
            if e.split('.').count() != 2 {
                return Err(err(
                    "replication.exclude",
                    format!("'{e}' is not database.collection"),
                    "write entries as database.collection, e.g. default.scratch",
                ));
            }
        }
        if !self.witnesses.is_empty() {
            if self.witnesses.len() != 3 {
                return Err(err(
                    "witnesses",
                    format!("{} witnesses configured", self.witnesses.len()),
                    "list all three witnesses (id: https://address), or none to disable automatic failover",
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
        }
        self.failover.resolve()?;
        if self.tls.operator_identities.is_empty() {
            return Err(err(
                "tls.operator_identities",
                "empty: nobody could call the admin API",
                "list at least one certificate name, e.g. operator",
            ));
        }
        if self.backup.enabled && self.backup.s3.is_none() {
            return Err(err(
                "backup.s3",
                "backups are enabled but no bucket is configured",
                "add backup.s3.bucket (and endpoint for non-AWS stores)",
            ));
        }
        self.validate_backup()?;
        if self.backup.retention_days == 0 && self.backup.keep_last.is_none() {
            return Err(err(
                "backup.retention_days",
                "0 with no keep_last would keep only the newest backup",
                "set retention_days ≥ 1 or keep_last",
            ));
        }
        match self.dns.provider.as_str() {
            "none" => {}
            p @ ("route53" | "rfc2136") => self.validate_dns(p)?,
            other => {
                return Err(err(
                    "dns.provider",
                    format!("unknown provider '{other}'"),
                    "use none, route53 or rfc2136",
                ))
            }
        }
        if self.monitoring.failure_threshold == 0 {
            return Err(err("monitoring.failure_threshold", "0", "use at least 1"));
        }
        if self.monitoring.health_interval < Duration::from_millis(100) {
            return Err(err(
                "monitoring.health_interval",
                "shorter than 100ms",
                "probe at most ten times a second",
            ));
        }
        if self.hooks.timeout.is_zero() {
            return Err(err(
                "hooks.timeout",
                "is zero",
                "give hooks time to run, e.g. 120s",
            ));
        }
        dr_proto::alert::validate("alerts.webhooks", &self.alerts.webhooks)
    }

    fn validate_dns(&self, provider: &str) -> Result<(), ConfigError> {
        let d = &self.dns;
        if d.record.is_none() {
            return Err(err(
                "dns.record",
                "a DNS provider is set but no record name",
                "set dns.record to the name clients use, e.g. milvus.example.net.",
            ));
        }
        let values = d
            .values
            .get(&self.datacenter)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if values.is_empty() {
            return Err(err(
                format!("dns.values.{}", self.datacenter),
                "no value for this datacenter",
                "list the addresses (or one host name) the name must hold while this datacenter is primary",
            ));
        }
        let names = values
            .iter()
            .filter(|v| v.parse::<std::net::IpAddr>().is_err())
            .count();
        if names > 0 && values.len() > 1 {
            return Err(err(
                format!("dns.values.{}", self.datacenter),
                "mixes a host name with other values",
                "give addresses, or exactly one host name (a CNAME)",
            ));
        }
        if provider == "rfc2136" && d.rfc2136.is_none() {
            return Err(err(
                "dns.rfc2136",
                "provider rfc2136 without its section",
                "add dns.rfc2136 with server, zone and tsig_key_file",
            ));
        }
        if provider == "route53" && d.route53.is_none() {
            return Err(err(
                "dns.route53",
                "provider route53 without its section",
                "add dns.route53 with hosted_zone_id",
            ));
        }
        Ok(())
    }

    fn validate_backup(&self) -> Result<(), ConfigError> {
        let b = &self.backup;
        if b.schedule.split_whitespace().count() != 5 {
            return Err(err(
                "backup.schedule",
                format!("'{}' is not a 5-field cron expression", b.schedule),
                "write minute hour day-of-month month day-of-week, e.g. '0 2 * * *'",
            ));
        }
        if let Err(e) = b.schedule.parse::<croner::Cron>() {
            return Err(err(
                "backup.schedule",
                format!("'{}' is not a valid cron expression: {e}", b.schedule),
                "write minute hour day-of-month month day-of-week, e.g. '0 2 * * *'",
            ));
        }
        if b.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(err(
                "backup.timezone",
                format!("unknown time zone '{}'", b.timezone),
                "use an IANA name such as UTC or Europe/Berlin",
            ));
        }
        if b.page_rows == 0 || b.page_rows > crate::milvus::MAX_QUERY_WINDOW {
            return Err(err(
                "backup.page_rows",
                format!("{} is out of range", b.page_rows),
                "use 1 to 16384 (Milvus' maxQueryResultWindow)",
            ));
        }
        if !(5..=5 * 1024).contains(&b.part_size_mib) {
            return Err(err(
                "backup.part_size_mib",
                format!("{} is out of range", b.part_size_mib),
                "use 5 to 5120: S3 refuses multipart parts under 5 MiB (16 is a good default)",
            ));
        }
        if b.object_max_mib < b.part_size_mib {
            return Err(err(
                "backup.object_max_mib",
                "smaller than backup.part_size_mib",
                "make objects at least one part large, e.g. 1024",
            ));
        }
        if !(Duration::from_secs(5)..=Duration::from_secs(3600)).contains(&b.lock_lease) {
            return Err(err(
                "backup.lock_lease",
                format!("{:?} is out of range", b.lock_lease),
                "use 5s to 1h (5m is a good default): the lock is renewed every fifth of it",
            ));
        }
        for e in &b.exclude {
            if e.split('.').count() != 2 {
                return Err(err(
                    "backup.exclude",
                    format!("'{e}' is not database.collection"),
                    "write entries as database.collection, e.g. default.scratch",
                ));
            }
        }
        if let Some(s3) = &b.s3 {
            if s3.bucket.is_empty() {
                return Err(err("backup.s3.bucket", "empty", "name the bucket"));
            }
            if let Some(ep) = &s3.endpoint {
                check_url("backup.s3.endpoint", ep, &["http", "https"])?;
            }
            if s3.prefix.starts_with('/') {
                return Err(err(
                    "backup.s3.prefix",
                    "starts with '/'",
                    "write the prefix without a leading slash, e.g. milvus/",
                ));
            }
            let env = (&s3.access_key_id_env, &s3.secret_access_key_env);
            let file = (&s3.access_key_id_file, &s3.secret_access_key_file);
            if env.0.is_some() != env.1.is_some() || file.0.is_some() != file.1.is_some() {
                return Err(err(
                    "backup.s3",
                    "only one half of a static credential is configured",
                    "set both access_key_id_env and secret_access_key_env (or both *_file), or neither for the default chain",
                ));
            }
            if env.0.is_some() && file.0.is_some() {
                return Err(err(
                    "backup.s3",
                    "static credentials from both environment and files",
                    "keep either the *_env or the *_file pair",
                ));
            }
        }
        Ok(())
    }

    pub fn local(&self) -> &Datacenter {
        &self.datacenters[&self.datacenter]
    }

    pub fn peer_id(&self) -> &str {
        self.datacenters
            .keys()
            .find(|k| **k != self.datacenter)
            .map(String::as_str)
            .unwrap_or_default()
    }

    pub fn peer(&self) -> &Datacenter {
        &self.datacenters[self.peer_id()]
    }

    /// DNS name the given datacenter's agent certificate carries.
    pub fn agent_identity(&self, dc: &str) -> String {
        self.datacenters
            .get(dc)
            .and_then(|d| d.agent_identity.clone())
            .unwrap_or_else(|| format!("agent.{dc}"))
    }
}

impl MilvusEndpoint {
    /// The `authorization` metadata value, reading the secret now.
    pub fn authorization(&self) -> anyhow::Result<Option<String>> {
        use anyhow::Context;
        let Some(user) = &self.username else {
            return Ok(None);
        };
        let password = if let Some(f) = &self.password_file {
            std::fs::read_to_string(f)
                .with_context(|| format!("read the Milvus password file {}", f.display()))?
                .trim_end()
                .to_string()
        } else if let Some(v) = &self.password_env {
            std::env::var(v).with_context(|| format!("read the Milvus password from ${v}"))?
        } else {
            String::new()
        };
        Ok(Some(base64_encode(format!("{user}:{password}").as_bytes())))
    }
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn check_url(field: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.split("://").next().unwrap_or_default();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    if !url.contains("://") || !schemes.contains(&scheme) || rest.is_empty() {
        return Err(err(
            field,
            format!("'{url}' is not a {} URL", schemes.join(" or ")),
            format!("write it as {}://host:port", schemes[0]),
        ));
    }
    let hostport = rest.split('/').next().unwrap_or_default();
    if !hostport.contains(':') {
        return Err(err(
            field,
            format!("'{url}' has no port"),
            format!("write it as {}://host:port", schemes[0]),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = r#"
datacenter: dc-a
initial_primary: dc-a
state_dir: state
datacenters:
  dc-a:
    milvus: { endpoint: "http://127.0.0.1:19530", health_url: "http://127.0.0.1:9091/healthz" }
    agent: "https://127.0.0.1:7443"
  dc-b:
    milvus: { endpoint: "http://127.0.0.1:19531" }
    agent: "https://127.0.0.1:7444"
listen: { grpc: "127.0.0.1:7443", metrics: "127.0.0.1:9464" }
tls: { ca: certs/ca.pem, cert: certs/agent.dc-a.pem, key: certs/agent.dc-a.key }
"#;

    #[test]
    fn sample_is_valid_with_defaults() {
        let c = Config::parse(SAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.replication.page_rows, 8192);
        assert_eq!(c.backup.retention_days, 30);
        assert_eq!(c.peer_id(), "dc-b");
        assert_eq!(c.agent_identity("dc-b"), "agent.dc-b");
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let c = Config::parse(&SAMPLE.replace("initial_primary: dc-a", "initial_primary: dc-x"))
            .unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "initial_primary");
        assert!(e.fix.contains("dc-a"), "{e}");

        let c = Config::parse(&format!("{SAMPLE}replication: {{ page_rows: 20000 }}\n")).unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "replication.page_rows");
        assert!(e.to_string().contains("16384"));

        let c = Config::parse(&SAMPLE.replace("https://127.0.0.1:7444", "127.0.0.1:7444")).unwrap();
        assert_eq!(c.validate().unwrap_err().field, "datacenters.dc-b.agent");
    }

    #[test]
    fn anti_entropy_interval_is_10m_by_default_off_at_0s_and_at_least_1s() {
        let with = |extra: &str| Config::parse(&format!("{SAMPLE}{extra}\n")).unwrap();
        let c = with("");
        assert_eq!(
            c.replication.anti_entropy_interval,
            Duration::from_secs(600)
        );
        for ok in ["0s", "1s", "2h"] {
            with(&format!("replication: {{ anti_entropy_interval: {ok} }}"))
                .validate()
                .unwrap();
        }
        let e = with("replication: { anti_entropy_interval: 500ms }")
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "replication.anti_entropy_interval");
        assert!(e.fix.contains("0s"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_a_location() {
        let e = Config::parse(&format!("{SAMPLE}replicaton: {{}}\n")).unwrap_err();
        assert!(e.field.starts_with("line"), "{e}");
        assert!(e.problem.contains("replicaton"), "{e}");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = Config::parse(include_str!("../../deploy/examples/agent.yaml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.datacenter, "dc-a");
    }

    #[test]
    fn backup_errors_name_the_field() {
        let with = |extra: &str| {
            Config::parse(&format!("{SAMPLE}{extra}\n"))
                .unwrap()
                .validate()
        };
        assert_eq!(
            with("backup: { schedule: '0 25 * * *' }")
                .unwrap_err()
                .field,
            "backup.schedule"
        );
        assert_eq!(
            with("backup: { timezone: Mars/Olympus }")
                .unwrap_err()
                .field,
            "backup.timezone"
        );
        assert_eq!(
            with("backup: { lock_lease: 2s }").unwrap_err().field,
            "backup.lock_lease"
        );
        let e = with("backup: { s3: { bucket: b, access_key_id_env: K } }").unwrap_err();
        assert_eq!(e.field, "backup.s3");
        assert!(e.fix.contains("secret_access_key_env"), "{e}");
        with("backup: { enabled: true, schedule: '30 2 * * 1-5', timezone: Europe/Berlin, s3: { bucket: b, endpoint: 'http://127.0.0.1:9000', force_path_style: true } }").unwrap();
    }

    #[test]
    fn dns_errors_name_the_field() {
        let with = |extra: &str| {
            Config::parse(&format!("{SAMPLE}{extra}\n"))
                .unwrap()
                .validate()
        };
        let rfc = "rfc2136: { server: 'ns:53', zone: example.net., tsig_key_file: /k }";
        assert_eq!(
            with(&format!(
                "dns: {{ provider: rfc2136, values: {{ dc-a: [10.0.0.1] }}, {rfc} }}"
            ))
            .unwrap_err()
            .field,
            "dns.record"
        );
        let e = with(&format!(
            "dns: {{ provider: rfc2136, record: m.example.net., values: {{ dc-b: [10.0.0.2] }}, {rfc} }}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "dns.values.dc-a");
        let e = with(
            "dns: { provider: rfc2136, record: m.example.net., values: { dc-a: [10.0.0.1] } }",
        )
        .unwrap_err();
        assert_eq!(e.field, "dns.rfc2136");
        let e = with("dns: { provider: route53, record: m.example.net., values: { dc-a: [lb.example.net, 10.0.0.1] }, route53: { hosted_zone_id: Z1 } }")
            .unwrap_err();
        assert_eq!(e.field, "dns.values.dc-a");
        with(&format!(
            "dns: {{ provider: rfc2136, record: m.example.net., values: {{ dc-a: [10.0.0.1], dc-b: [10.0.0.2] }}, {rfc} }}"
        ))
        .unwrap();
        with("dns: { provider: route53, record: m.example.net., values: { dc-a: [lb-a.example.net] }, route53: { hosted_zone_id: Z1 } }").unwrap();
    }

    #[test]
    fn frontdoor_is_off_by_default_and_allows_reads_unless_told() {
        let with = |extra: &str| Config::parse(&format!("{SAMPLE}{extra}\n")).unwrap();
        assert!(with("").frontdoor.is_none());
        let c = with("frontdoor: { listen: \"127.0.0.1:19540\" }");
        c.validate().unwrap();
        let fd = c.frontdoor.unwrap();
        assert_eq!(fd.listen, "127.0.0.1:19540".parse().unwrap());
        assert_eq!(fd.reads_when_not_primary, ReadsWhenNotPrimary::Allow);
        let c = with("frontdoor: { listen: \"0.0.0.0:19530\", reads_when_not_primary: refuse }");
        c.validate().unwrap();
        assert_eq!(
            c.frontdoor.unwrap().reads_when_not_primary,
            ReadsWhenNotPrimary::Refuse
        );
    }

    #[test]
    fn frontdoor_errors_name_the_field_and_the_fix() {
        let parse = |extra: &str| Config::parse(&format!("{SAMPLE}{extra}\n"));
        let e = parse("frontdoor: { listen: \"127.0.0.1:7443\" }")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "frontdoor.listen");
        assert!(e.problem.contains("listen.grpc"), "{e}");
        let e = parse("frontdoor: { listen: \"127.0.0.1:9464\" }")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "frontdoor.listen");
        let e = Config::parse(&format!(
            "{}frontdoor: {{ listen: \"127.0.0.1:19540\" }}\n",
            SAMPLE.replace("http://127.0.0.1:19530", "https://127.0.0.1:19530")
        ))
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "datacenters.dc-a.milvus.endpoint");
        assert!(e.fix.contains("http://"), "{e}");
        let e = parse("frontdoor: { listen: \"127.0.0.1:19540\", reads_when_not_primary: maybe }")
            .unwrap_err();
        assert!(e.problem.contains("allow"), "{e}");
        let e = parse("frontdoor: { listen: nowhere }").unwrap_err();
        assert!(e.field.starts_with("line"), "{e}");
        let e = parse("frontdoor: { listen: \"127.0.0.1:19540\", tls: true }").unwrap_err();
        assert!(e.problem.contains("tls"), "{e}");
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b"root:Milvus"), "cm9vdDpNaWx2dXM=");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"abc"), "YWJj");
    }
}
