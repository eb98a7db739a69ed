//! Harness for the multi-process integration tests.
//!
//! - Real Milvus 2.3 standalone servers (the PyPI `milvus` package, started
//!   by `deploy/local/milvus_server.py` on free ports), shared by all tests of
//!   one test binary: each test works in its own Milvus database.
//! - Real `dr-agent` processes built from this workspace, each with its own
//!   state dir and log file, on ports the OS picked.
//! - A fault-injecting TCP proxy to cut streams.
//! - [`wait_until`]: poll observable state with a deadline, never sleep blind.
#![forbid(unsafe_code)]
#![allow(clippy::result_large_err)]

pub mod bench;
pub mod client;
pub mod data;
pub mod deployment;
pub mod dns;
pub mod proxy;
pub mod s3;
pub mod webhook;
pub mod witness;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dr_agent::client::{AgentRef, DrctlConfig, DrctlTls};
use dr_agent::milvus::{Connection, Milvus};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Logs of the test process itself (RUST_LOG=debug for more).
pub fn init_logging() {
    dr_agent::tls::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `pred` until it returns `Some`, or fails after `deadline` saying
/// what was awaited.
pub async fn wait_until<T, F, Fut>(deadline: Duration, what: &str, mut pred: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(v) = pred().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// The Python of the project's venv (`MILVUS_DR_VENV`, made by setup.sh).
pub fn venv_python() -> Result<PathBuf> {
    let venv = std::env::var_os("MILVUS_DR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let py = venv.join("bin/python");
    if !py.exists() {
        bail!(
            "{} not found: run deploy/local/setup.sh first (it installs the Milvus server)",
            py.display()
        );
    }
    Ok(py)
}

/// One real Milvus standalone server.
pub struct MilvusServer {
    pub grpc_port: u16,
    pub http_port: u16,
    pub pid: u32,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
}

impl MilvusServer {
    /// Starts a server in `data_dir` and waits until `/healthz` answers OK.
    /// With `--die-with-parent`, the server dies when the *thread* that
    /// started it exits: call this from a thread that lives long enough.
    pub fn start(data_dir: &Path) -> Result<MilvusServer> {
        Self::spawn(data_dir)?.wait_healthy()
    }

    /// Starts a server of the test's own (not shared), from a thread that
    /// outlives the test, and waits until it is healthy.
    pub fn start_private(data_dir: &Path) -> Result<MilvusServer> {
        let dir = data_dir.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(MilvusServer::start(&dir));
            loop {
                std::thread::park();
            }
        });
        rx.recv()?
    }

    /// Launches the server without waiting for it.
    pub fn spawn(data_dir: &Path) -> Result<MilvusServer> {
        std::fs::create_dir_all(data_dir)?;
        let ready = data_dir.join("server.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::create(data_dir.join("launcher.log"))?;
        let child = Command::new(venv_python()?)
            .arg(repo_root().join("deploy/local/milvus_server.py"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--die-with-parent")
            // A restart on the same data listens where it did before.
            .arg("--reuse-ports")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start deploy/local/milvus_server.py")?;
        Ok(MilvusServer {
            grpc_port: 0,
            http_port: 0,
            pid: 0,
            data_dir: data_dir.to_path_buf(),
            child: Some(child),
        })
    }

    /// Waits for the launcher's ready file, then for `/healthz`.
    pub fn wait_healthy(mut self) -> Result<MilvusServer> {
        let data_dir = self.data_dir.clone();
        let ready = data_dir.join("server.json");
        let start = Instant::now();
        let info: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if let Ok(v) = serde_json::from_str(&text) {
                    break v;
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("Milvus launcher wrote no {} within 60s", ready.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.grpc_port = info["grpc_port"].as_u64().context("grpc_port")? as u16;
        self.http_port = info["http_port"].as_u64().context("http_port")? as u16;
        self.pid = info["pid"].as_u64().context("pid")? as u32;
        let mut server = self;
        while !http_ok(server.http_port, "/healthz") {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "Milvus exited ({status}) before it became healthy; see {}",
                    data_dir.join("launcher.log").display()
                );
            }
            if start.elapsed() > Duration::from_secs(180) {
                bail!("Milvus not healthy after 180s; see {}", data_dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/healthz", self.http_port)
    }

    pub fn client(&self) -> Milvus {
        Milvus::connect(Connection {
            endpoint: self.endpoint(),
            health_url: Some(self.health_url()),
            authorization: None,
            request_timeout: Duration::from_secs(120),
        })
        .expect("milvus client")
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MilvusServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The two servers every test of a binary shares: "primary" and "standby".
pub struct Servers {
    pub primary: MilvusServer,
    pub standby: MilvusServer,
    _dir: tempfile::TempDir,
}

/// Starts (once per test binary) and returns the shared servers. They are
/// started from a thread that lives as long as the process, and die with it
/// (`--die-with-parent`).
pub fn servers() -> &'static Servers {
    static S: OnceLock<Servers> = OnceLock::new();
    static KEEPER: Mutex<()> = Mutex::new(());
    S.get_or_init(|| {
        let _g = KEEPER.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = (|| -> Result<Servers> {
                sweep_stale_server_dirs();
                let dir = tempfile::Builder::new()
                    .prefix(&format!("{SERVER_DIR_PREFIX}{}-", std::process::id()))
                    .tempdir()?;
                // Both launched from this thread, which never exits (their
                // parent-death signal is tied to it), then awaited together.
                let primary = MilvusServer::spawn(&dir.path().join("primary"))?;
                let standby = MilvusServer::spawn(&dir.path().join("standby"))?;
                Ok(Servers {
                    primary: primary.wait_healthy()?,
                    standby: standby.wait_healthy()?,
                    _dir: dir,
                })
            })();
            let _ = tx.send(r);
            // Keep this thread alive: the servers die with their parent thread.
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap().expect("start the shared Milvus servers")
    })
}

const SERVER_DIR_PREFIX: &str = "milvus-dr-test-";

/// The shared servers live in a static, which is never dropped, so their
/// directory (about 0.5 GB of Milvus data) outlives the test binary. Each
/// directory is named after the process that made it; this removes those
/// whose process is gone.
fn sweep_stale_server_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(SERVER_DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The port of an endpoint such as `http://127.0.0.1:19530`.
pub fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the endpoint")
}

/// Path of a binary of this workspace. `tests/run.sh` builds them first
/// (`cargo build --workspace --bins`); when one is missing it is built here.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    // Test executables live in target/<profile>/deps, binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "--workspace", "--bins"]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let ok = cmd
                .current_dir(repo_root())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "cargo build --workspace --bins failed");
        });
    }
    path
}

/// Starts one of our service binaries with `--config`, logging (append)
/// to `log` at `RUST_LOG` = `$log_env` or `default_log`, and waits until
/// it writes the addresses it bound to `bound`.
pub async fn spawn_bound<B: serde::de::DeserializeOwned>(
    binary: &str,
    config: &Path,
    log: &Path,
    bound: &Path,
    log_env: &str,
    default_log: &str,
) -> Result<(Child, B)> {
    spawn_bound_env(binary, config, log, bound, log_env, default_log, &[]).await
}

/// [`spawn_bound`], with environment variables for the process.
pub async fn spawn_bound_env<B: serde::de::DeserializeOwned>(
    binary: &str,
    config: &Path,
    log: &Path,
    bound: &Path,
    log_env: &str,
    default_log: &str,
    vars: &[(String, String)],
) -> Result<(Child, B)> {
    if let Some(dir) = bound.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(bound);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(bin(binary))
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var(log_env).unwrap_or_else(|_| default_log.into()),
        )
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("spawn {binary}"))?;
    let b = wait_until(
        Duration::from_secs(30),
        &format!("{binary} to bind"),
        || async {
            std::fs::read(bound)
                .ok()
                .and_then(|t| serde_json::from_slice(&t).ok())
        },
    )
    .await;
    match b {
        Ok(b) => Ok((child, b)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Certificates and databases of one test.
pub struct TestEnv {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub primary: Milvus,
    pub standby: Milvus,
    /// (gRPC endpoint, health URL) of dc-a's and dc-b's Milvus as agents
    /// see them; a test may point these at a proxy or another server.
    pub endpoints: [(String, String); 2],
}

impl TestEnv {
    /// A fresh environment whose Milvus database is `name` on both servers
    /// (dropped first if a previous run left it).
    pub async fn new(name: &str) -> Result<TestEnv> {
        init_logging();
        let s = servers();
        let dir = tempfile::Builder::new()
            .prefix(&format!("dr-{name}-"))
            .tempdir()?;
        let certs = dir.path().join("certs");
        dr_agent::tls::generate_dev_certs(
            &certs,
            &[
                "agent.dc-a".into(),
                "agent.dc-b".into(),
                "operator".into(),
                "witness-1".into(),
                "witness-2".into(),
                "witness-3".into(),
            ],
            30,
        )?;
        let env = TestEnv {
            name: name.to_string(),
            dir,
            certs,
            primary: s.primary.client(),
            standby: s.standby.client(),
            endpoints: [
                (s.primary.endpoint(), s.primary.health_url()),
                (s.standby.endpoint(), s.standby.health_url()),
            ],
        };
        for m in [&env.primary, &env.standby] {
            // /healthz can answer before the gRPC proxy serves.
            wait_until(
                Duration::from_secs(120),
                "Milvus gRPC CheckHealth",
                || async { m.health().await.healthy.then_some(()) },
            )
            .await?;
            data::drop_database(m, name).await?;
        }
        env.primary.create_database(name).await?;
        Ok(env)
    }

    pub fn drctl(&self, a: &Agent, b: &Agent) -> DrctlConfig {
        let mut agents = std::collections::BTreeMap::new();
        for ag in [a, b] {
            agents.insert(
                ag.dc.clone(),
                AgentRef {
                    address: format!("https://{}", ag.grpc),
                    identity: None,
                },
            );
        }
        DrctlConfig {
            agents,
            witnesses: Default::default(),
            tls: DrctlTls {
                ca: self.certs.join("ca.pem"),
                cert: self.certs.join("operator.pem"),
                key: self.certs.join("operator.key"),
            },
            drill: dr_agent::drill::run::DrillConfig {
                dir: Some(self.certs.with_file_name("drills")),
                ..Default::default()
            },
        }
    }
}

/// A running (or stopped) `dr-agent` process.
pub struct Agent {
    pub dc: String,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub grpc: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    /// The front door, when the config has one.
    pub frontdoor: Option<std::net::SocketAddr>,
    /// Environment variables of the process besides the test's own (kept
    /// across restarts).
    pub vars: Vec<(String, String)>,
    child: Option<Child>,
}

/// What an agent's config needs besides the shared environment.
pub struct AgentSpec<'a> {
    pub dc: &'a str,
    /// Address the primary uses to reach the sink (possibly a proxy).
    pub peer_address: String,
    pub grpc_port: u16,
    pub extra_yaml: &'a str,
}

impl Agent {
    pub fn write_config(env: &TestEnv, spec: &AgentSpec) -> Result<PathBuf> {
        let state_dir = env.dir.path().join(format!("state-{}", spec.dc));
        let [(ae, ah), (be, bh)] = env.endpoints.clone();
        let (a_addr, b_addr) = if spec.dc == "dc-a" {
            ("https://127.0.0.1:1".to_string(), spec.peer_address.clone())
        } else {
            (spec.peer_address.clone(), "https://127.0.0.1:1".to_string())
        };
        let yaml = format!(
            r#"datacenter: {dc}
initial_primary: dc-a
state_dir: {state}
datacenters:
  dc-a:
    milvus: {{ endpoint: "{ae}", health_url: "{ah}" }}
    agent: "{a_addr}"
  dc-b:
    milvus: {{ endpoint: "{be}", health_url: "{bh}" }}
    agent: "{b_addr}"
listen: {{ grpc: "127.0.0.1:{port}", metrics: "127.0.0.1:0" }}
tls: {{ ca: "{certs}/ca.pem", cert: "{certs}/agent.{dc}.pem", key: "{certs}/agent.{dc}.key" }}
{monitoring}
replication:
  databases: ["{db}"]
  poll_interval: 200ms
  held_retry: 2s
{extra}
"#,
            dc = spec.dc,
            state = state_dir.display(),
            ae = ae,
            ah = ah,
            be = be,
            bh = bh,
            port = spec.grpc_port,
            certs = env.certs.display(),
            db = env.name,
            extra = spec.extra_yaml,
            // Quick probing unless the test sets its own.
            monitoring = if spec.extra_yaml.contains("monitoring:") {
                ""
            } else {
                "monitoring: { health_interval: 1s, failure_threshold: 1 }"
            },
        );
        let path = env.dir.path().join(format!("{}.yaml", spec.dc));
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    /// A dc-a agent config with no reachable peer, for commands that only
    /// read it (`drctl backup --agent-config`).
    pub fn write_lone_config(env: &TestEnv, extra_yaml: &str) -> Result<PathBuf> {
        Self::write_config(
            env,
            &AgentSpec {
                dc: "dc-a",
                peer_address: "https://127.0.0.1:1".into(),
                grpc_port: 0,
                extra_yaml,
            },
        )
    }

    /// Starts `dr-agent` with a config and waits until it reports its ports.
    pub async fn start(env: &TestEnv, spec: &AgentSpec<'_>) -> Result<Agent> {
        Self::start_with_vars(env, spec, &[]).await
    }

    /// [`Agent::start`], with environment variables for the process (e.g.
    /// the URL of an alert webhook, named by `url_env`).
    pub async fn start_with_vars(
        env: &TestEnv,
        spec: &AgentSpec<'_>,
        vars: &[(&str, &str)],
    ) -> Result<Agent> {
        let config = Self::write_config(env, spec)?;
        let state_dir = env.dir.path().join(format!("state-{}", spec.dc));
        let mut a = Agent {
            dc: spec.dc.to_string(),
            config,
            state_dir,
            log: env.dir.path().join(format!("{}.log", spec.dc)),
            grpc: ([127, 0, 0, 1], 0).into(),
            metrics: ([127, 0, 0, 1], 0).into(),
            frontdoor: None,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        a.spawn().await?;
        Ok(a)
    }

    async fn spawn(&mut self) -> Result<()> {
        let (child, b): (Child, dr_agent::agent::Bound) = spawn_bound_env(
            "dr-agent",
            &self.config,
            &self.log,
            &self.state_dir.join("bound.json"),
            "DR_AGENT_LOG",
            "info,h2=warn,tower=warn,hyper=warn",
            &self.vars,
        )
        .await
        .with_context(|| format!("dr-agent {}; log: {}", self.dc, self.log_tail()))?;
        self.child = Some(child);
        self.grpc = b.grpc;
        self.metrics = b.metrics;
        self.frontdoor = b.frontdoor;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no shutdown, no flushing.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("not running");
        };
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()?;
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                bail!("dr-agent did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts again on the same ports, state and config.
    pub async fn restart(&mut self) -> Result<()> {
        // Keep the gRPC port: the peer (or a proxy) points at it.
        let text = std::fs::read_to_string(&self.config)?;
        let fixed: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("listen:") {
                    format!(
                        "listen: {{ grpc: \"{}\", metrics: \"127.0.0.1:0\" }}",
                        self.grpc
                    )
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&self.config, fixed.join("\n"))?;
        self.spawn().await
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Lines logged at ERROR level.
    pub fn error_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        keep_log(&self.log, &self.dc);
    }
}

/// DR_TEST_LOGS=DIR keeps every process log for a look after the run, as
/// `<test dir>-<what>.log`.
pub fn keep_log(log: &Path, what: &str) {
    if let Some(dir) = std::env::var_os("DR_TEST_LOGS") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let name = log
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let _ = std::fs::copy(log, dir.join(format!("{name}-{what}.log")));
    }
}

/// Starts the standby (dc-b) and the primary (dc-a) agents, the primary
/// reaching the standby through `via` (a proxy address) or directly.
pub async fn start_pair(
    env: &TestEnv,
    extra_yaml: &str,
    via: Option<&proxy::Proxy>,
) -> Result<(Agent, Agent)> {
    start_pair_with_vars(env, extra_yaml, via, &[]).await
}

/// [`start_pair`], with environment variables for the primary's process
/// (e.g. the URL of an alert webhook).
pub async fn start_pair_with_vars(
    env: &TestEnv,
    extra_yaml: &str,
    via: Option<&proxy::Proxy>,
    primary_vars: &[(&str, &str)],
) -> Result<(Agent, Agent)> {
    let b = Agent::start(
        env,
        &AgentSpec {
            dc: "dc-b",
            peer_address: "https://127.0.0.1:1".into(),
            grpc_port: 0,
            extra_yaml,
        },
    )
    .await?;
    let target = match via {
        Some(p) => {
            p.set_target(b.grpc);
            p.addr
        }
        None => b.grpc,
    };
    let a = Agent::start_with_vars(
        env,
        &AgentSpec {
            dc: "dc-a",
            peer_address: format!("https://{target}"),
            grpc_port: 0,
            extra_yaml,
        },
        primary_vars,
    )
    .await?;
    Ok((a, b))
}

/// Peak resident set size (VmHWM) of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
