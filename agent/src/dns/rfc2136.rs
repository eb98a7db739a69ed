//! RFC 2136 dynamic update, TSIG-signed (BIND 9, Knot, PowerDNS).
//!
//! One UPDATE message, which the primary server applies atomically or not
//! at all: prerequisites that the name's A, AAAA and CNAME sets and the
//! marker's TXT set hold exactly what was read (or do not exist), then the
//! deletes and the adds. A stale swap is answered NXRRSET or YXRRSET.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use futures::StreamExt;
use hickory_client::client::{Client, ClientHandle};
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::tcp::TcpClientStream;
use hickory_proto::xfer::DnsHandle;
use hickory_proto::{ProtoError, ProtoErrorKind};

use super::{fqdn, DnsError, Marker, Provider, RecordState, Value};
use crate::config::Dns;

/// The address record types the service name may hold.
const ADDRESS_TYPES: [RecordType; 3] = [RecordType::A, RecordType::AAAA, RecordType::CNAME];

/// A TSIG key as `tsig-keygen` writes it: name, algorithm, secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: String,
    pub secret: Vec<u8>,
}

impl TsigKey {
    /// Reads a BIND key file (`key "name" { algorithm hmac-sha256; secret
    /// "base64"; };`, as `tsig-keygen -a hmac-sha256 NAME` prints it).
    pub fn read(path: &Path) -> anyhow::Result<TsigKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the TSIG key file {}", path.display()))?;
        Self::parse(&text).with_context(|| {
            format!(
                "{}: not a TSIG key file; fix: write it with `tsig-keygen -a hmac-sha256 NAME`",
                path.display()
            )
        })
    }

    pub fn parse(text: &str) -> anyhow::Result<TsigKey> {
        let quoted = |after: &str| -> Option<String> {
            let rest = &text[text.find(after)? + after.len()..];
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find('"')?;
            Some(rest[start..end].to_string())
        };
        let name = quoted("key").ok_or_else(|| anyhow!("no key name"))?;
        let secret = quoted("secret").ok_or_else(|| anyhow!("no secret"))?;
        let algorithm = text
            .split("algorithm")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .map(|a| a.trim().trim_matches('"').to_ascii_lowercase())
            .ok_or_else(|| anyhow!("no algorithm"))?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .context("the secret is not base64")?;
        Ok(TsigKey {
            name,
            algorithm,
            secret,
        })
    }

    fn signer(&self) -> anyhow::Result<TSigner> {
        let algorithm = match self.algorithm.as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => bail!("TSIG algorithm {other} is not supported; use hmac-sha256"),
        };
        TSigner::new(
            self.secret.clone(),
            algorithm,
            Name::from_str(&fqdn(&self.name))?,
            300,
        )
        .map_err(|e| anyhow!("TSIG key {}: {e}", self.name))
    }
}

pub struct Rfc2136 {
    server: SocketAddr,
    zone: Name,
    record: Name,
    marker: Name,
    ttl: u32,
    signer: Arc<TSigner>,
    key_name: String,
    timeout: Duration,
}

impl Rfc2136 {
    pub fn from_config(dns: &Dns) -> anyhow::Result<Rfc2136> {
        let c = dns
            .rfc2136
            .as_ref()
            .context("dns.rfc2136 is missing (validated at load)")?;
        let record = dns.record.clone().context("dns.record is missing")?;
        let key = TsigKey::read(&c.tsig_key_file)?;
        Ok(Rfc2136 {
            server: super::resolve_addr(&c.server)
                .with_context(|| format!("dns.rfc2136.server {}", c.server))?,
            zone: Name::from_str(&fqdn(&c.zone))?,
            record: Name::from_str(&fqdn(&record))?,
            marker: Name::from_str(&dns.marker_name())?,
            ttl: dns.ttl,
            signer: Arc::new(key.signer()?),
            key_name: key.name,
            timeout: c.timeout,
        })
    }

    async fn client(&self) -> Result<Client, DnsError> {
        let (stream, sender) = TcpClientStream::new(
            self.server,
            None,
            Some(self.timeout),
            TokioRuntimeProvider::new(),
        );
        let signer: Arc<dyn hickory_proto::op::MessageFinalizer> = self.signer.clone();
        let (client, bg) = Client::with_timeout(stream, sender, self.timeout, Some(signer))
            .await
            .map_err(|e| DnsError::Unavailable(format!("connect to {}: {e}", self.server)))?;
        tokio::spawn(bg);
        Ok(client)
    }

