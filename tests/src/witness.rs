//! Three `dr-witness` processes on loopback, each behind TCP proxies so
//! tests can restart them on new ports and cut links: one proxy per
//! witness for agents and `drctl`, and one per ordered pair of witnesses
//! for their own traffic (Raft and observations), so that a single
//! witness can be cut off from its peers while the other two still talk.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::Result;
use dr_witness::api::WitnessStatus;
use dr_witness::service::Bound;

use crate::proxy::Proxy;
use crate::{keep_log, spawn_bound, wait_until, TestEnv};

pub struct WitnessProc {
    pub id: u64,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub bound: Option<Bound>,
    child: Option<Child>,
}

impl WitnessProc {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        self.kill9();
        keep_log(&self.log, &format!("witness-{}", self.id));
    }
}

/// The witness group of one test.
pub struct Witnesses {
    pub procs: Vec<WitnessProc>,
    /// The address everyone but a test-chosen agent uses for witness i.
    pub front: Vec<Proxy>,
    /// The addresses dc-a's agent uses (cut them to isolate dc-a).
    pub for_a: Vec<Proxy>,
    /// `links[i][j]`: how witness index i reaches witness index j (None
    /// for i == j).
    pub links: Vec<Vec<Option<Proxy>>>,
}

impl Witnesses {
    /// Writes the configs and starts all three. `failover_yaml` is the
    /// `failover:` section body shared with the agents.
    pub async fn start(env: &TestEnv, failover_yaml: &str) -> Result<Witnesses> {
        Self::start_with(env, failover_yaml, "").await
    }

    /// [`Witnesses::start`], with more YAML for every witness's config.
    pub async fn start_with(
        env: &TestEnv,
        failover_yaml: &str,
        extra_yaml: &str,
    ) -> Result<Witnesses> {
        let mut front = vec![];
        let mut for_a = vec![];
        for _ in 0..3 {
            front.push(Proxy::start().await?);
            for_a.push(Proxy::start().await?);
        }
        let mut links = vec![];
        for i in 0..3 {
            let mut row = vec![];
            for j in 0..3 {
                row.push(if i == j {
                    None
                } else {
                    Some(Proxy::start().await?)
                });
            }
            links.push(row);
        }
        let mut procs = vec![];
        for id in 1..=3u64 {
            // Its own entry is what the group may be initialised with; it
            // dials its peers through its own links.
            let me = (id - 1) as usize;
            let list: String = (0..3)
                .map(|j| {
                    let addr = links[me][j].as_ref().map_or(front[j].addr, |p| p.addr);
                    format!("  {}: \"https://{addr}\"\n", j + 1)
                })
                .collect();
            let state_dir = env.dir.path().join(format!("witness-{id}"));
            let yaml = format!(
                r#"id: {id}
state_dir: {state}
listen: {{ grpc: "127.0.0.1:0", metrics: "127.0.0.1:0" }}
witnesses:
{list}datacenters:
  dc-a: {{ health_url: "{ah}" }}
  dc-b: {{ health_url: "{bh}" }}
initial_primary: dc-a
tls: {{ ca: "{certs}/ca.pem", cert: "{certs}/witness-{id}.pem", key: "{certs}/witness-{id}.key" }}
failover: {failover_yaml}
raft: {{ heartbeat_ms: 100, election_timeout_min_ms: 500, election_timeout_max_ms: 1000 }}
{extra_yaml}
"#,
                state = state_dir.display(),
                ah = env.endpoints[0].1,
                bh = env.endpoints[1].1,
                certs = env.certs.display(),
            );
            let config = env.dir.path().join(format!("witness-{id}.yaml"));
            std::fs::write(&config, yaml)?;
            procs.push(WitnessProc {
                id,
                config,
                log: env.dir.path().join(format!("witness-{id}.log")),
                state_dir,
                bound: None,
                child: None,
            });
        }
        let mut w = Witnesses {
            procs,
            front,
            for_a,
            links,
        };
        for i in 0..3 {
            w.spawn(i).await?;
        }
        Ok(w)
    }

    /// Starts witness index `i` (0-based) again on its state.
    pub async fn spawn(&mut self, i: usize) -> Result<()> {
        let p = &mut self.procs[i];
        let (child, b): (Child, Bound) = spawn_bound(
            "dr-witness",
            &p.config,
            &p.log,
            &p.state_dir.join("bound.json"),
            "DR_WITNESS_LOG",
            "info,openraft=warn,h2=warn,tower=warn,hyper=warn",
        )
        .await?;
        p.child = Some(child);
        self.front[i].set_target(b.grpc);
        self.for_a[i].set_target(b.grpc);
        for row in &self.links {
            if let Some(p) = &row[i] {
                p.set_target(b.grpc);
            }
        }
        p.bound = Some(b);
        Ok(())
    }

    /// The `witnesses:` map for an agent config; dc-a goes through its own
    /// proxies.
    pub fn agent_yaml(&self, dc: &str) -> String {
        let list = if dc == "dc-a" {
            &self.for_a
        } else {
            &self.front
        };
        let items: Vec<String> = list
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}: \"https://{}\"", i + 1, p.addr))
            .collect();
        format!("witnesses: {{ {} }}", items.join(", "))
    }

    pub fn drctl_map(&self) -> BTreeMap<u64, String> {
        self.front
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, format!("https://{}", p.addr)))
            .collect()
    }

    /// Silences (or heals) both directions between witness index `i` and
    /// the other two: nothing passes, nothing is closed, as on a path that
    /// drops every packet. Agents and `drctl` still reach it.
    pub fn silence_peers(&self, i: usize, on: bool) {
        for j in 0..3 {
            for p in [&self.links[i][j], &self.links[j][i]].into_iter().flatten() {
                p.silence(on);
            }
        }
    }

    /// Silences (or heals) every link from dc-a's agent to the witnesses:
    /// packets are dropped, nothing is refused or closed.
    pub fn isolate_a(&self, on: bool) {
        for p in &self.for_a {
            p.silence(on);
        }
    }
}

/// Polls the witnesses through drctl's client until `pred` holds on the
/// status of some reachable witness that names itself leader, confirmed by
/// a quorum.
pub async fn wait_leader_status<F>(
    drctl: &dr_agent::client::DrctlConfig,
    deadline: Duration,
    what: &str,
    pred: F,
) -> Result<WitnessStatus>
where
    F: Fn(&WitnessStatus) -> bool,
{
    wait_until(deadline, what, || async {
        drctl
            .witness_status()
            .await
            .into_iter()
            .filter_map(|(id, r)| {
                r.ok()
                    .filter(|s| s.leader == Some(id) && s.leader_confirmed)
            })
            .find(|s| pred(s))
    })
    .await
}
