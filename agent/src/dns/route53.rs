//! Route 53 (the real SDK; a custom endpoint for emulators).
//!
//! One change batch: DELETE the exact current record sets (the name's
//! values and the TXT marker) and CREATE the new ones. Route 53 applies a
//! batch atomically and rejects a DELETE whose values do not match the
//! current ones (`InvalidChangeBatch`): a stale agent's batch fails. Then
//! GetChange is polled until INSYNC.

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_route53::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;

use super::{fqdn, DnsError, Marker, Provider, RecordState, Value};
use crate::config::Dns;

pub struct Route53 {
    client: Client,
    zone_id: String,
    record: String,
    marker: String,
    ttl: i64,
    insync_timeout: Duration,
    poll: Duration,
}

impl Route53 {
    pub async fn from_config(dns: &Dns) -> anyhow::Result<Route53> {
        let c = dns
            .route53
            .as_ref()
            .context("dns.route53 is missing (validated at load)")?;
        let creds = crate::aws::Credentials {
            access_key_id_env: c.access_key_id_env.as_deref(),
            secret_access_key_env: c.secret_access_key_env.as_deref(),
            access_key_id_file: c.access_key_id_file.as_ref(),
            secret_access_key_file: c.secret_access_key_file.as_ref(),
        };
        let sdk = crate::aws::sdk_config(
            &c.region,
            c.endpoint.as_deref(),
            &creds,
            Duration::from_secs(30),
        )
        .await?;
        Ok(Route53 {
            client: Client::new(&sdk),
            zone_id: c.hosted_zone_id.clone(),
            record: fqdn(dns.record.as_deref().context("dns.record is missing")?),
            marker: dns.marker_name(),
            ttl: i64::from(dns.ttl),
            insync_timeout: c.insync_timeout,
            poll: Duration::from_secs(2).min(c.insync_timeout / 10),
        })
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        what: &str,
        e: SdkError<E>,
    ) -> DnsError {
        let code = e.code().unwrap_or_default().to_string();
        let text = format!(
            "Route 53 {what} (zone {}): {}{}",
            self.zone_id,
            if code.is_empty() { "" } else { &code },
            e.message()
                .map(|m| format!(": {m}"))
                .unwrap_or_else(|| format!(" {e}"))
        );
        match code.as_str() {
            "InvalidChangeBatch" => DnsError::Changed(text),
            "AccessDenied"
            | "AccessDeniedException"
            | "NoSuchHostedZone"
            | "InvalidInput"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch" => DnsError::Refused(text),
            _ => DnsError::Unavailable(text),
        }
    }

    /// The record sets at `name` of the given types.
    async fn sets(&self, name: &str, types: &[RrType]) -> Result<Vec<ResourceRecordSet>, DnsError> {
        let mut out = vec![];
        for t in types {
            let r = self
                .client
                .list_resource_record_sets()
                .hosted_zone_id(&self.zone_id)
                .start_record_name(name)
                .start_record_type(t.clone())
                .max_items(1)
                .send()
                .await
                .map_err(|e| self.error("ListResourceRecordSets", e))?;
            out.extend(
                r.resource_record_sets()
                    .iter()
                    .filter(|s| fqdn(s.name()) == name && s.r#type() == t)
                    .cloned(),
            );
        }
        Ok(out)
    }

    fn set(&self, name: &str, t: RrType, values: Vec<String>) -> anyhow::Result<ResourceRecordSet> {
        Ok(ResourceRecordSet::builder()
            .name(name)
            .r#type(t)
            .ttl(self.ttl)
            .set_resource_records(Some(
                values
                    .into_iter()
                    .map(|v| ResourceRecord::builder().value(v).build())
                    .collect::<Result<Vec<_>, _>>()?,
            ))
            .build()?)
    }

    /// The changes that swap `current` (as listed) for `values`/`marker`.
    fn changes(
        &self,
        current: Vec<ResourceRecordSet>,
        values: &[Value],
        marker: &Marker,
    ) -> anyhow::Result<Vec<Change>> {
        let mut changes = vec![];
        for s in current {
            changes.push(
                Change::builder()
                    .action(ChangeAction::Delete)
                    .resource_record_set(s)
                    .build()?,
            );
        }
        let mut by_type: Vec<(RrType, Vec<String>)> = vec![];
        for v in values {
            let (t, text) = match v {
                Value::Addr(std::net::IpAddr::V4(ip)) => (RrType::A, ip.to_string()),
                Value::Addr(std::net::IpAddr::V6(ip)) => (RrType::Aaaa, ip.to_string()),
                Value::Name(n) => (RrType::Cname, n.clone()),
            };
            match by_type.iter_mut().find(|(k, _)| *k == t) {
                Some((_, list)) => list.push(text),
                None => by_type.push((t, vec![text])),
            }
        }
        for (t, list) in by_type {
            changes.push(
                Change::builder()
                    .action(ChangeAction::Create)
                    .resource_record_set(self.set(&self.record, t, list)?)
                    .build()?,
            );
        }
        changes.push(
            Change::builder()
                .action(ChangeAction::Create)
                .resource_record_set(self.set(
                    &self.marker,
                    RrType::Txt,
                    vec![format!("\"{}\"", marker.text())],
                )?)
                .build()?,
        );
        Ok(changes)
    }
}

const ADDRESS_TYPES: [RrType; 3] = [RrType::A, RrType::Aaaa, RrType::Cname];

fn unquote(v: &str) -> String {
    // TXT values come back quoted, possibly as several strings.
    v.split("\" \"")
        .map(|p| p.trim_matches('"'))
        .collect::<Vec<_>>()
        .concat()
}

#[async_trait::async_trait]
impl Provider for Route53 {
    fn describe(&self) -> String {
        format!("route53 zone {}", self.zone_id)
    }