    fn error(&self, e: ProtoError) -> DnsError {
        match e.kind() {
            ProtoErrorKind::NoRecordsFound { response_code, .. } => self
                .code_error(*response_code)
                .unwrap_or_else(|| DnsError::Unavailable(format!("{}: {e}", self.server))),
            _ => {
                let text = e.to_string();
                if text.contains("HMAC") || text.contains("tsig") || text.contains("TSIG") {
                    DnsError::Refused(format!(
                        "{}: the TSIG signature does not verify ({text}); fix: use the key the server has for {}",
                        self.server, self.key_name
                    ))
                } else {
                    DnsError::Unavailable(format!("{}: {text}", self.server))
                }
            }
        }
    }

    /// What a response code means for a switch (`None`: success).
    fn code_error(&self, code: ResponseCode) -> Option<DnsError> {
        let at = &self.server;
        match code {
            ResponseCode::NoError => None,
            ResponseCode::NXRRSet | ResponseCode::YXRRSet | ResponseCode::YXDomain => Some(
                DnsError::Changed(format!("{at} answered {code}: a prerequisite does not hold")),
            ),
            ResponseCode::NotAuth | ResponseCode::BADKEY | ResponseCode::BADSIG => {
                Some(DnsError::Refused(format!(
                    "{at} answered {code}; fix: the server must know TSIG key {} and accept it for zone {}",
                    self.key_name, self.zone
                )))
            }
            ResponseCode::Refused | ResponseCode::NotZone => Some(DnsError::Refused(format!(
                "{at} answered {code}; fix: allow updates of {} by key {} (update-policy / allow-update)",
                self.zone, self.key_name
            ))),
            other => Some(DnsError::Unavailable(format!("{at} answered {other}"))),
        }
    }

    async fn query(
        &self,
        client: &mut Client,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Vec<Record>, DnsError> {
        match client.query(name.clone(), DNSClass::IN, rtype).await {
            Ok(r) => match self.code_error(r.response_code()) {
                None | Some(DnsError::Changed(_)) => Ok(r
                    .answers()
                    .iter()
                    .filter(|a| a.record_type() == rtype && a.name() == name)
                    .cloned()
                    .collect()),
                Some(_) if r.response_code() == ResponseCode::NXDomain => Ok(vec![]),
                Some(e) => Err(e),
            },
            Err(e) => match e.kind() {
                hickory_client::ClientErrorKind::Proto(p) => match p.kind() {
                    // No such name or no records of the type: empty.
                    ProtoErrorKind::NoRecordsFound {
                        response_code: ResponseCode::NoError | ResponseCode::NXDomain,
                        ..
                    } => Ok(vec![]),
                    _ => Err(self.error(p.clone())),
                },
                other => Err(DnsError::Unavailable(format!("{}: {other}", self.server))),
            },
        }
    }

    fn add(&self, name: &Name, rdata: RData) -> Record {
        let mut r = Record::from_rdata(name.clone(), self.ttl, rdata);
        r.set_dns_class(DNSClass::IN);
        r
    }

    /// "RRset exists (value dependent)": these exact records, TTL 0.
    fn exactly(&self, name: &Name, rdata: RData) -> Record {
        let mut r = Record::from_rdata(name.clone(), 0, rdata);
        r.set_dns_class(DNSClass::IN);
        r
    }

    /// "RRset does not exist" (class NONE) or "delete an RRset" (class ANY).
    fn empty(&self, name: &Name, rtype: RecordType, class: DNSClass) -> Record {
        let mut r = Record::update0(name.clone(), 0, rtype);
        r.set_dns_class(class);
        r
    }

    fn rdata(v: &Value) -> anyhow::Result<RData> {
        Ok(match v {
            Value::Addr(std::net::IpAddr::V4(ip)) => RData::A(A(*ip)),
            Value::Addr(std::net::IpAddr::V6(ip)) => RData::AAAA(AAAA(*ip)),
            Value::Name(n) => RData::CNAME(CNAME(Name::from_str(n)?)),
        })
    }

    /// The UPDATE message that swaps `current` for `values` and `marker`.
    pub fn update(
        &self,
        current: &RecordState,
        values: &[Value],
        marker: &Marker,
    ) -> anyhow::Result<Message> {
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut m = Message::new();
        m.set_id(rand_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Update)
            .set_recursion_desired(false);
        m.add_zone(zone);
        // Prerequisites: exactly what was read.
        for t in ADDRESS_TYPES {
            let now: Vec<RData> = current
                .values
                .iter()
                .map(Self::rdata)
                .collect::<anyhow::Result<Vec<_>>>()?
                .into_iter()
                .filter(|r| r.record_type() == t)
                .collect();
            if now.is_empty() {
                m.add_pre_requisite(self.empty(&self.record, t, DNSClass::NONE));
            }
            for r in now {
                m.add_pre_requisite(self.exactly(&self.record, r));
            }
        }
        if current.marker_txt.is_empty() {
            m.add_pre_requisite(self.empty(&self.marker, RecordType::TXT, DNSClass::NONE));
        }
        for t in &current.marker_txt {
            m.add_pre_requisite(self.exactly(&self.marker, RData::TXT(TXT::new(vec![t.clone()]))));
        }
        // Updates: delete every address set and the marker, add the new.
        for t in ADDRESS_TYPES {
            m.add_update(self.empty(&self.record, t, DNSClass::ANY));
        }
        m.add_update(self.empty(&self.marker, RecordType::TXT, DNSClass::ANY));
        for v in values {
            m.add_update(self.add(&self.record, Self::rdata(v)?));
        }
        m.add_update(self.add(&self.marker, RData::TXT(TXT::new(vec![marker.text()]))));
        Ok(m)
    }
}

fn rand_id() -> u16 {
    (dr_proto::now_ms() as u64 ^ u64::from(std::process::id())).wrapping_mul(0x9E37_79B9) as u16
}

#[async_trait::async_trait]
impl Provider for Rfc2136 {
    fn describe(&self) -> String {
        format!(
            "rfc2136 {} zone {} key {}",
            self.server, self.zone, self.key_name
        )
    }

