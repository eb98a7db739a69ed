//! Real DNS services for the tests: BIND 9 (`named`) as the authoritative
//! server of a generated zone that accepts TSIG-signed RFC 2136 updates,
//! and moto's Route 53 API emulator. Both on free ports, in a folder of
//! their own, killed with the test.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::wait_until;

/// The zone every test server serves.
pub const ZONE: &str = "demo.test.";

/// A running `named`, serving [`ZONE`] on `addr` (UDP and TCP).
pub struct Bind {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// `tsig-keygen` format: what the agent's `tsig_key_file` points at.
    pub key_file: PathBuf,
    pub key_name: String,
    child: Option<Child>,
}

/// A port free on 127.0.0.1 for both UDP and TCP (DNS uses both).
fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP")
}

fn named_binary() -> Result<PathBuf> {
    for p in ["/usr/sbin/named", "/usr/bin/named"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    bail!("named not found: run deploy/local/setup.sh (installs Debian's bind9)")
}

/// A key file as `tsig-keygen -a hmac-sha256 NAME` writes it.
pub fn key_file_text(name: &str, secret: &[u8]) -> String {
    use base64::Engine;
    format!(
        "key \"{name}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    )
}

impl Bind {
    /// Starts `named` in `dir` (created) with a fresh zone and TSIG key;
    /// `records` are extra zone-file lines (`name TTL IN TYPE value`).
    pub async fn start(dir: &Path, records: &str) -> Result<Bind> {
        std::fs::create_dir_all(dir)?;
        let key_name = "dr-key".to_string();
        let secret: Vec<u8> = (0..32).map(|i| (i * 37 + 11) as u8 ^ 0x5a).collect();
        let key_text = key_file_text(&key_name, &secret);
        let key_file = dir.join("dr-key.key");
        std::fs::write(&key_file, &key_text)?;
        let zone_file = dir.join("demo.test.zone");
        std::fs::write(
            &zone_file,
            format!(
                "$TTL 60\n@ IN SOA ns.demo.test. admin.demo.test. 1 60 60 600 5\n@ IN NS ns.demo.test.\nns IN A 127.0.0.1\n{records}\n"
            ),
        )?;
        let mut b = Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            dir: dir.to_path_buf(),
            key_file,
            key_name,
            child: None,
        };
        b.write_conf(&key_text)?;
        b.spawn().await?;
        Ok(b)
    }

    fn write_conf(&self, key_text: &str) -> Result<()> {
        let d = self.dir.display();
        std::fs::write(
            self.dir.join("named.conf"),
            format!(
                r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-transfer {{ none; }};
    notify no;
}};
controls {{ }};
{key_text}
zone "demo.test" {{
    type primary;
    file "{d}/demo.test.zone";
    update-policy {{ grant {key} zonesub ANY; }};
}};
"#,
                port = self.addr.port(),
                key = self.key_name,
            ),
        )?;
        Ok(())
    }

    /// Starts (or restarts) `named` on the same port with the same zone
    /// (and its journal of updates), waiting until it answers.
    pub async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("named.log"))?;
        let child = Command::new(named_binary()?)
            .args(["-g", "-u", "root", "-c"])
            .arg(self.dir.join("named.conf"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("start named")?;
        self.child = Some(child);
        let addr = self.addr;
        wait_until(
            Duration::from_secs(30),
            "named to serve the zone",
            || async move { soa_serial(addr).await.ok() },
        )
        .await
        .with_context(|| self.log_tail())?;
        Ok(())
    }

    /// Stops `named` (its zone and journal stay for [`Bind::spawn`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("named.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The agent's `dns:` section for this server, switching
    /// `record.demo.test.` between `values` (`dc -> [values]`).
    /// The agents' `dns:` YAML for `label` as the demo has it: dc-a at
    /// 127.0.0.11, dc-b at 127.0.0.12, switches proven through this server.
    pub fn two_datacenters_yaml(&self, label: &str) -> String {
        self.agent_yaml(
            label,
            &[("dc-a", "127.0.0.11"), ("dc-b", "127.0.0.12")],
            &format!(
                "  verify: {{ nameservers: [\"{}\"], timeout: 30s }}\n",
                self.addr
            ),
        )
    }

    pub fn agent_yaml(&self, record: &str, values: &[(&str, &str)], extra: &str) -> String {
        let vals: Vec<String> = values
            .iter()
            .map(|(dc, v)| format!("{dc}: [\"{v}\"]"))
            .collect();
        format!(
            "dns:\n  provider: rfc2136\n  record: {record}.{ZONE}\n  ttl: 5\n  values: {{ {} }}\n  rfc2136: {{ server: \"{}\", zone: {ZONE}, tsig_key_file: \"{}\", timeout: 2s }}\n{extra}",
            vals.join(", "),
            self.addr,
            self.key_file.display()
        )
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The zone's SOA serial as `addr` answers it (proves it is serving).
pub async fn soa_serial(addr: SocketAddr) -> Result<u32> {
    use hickory_client::client::{Client, ClientHandle};
    use hickory_client::proto::rr::{DNSClass, Name, RData, RecordType};
    use hickory_client::proto::runtime::TokioRuntimeProvider;
    use hickory_client::proto::udp::UdpClientStream;
    use std::str::FromStr;
    let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::new())
        .with_timeout(Some(Duration::from_millis(500)))
        .build();
    let (mut client, bg) = Client::connect(stream).await?;
    tokio::spawn(bg);
    let r = client
        .query(Name::from_str(ZONE)?, DNSClass::IN, RecordType::SOA)
        .await?;
    match r.answers().first().map(|a| a.data()) {
        Some(RData::SOA(soa)) => Ok(soa.serial()),
        _ => bail!("no SOA from {addr}"),
    }
}

/// The A/AAAA/CNAME values `addr` answers for `label`.[`ZONE`] (sorted).
pub async fn answer(addr: SocketAddr, label: &str) -> Result<Vec<String>> {
    let v = dr_agent::dns::verify::Verify {
        nameservers: vec![addr],
        record: Some(format!("{label}.{ZONE}").parse()?),
        timeout: Duration::from_secs(1),
        milvus_port: None,
        authorization: None,
    };
    Ok(v.ask(addr).await?.iter().map(ToString::to_string).collect())
}

/// A running moto server (Route 53 API emulator) on a free port.
pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    pub async fn start(dir: &Path) -> Result<Moto> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let venv_bin = crate::venv_python()?
            .parent()
            .context("venv bin")?
            .to_path_buf();
        let log = std::fs::File::create(dir.join("moto.log"))?;
        let child = Command::new(venv_bin.join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("start moto_server (installed by deploy/local/setup.sh)")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let url = format!("{endpoint}/moto-api/");
        wait_until(Duration::from_secs(60), "moto to answer", || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.ok().map(|_| ()) }
        })
        .await?;
        Ok(Moto { endpoint, child })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
