//! After a switch: every authoritative server answers the new value
//! (bounded by `dns.verify.timeout`), then the service is proven through
//! the name: Milvus reached at the address the name now gives answers
//! CheckHealth and lists its databases.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hickory_client::client::{Client, ClientHandle};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::udp::UdpClientStream;

use super::{fqdn, resolve_addr, Value};
use crate::config::Config;
use crate::milvus::{Connection, Milvus};

#[derive(Clone)]
pub struct Verify {
    pub nameservers: Vec<SocketAddr>,
    pub record: Option<Name>,
    pub timeout: Duration,
    /// Milvus port behind the name; `None`: no service check.
    pub milvus_port: Option<u16>,
    pub authorization: Option<String>,
}

impl Verify {
    pub fn from_config(cfg: &Config) -> Result<Verify> {
        let v = &cfg.dns.verify;
        let mut nameservers = v
            .nameservers
            .iter()
            .map(|s| resolve_addr(s).with_context(|| format!("dns.verify.nameservers: {s}")))
            .collect::<Result<Vec<_>>>()?;
        if nameservers.is_empty() {
            if let Some(r) = &cfg.dns.rfc2136 {
                nameservers.push(resolve_addr(&r.server)?);
            }
        }
        // The port clients use behind the name: the front door's when there
        // is one, else Milvus's own.
        let own_port = cfg
            .frontdoor
            .as_ref()
            .map(|f| f.listen.port())
            .filter(|p| *p != 0)
            .or_else(|| url_port(&cfg.local().milvus.endpoint));
        Ok(Verify {
            nameservers,
            record: cfg
                .dns
                .record
                .as_deref()
                .map(|r| Name::from_str(&fqdn(r)))
                .transpose()?,
            timeout: v.timeout,
            milvus_port: v
                .service_check
                .then_some(v.milvus_port.or(own_port))
                .flatten(),
            authorization: cfg.local().milvus.authorization()?,
        })
    }

    /// What `server` answers for the name (sorted).
    pub async fn ask(&self, server: SocketAddr) -> Result<Vec<Value>> {
        let name = self.record.clone().context("dns.record is missing")?;
        let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
            .with_timeout(Some(Duration::from_secs(2)))
            .build();
        let (mut client, bg) = Client::connect(stream).await?;
        tokio::spawn(bg);
        let mut out = vec![];
        for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let Ok(r) = client.query(name.clone(), DNSClass::IN, t).await else {
                continue;
            };
            for a in r.answers().iter().filter(|a| a.name() == &name) {
                match a.data() {
                    RData::A(x) if t == RecordType::A => out.push(Value::Addr(x.0.into())),
                    RData::AAAA(x) if t == RecordType::AAAA => out.push(Value::Addr(x.0.into())),
                    RData::CNAME(x) if t == RecordType::CNAME => {
                        out.push(Value::Name(x.0.to_ascii()))
                    }
                    _ => {}
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Waits until every nameserver answers `values`, then checks the
    /// service through the name. Returns what was done, with times.
    pub async fn run(&self, values: &[Value]) -> Result<Proof> {
        let started = Instant::now();
        let mut steps = vec![];
        let mut pending: Vec<SocketAddr> = self.nameservers.clone();
        while !pending.is_empty() {
            let mut still = vec![];
            for ns in pending {
                match self.ask(ns).await {
                    Ok(v) if v == values => {
                        tracing::info!(nameserver = %ns, ms = started.elapsed().as_millis() as u64, "DNS: the authoritative server answers the new value");
                    }
                    _ => still.push(ns),
                }
            }
            pending = still;
            if !pending.is_empty() {
                if started.elapsed() > self.timeout {
                    bail!(
                        "after {:?}, {} of {} authoritative servers still do not answer {:?}: {:?}",
                        self.timeout,
                        pending.len(),
                        self.nameservers.len(),
                        values.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        pending
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        steps.push(format!(
            "{} authoritative server(s) answer the new value after {} ms",
            self.nameservers.len(),
            started.elapsed().as_millis()
        ));
        let authoritative_wall_ms = dr_proto::now_ms().max(0) as u64;
        let mut service_wall_ms = None;
        if let (Some(port), Some(first)) = (self.milvus_port, values.first()) {
            let host = match first {
                Value::Addr(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                Value::Addr(ip) => ip.to_string(),
                Value::Name(n) => n.trim_end_matches('.').to_string(),
            };
            let endpoint = format!("http://{host}:{port}");
            let m = Milvus::connect(Connection {
                endpoint: endpoint.clone(),
                health_url: None,
                authorization: self.authorization.clone(),
                request_timeout: Duration::from_secs(10),
            })?;
            let h = m.health().await;
            if !h.healthy {
                bail!(
                    "Milvus through the name ({endpoint}) is not healthy: {}",
                    h.detail
                );
            }
            let dbs = m
                .list_databases()
                .await
                .with_context(|| format!("list databases through the name ({endpoint})"))?;
            steps.push(format!(
                "service verified through the name after {} ms ({endpoint}: healthy, {} database(s))",
                started.elapsed().as_millis(),
                dbs.len()
            ));
            service_wall_ms = Some(dr_proto::now_ms().max(0) as u64);
        }
        Ok(Proof {
            text: steps.join("; "),
            authoritative_wall_ms,
            service_wall_ms,
        })
    }
}

/// What [`Verify::run`] established, and when (wall ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub text: String,
    /// Every authoritative server answered the new value.
    pub authoritative_wall_ms: u64,
    /// Milvus answered through the name (`None`: not configured).
    pub service_wall_ms: Option<u64>,
}

fn url_port(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.split('/').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}