    async fn read(&self) -> Result<RecordState, DnsError> {
        let mut values = vec![];
        for s in self.sets(&self.record, &ADDRESS_TYPES).await? {
            for r in s.resource_records() {
                values.push(Value::parse(r.value()));
            }
        }
        values.sort();
        let marker_txt = self
            .sets(&self.marker, &[RrType::Txt])
            .await?
            .iter()
            .flat_map(|s| s.resource_records().iter().map(|r| unquote(r.value())))
            .collect();
        Ok(RecordState { values, marker_txt })
    }

    async fn swap(
        &self,
        current: &RecordState,
        values: &[Value],
        marker: &Marker,
    ) -> Result<(), DnsError> {
        // DELETE must name the record sets exactly as they are: list them
        // again and check they still hold what was read.
        let mut sets = self.sets(&self.record, &ADDRESS_TYPES).await?;
        sets.extend(self.sets(&self.marker, &[RrType::Txt]).await?);
        let now = self.read().await?;
        if &now != current {
            return Err(DnsError::Changed(format!(
                "zone {} changed between read and swap",
                self.zone_id
            )));
        }
        let changes = self
            .changes(sets, values, marker)
            .map_err(|e| DnsError::Refused(format!("{e:#}")))?;
        let batch = ChangeBatch::builder()
            .comment(format!("milvus-dr: {}", marker.text()))
            .set_changes(Some(changes))
            .build()
            .map_err(|e| DnsError::Refused(e.to_string()))?;
        let r = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(&self.zone_id)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| self.error("ChangeResourceRecordSets", e))?;
        let id = r
            .change_info()
            .map(|c| c.id().to_string())
            .unwrap_or_default();
        let started = Instant::now();
        loop {
            let status = self
                .client
                .get_change()
                .id(&id)
                .send()
                .await
                .map_err(|e| self.error("GetChange", e))?
                .change_info()
                .map(|c| c.status().clone());
            if status == Some(ChangeStatus::Insync) {
                tracing::info!(change = %id, ms = started.elapsed().as_millis() as u64, "Route 53 change INSYNC");
                return Ok(());
            }
            if started.elapsed() > self.insync_timeout {
                return Err(DnsError::Unavailable(format!(
                    "change {id} not INSYNC after {:?} (status {status:?})",
                    self.insync_timeout
                )));
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

/// Route 53 without the control plane at failover time (AWS's advice for
/// DR: the record API lives in one region): failover routing records, one
/// per datacenter (PRIMARY for `initial_primary`, SECONDARY for the other),
/// each tied to a Route 53 health check of that agent's `/dr/primary`,
/// which answers 200 only while the agent holds a valid lease as primary.
/// Route 53 then answers with whichever datacenter is primary; nothing is
/// called when a failover happens.
pub mod failover_records {
    use super::*;
    use aws_sdk_route53::types::{HealthCheckConfig, HealthCheckType, ResourceRecordSetFailover};
    use serde::Serialize;

    /// One datacenter's part of the plan.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Planned {
        pub datacenter: String,
        /// PRIMARY or SECONDARY.
        pub failover: String,
        pub set_identifier: String,
        pub values: Vec<String>,
        pub record_type: String,
        /// What Route 53 probes: `http://ip:port/dr/primary`.
        pub health_check_url: String,
        /// Idempotency key of the health check.
        pub caller_reference: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Plan {
        pub hosted_zone_id: String,
        pub record: String,
        pub ttl: u32,
        pub request_interval_s: i32,
        pub failure_threshold: i32,
        pub records: Vec<Planned>,
    }

    /// The plan for `cfg` (validated: both datacenters have values and a
    /// health check URL).
    pub fn plan(cfg: &crate::config::Config) -> anyhow::Result<Plan> {
        let dns = &cfg.dns;
        let r53 = dns
            .route53
            .as_ref()
            .context("dns.route53 is missing; fix: add it with hosted_zone_id")?;
        let fr = r53.failover_records.as_ref().context(
            "dns.route53.failover_records is missing; fix: add health_checks: { dc: http://ip:port/dr/primary } for both datacenters",
        )?;
        let record = fqdn(dns.record.as_deref().context("dns.record is missing")?);
        let mut records = vec![];
        for dc in cfg.datacenters.keys() {
            let values = dns.values.get(dc).cloned().unwrap_or_default();
            anyhow::ensure!(
                !values.is_empty(),
                "dns.values.{dc}: no value; fix: list the addresses the name holds while {dc} is primary"
            );
            let url = fr.health_checks.get(dc).with_context(|| {
                format!("dns.route53.failover_records.health_checks.{dc} is missing; fix: http://<agent ip>:<metrics port>/dr/primary")
            })?;
            let t = match Value::parse(&values[0]) {
                Value::Addr(std::net::IpAddr::V4(_)) => "A",
                Value::Addr(std::net::IpAddr::V6(_)) => "AAAA",
                Value::Name(_) => "CNAME",
            };
            records.push(Planned {
                datacenter: dc.clone(),
                failover: if *dc == cfg.initial_primary {
                    "PRIMARY".into()
                } else {
                    "SECONDARY".into()
                },
                set_identifier: format!("milvus-dr-{dc}"),
                values,
                record_type: t.into(),
                health_check_url: url.clone(),
                caller_reference: format!("milvus-dr-{}-{dc}", record.trim_end_matches('.')),
            });
        }
        Ok(Plan {
            hosted_zone_id: r53.hosted_zone_id.clone(),
            record,
            ttl: dns.ttl,
            request_interval_s: fr.request_interval_s,
            failure_threshold: fr.failure_threshold,
            records,
        })
    }

    /// `http://ip:port/path` -> (ip, port, path).
    fn split_url(url: &str) -> anyhow::Result<(String, i32, String)> {
        let rest = url.strip_prefix("http://").with_context(|| {
            format!("{url}: Route 53 health checks here are plain HTTP: http://ip:port/dr/primary")
        })?;
        let (host_port, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = host_port
            .rsplit_once(':')
            .with_context(|| format!("{url}: no port"))?;
        Ok((
            host.trim_matches(['[', ']']).to_string(),
            port.parse()?,
            format!("/{path}"),
        ))
    }

    /// Creates the health checks (or updates the ones an earlier apply
    /// made, found by caller reference) and UPSERTs the failover records. Returns each datacenter's health check
    /// id.
    pub async fn apply(r53: &Route53, plan: &Plan) -> anyhow::Result<Vec<(String, String)>> {
        // Health checks made by an earlier apply, found by caller reference.
        let mut existing = vec![];
        let mut marker: Option<String> = None;
        loop {
            let page = r53
                .client
                .list_health_checks()
                .set_marker(marker.clone())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!(r53.error("ListHealthChecks", e)))?;
            existing.extend(page.health_checks().iter().cloned());
            match page.next_marker() {
                Some(m) if page.is_truncated() => marker = Some(m.to_string()),
                _ => break,
            }
        }
        let mut ids = vec![];
        let mut changes = vec![];
        for p in &plan.records {
            let (ip, port, path) = split_url(&p.health_check_url)?;
            let id = match existing
                .iter()
                .find(|h| h.caller_reference() == p.caller_reference)
            {
                // Ours already: brought to the plan (address, path, threshold).
                Some(h) => {
                    r53.client
                        .update_health_check()
                        .health_check_id(h.id())
                        .ip_address(&ip)
                        .port(port)
                        .resource_path(&path)
                        .failure_threshold(plan.failure_threshold)
                        .send()
                        .await
                        .map_err(|e| anyhow::anyhow!(r53.error("UpdateHealthCheck", e)))?;
                    h.id().to_string()
                }
                None => r53
                    .client
                    .create_health_check()
                    .caller_reference(&p.caller_reference)
                    .health_check_config(
                        HealthCheckConfig::builder()
                            .r#type(HealthCheckType::Http)
                            .ip_address(ip)
                            .port(port)
                            .resource_path(path)
                            .request_interval(plan.request_interval_s)
                            .failure_threshold(plan.failure_threshold)
                            .build()?,
                    )
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!(r53.error("CreateHealthCheck", e)))?
                    .health_check()
                    .map(|h| h.id().to_string())
                    .context("no health check id")?,
            };
            let t = RrType::from(p.record_type.as_str());
            let set = ResourceRecordSet::builder()
                .name(&plan.record)
                .r#type(t)
                .ttl(i64::from(plan.ttl))
                .set_identifier(&p.set_identifier)
                .failover(ResourceRecordSetFailover::from(p.failover.as_str()))
                .health_check_id(&id)
                .set_resource_records(Some(
                    p.values
                        .iter()
                        .map(|v| ResourceRecord::builder().value(v).build())
                        .collect::<Result<Vec<_>, _>>()?,
                ))
                .build()?;
            changes.push(
                Change::builder()
                    .action(ChangeAction::Upsert)
                    .resource_record_set(set)
                    .build()?,
            );
            ids.push((p.datacenter.clone(), id));
        }
        r53.client
            .change_resource_record_sets()
            .hosted_zone_id(&plan.hosted_zone_id)
            .change_batch(
                ChangeBatch::builder()
                    .comment("milvus-dr: failover records")
                    .set_changes(Some(changes))
                    .build()?,
            )
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(r53.error("ChangeResourceRecordSets", e)))?;
        Ok(ids)
    }
}
