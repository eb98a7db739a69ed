//! A two-datacenter deployment for process tests: three `dr-witness`, two
//! `dr-agent` on loopback with mutual TLS, real Milvus servers, and fault
//! proxies on dc-a's Milvus health endpoint and on both agents' paths to
//! each other; plus reading event times back from the processes' logs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dr_agent::client::DrctlConfig;
use dr_proto::pb;

use crate::data::{self, Shape};
use crate::proxy::Proxy;
use crate::witness::Witnesses;
use crate::{wait_until, Agent, AgentSpec, MilvusServer, TestEnv};

const SIMPLE: Shape = Shape::Simple { dim: 8 };
const LONG: Duration = Duration::from_secs(120);

/// Three witnesses and both agents of one test, with fault proxies on
/// every path that tests cut. Fields drop in order: processes before the
/// environment's directory.
pub struct Deployment {
    pub w: Witnesses,
    pub a: Agent,
    pub b: Agent,
    /// dc-a's Milvus health endpoint as agents and witnesses see it.
    pub health_a: Proxy,
    /// dc-b's path to dc-a's agent (replication after a role change).
    pub pa: Proxy,
    /// dc-a's path to dc-b's agent (replication, failsafe).
    pub pb: Proxy,
    pub ctl: DrctlConfig,
    pub env: TestEnv,
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Witnesses and both agents up, dc-a acting as primary at epoch 1 with a
/// small collection replicating.
pub async fn deploy(
    name: &str,
    failover: &str,
    own_primary: Option<&MilvusServer>,
) -> Result<Deployment> {
    deploy_with(name, failover, own_primary, Extra::default()).await
}

/// More YAML for the configs of a [`deploy_with`] deployment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    /// dc-a's agent only.
    pub a: &'a str,
    /// Both agents.
    pub agents: &'a str,
    /// Every witness.
    pub witnesses: &'a str,
    /// More keys of both agents' `replication:` section, each line
    /// indented by two spaces (`"  mode: sync\n"`).
    pub replication: &'a str,
}