    async fn read(&self) -> Result<RecordState, DnsError> {
        let mut client = self.client().await?;
        let mut values = vec![];
        for t in ADDRESS_TYPES {
            for r in self.query(&mut client, &self.record, t).await? {
                match r.data() {
                    RData::A(a) => values.push(Value::Addr(a.0.into())),
                    RData::AAAA(a) => values.push(Value::Addr(a.0.into())),
                    RData::CNAME(c) => values.push(Value::Name(c.0.to_ascii())),
                    _ => {}
                }
            }
        }
        values.sort();
        let mut marker_txt = vec![];
        for r in self
            .query(&mut client, &self.marker, RecordType::TXT)
            .await?
        {
            if let RData::TXT(t) = r.data() {
                let text: Vec<String> = t
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .collect();
                marker_txt.push(text.concat());
            }
        }
        Ok(RecordState { values, marker_txt })
    }

    async fn swap(
        &self,
        current: &RecordState,
        values: &[Value],
        marker: &Marker,
    ) -> Result<(), DnsError> {
        let m = self
            .update(current, values, marker)
            .map_err(|e| DnsError::Refused(format!("{e:#}")))?;
        let client = self.client().await?;
        let mut responses = client.send(m);
        match responses.next().await {
            Some(Ok(r)) => match self.code_error(r.response_code()) {
                None => Ok(()),
                Some(e) => Err(e),
            },
            Some(Err(e)) => Err(self.error(e)),
            None => Err(DnsError::Unavailable(format!(
                "{}: no answer to the update",
                self.server
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_tsig_keygen_key_file() {
        let k = TsigKey::parse(
            "key \"dr-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldC1zZWNyZXQ=\";\n};\n",
        )
        .unwrap();
        assert_eq!(k.name, "dr-key");
        assert_eq!(k.algorithm, "hmac-sha256");
        assert_eq!(k.secret, b"secret-secret-secret");
        assert!(TsigKey::parse("key \"x\" { algorithm hmac-sha256; };").is_err());
        assert!(TsigKey::parse("key \"x\" { algorithm hmac-sha256; secret \"!!\"; };").is_err());
    }
}