/// [`deploy`], with more YAML for the agents' and witnesses' configs.
pub async fn deploy_with(
    name: &str,
    failover: &str,
    own_primary: Option<&MilvusServer>,
    extra: Extra<'_>,
) -> Result<Deployment> {
    let mut env = TestEnv::new(name).await?;
    if let Some(m) = own_primary {
        env.endpoints[0] = (m.endpoint(), m.health_url());
        env.primary = m.client();
        data::drop_database(&env.primary, name).await?;
        env.primary.create_database(name).await?;
    }
    let health_a = Proxy::start().await?;
    let target: std::net::SocketAddr = host_port(&env.endpoints[0].1).parse()?;
    health_a.set_target(target);
    env.endpoints[0].1 = format!("http://{}/healthz", health_a.addr);
    data::create(&env.primary, name, "c", SIMPLE).await?;
    data::insert(
        &env.primary,
        name,
        "c",
        SIMPLE,
        &(0..200).collect::<Vec<_>>(),
        1,
    )
    .await?;

    let w = Witnesses::start_with(&env, failover, extra.witnesses).await?;
    let (pa, pb) = (Proxy::start().await?, Proxy::start().await?);
    let b = Agent::start(
        &env,
        &AgentSpec {
            dc: "dc-b",
            peer_address: format!("https://{}", pa.addr),
            grpc_port: 0,
            extra_yaml: &format!(
                "{}{}\nfailover: {failover}\n{}",
                extra.replication,
                w.agent_yaml("dc-b"),
                extra.agents
            ),
        },
    )
    .await?;
    let a = Agent::start(
        &env,
        &AgentSpec {
            dc: "dc-a",
            peer_address: format!("https://{}", pb.addr),
            grpc_port: 0,
            extra_yaml: &format!(
                "{}{}\nfailover: {failover}\n{}{}",
                extra.replication,
                w.agent_yaml("dc-a"),
                extra.agents,
                extra.a
            ),
        },
    )
    .await?;
    pa.set_target(a.grpc);
    pb.set_target(b.grpc);
    let mut ctl = env.drctl(&a, &b);
    ctl.witnesses = w.drctl_map();
    let d = Deployment {
        env,
        w,
        a,
        b,
        health_a,
        pa,
        pb,
        ctl,
    };
    wait_until(LONG, "dc-a to act as primary and replicate", || async {
        let s = d.ctl.status("dc-a").await.ok()?;
        let r = s.replication?;
        (s.role == "source" && s.epoch == 1 && r.applied_snapshot_ms > 0 && r.lag_ms < 2_000)
            .then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    Ok(d)
}

impl Deployment {
    pub async fn status(&self, dc: &str) -> Option<pb::StatusReply> {
        self.ctl.status(dc).await.ok()
    }

    /// Runs the `drctl` binary with this deployment's config file (agents,
    /// witnesses, operator certificate, drill reports in the test's
    /// directory), as an operator would.
    pub fn drctl(&self, args: &[&str]) -> Result<std::process::Output> {
        let file = self.env.dir.path().join("drctl.yaml");
        if !file.exists() {
            let mut y = String::from("agents:\n");
            for (dc, a) in &self.ctl.agents {
                y += &format!("  {dc}: {{ address: \"{}\" }}\n", a.address);
            }
            y += "witnesses:\n";
            for (id, addr) in &self.ctl.witnesses {
                y += &format!("  {id}: \"{addr}\"\n");
            }
            let t = &self.ctl.tls;
            y += &format!(
                "tls: {{ ca: \"{}\", cert: \"{}\", key: \"{}\" }}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            );
            if let Some(dir) = &self.ctl.drill.dir {
                y += &format!("drill: {{ dir: \"{}\" }}\n", dir.display());
            }
            std::fs::write(&file, y)?;
        }
        Ok(std::process::Command::new(crate::bin("drctl"))
            .arg("--config")
            .arg(&file)
            .args(args)
            .output()?)
    }

    /// The agents' log tails and each witness's last lines, for failures.
    pub fn logs(&self) -> String {
        let mut out = format!(
            "--- dc-a\n{}\n--- dc-b\n{}\n",
            self.a.log_tail(),
            self.b.log_tail()
        );
        for p in &self.w.procs {
            let t = p.log_text();
            let lines: Vec<&str> = t.lines().collect();
            out += &format!(
                "--- witness {}\n{}\n",
                p.id,
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
        out
    }

    /// Asserts over `window` that no failover happens: epoch 1 everywhere,
    /// dc-b never the source. Every sample must reach dc-b's agent and at
    /// least one witness: a check that sees nothing proves nothing.
    pub async fn assert_no_failover_for(&self, window: Duration) -> Result<()> {
        let start = Instant::now();
        let mut samples = 0;
        while start.elapsed() < window {
            let b = self
                .status("dc-b")
                .await
                .context("assert_no_failover_for: dc-b's agent did not answer")?;
            ensure!(
                b.role != "source",
                "dc-b became the source: {}\n{}",
                b.failover,
                self.logs()
            );
            ensure!(b.epoch <= 1, "dc-b is at epoch {}", b.epoch);
            let mut answered = 0;
            for (_, r) in self.ctl.witness_status().await {
                if let Ok(s) = r {
                    answered += 1;
                    ensure!(
                        s.cluster.epoch == 1,
                        "a witness committed epoch {}",
                        s.cluster.epoch
                    );
                }
            }
            ensure!(answered > 0, "assert_no_failover_for: no witness answered");
            samples += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(samples > 0, "assert_no_failover_for: no sample taken");
        Ok(())
    }
}

/// Timestamps (µs since the epoch) of the log lines containing all of
/// `needles`, from the tracing text format (`2026-11-25T07:12:34.123456Z`).
pub fn log_times(path: &Path, needles: &[&str]) -> Vec<i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            chrono::DateTime::parse_from_rfc3339(ts)
                .ok()
                .map(|t| t.timestamp_micros())
        })
        .collect()
}

/// The first of [`log_times`] at or after `after_us`.
pub fn log_time_after(path: &Path, needles: &[&str], after_us: i64) -> Option<i64> {
    log_times(path, needles)
        .into_iter()
        .find(|t| *t >= after_us)
}

/// The first of [`log_times`].
pub fn log_time(path: &Path, needles: &[&str]) -> Option<i64> {
    log_time_after(path, needles, i64::MIN)
}

/// When an agent (its log) first stopped acting as primary at or after
/// `after_us`: whichever came first, its lease guard or its runtime loop.
pub fn stopped_acting_after(log: &Path, after_us: i64) -> Option<i64> {
    [
        log_time_after(log, &["lease deadline reached"], after_us),
        log_time_after(log, &["fenced: no longer acting as primary"], after_us),
    ]
    .into_iter()
    .flatten()
    .min()
}
