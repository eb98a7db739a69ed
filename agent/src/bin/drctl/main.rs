//! `drctl`: the operator's command line for milvus-dr.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dr_agent::client::{self, DrctlConfig};

mod backup;
mod drill;
mod render;
use dr_witness::decide::OperatorRequest;

/// Operate milvus-dr: status, verify, certificates.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// drctl's YAML config (agents and the operator certificate).
    #[arg(long, env = "DRCTL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Role, epoch, Milvus health, stream and lag of every agent.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Compare both clusters by content; exit 0 identical, 1 differ, 2 could not run.
    Verify {
        #[arg(long)]
        json: bool,
        /// Hash buckets per collection (more = finer narrowing).
        #[arg(long, default_value_t = 4096)]
        buckets: u32,
        /// Differing keys listed per collection and kind.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Wait this long for the standby to catch up before comparing.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
    /// Drop a collection a standby keeps unmanaged: one that left
    /// replication.databases / exclude on the primary (the standby keeps
    /// its copy until told).
    DropUnmanaged {
        /// The standby's datacenter.
        datacenter: String,
        /// database.collection
        collection: String,
    },
    /// The witness quorum: status and operator commands.
    Witness {
        #[command(subcommand)]
        cmd: WitnessCmd,
    },
    /// Backups to S3: create, list, verify, restore, drill, prune.
    Backup(backup::BackupArgs),
    /// Failover and switchover drills: every step timed, RTO and RPO
    /// against targets, reports kept (exit 0 pass, 1 fail, 2 error, 3 refused).
    Drill(drill::DrillArgs),
    /// Route 53 failover records whose health checks probe each agent's
    /// /dr/primary (no API call at failover time).
    Dns {
        #[command(subcommand)]
        cmd: DnsCmd,
    },
    /// Certificates for a development deployment.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
}

#[derive(Subcommand)]
enum DnsCmd {
    /// Print the health checks and records `apply` would create (JSON).
    Plan {
        /// An agent's YAML config (dns.route53.failover_records, dns.values).
        #[arg(long, env = "DR_AGENT_CONFIG")]
        agent_config: PathBuf,
    },
    /// Create the health checks (idempotent) and UPSERT the records.
    Apply {
        #[arg(long, env = "DR_AGENT_CONFIG")]
        agent_config: PathBuf,
    },
}

#[derive(Subcommand)]
enum WitnessCmd {
    /// Leader, epoch, primary, each witness's observations, lease, audit.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover to the standby: drain, commit, reverse (loses nothing).
    Switchover {
        /// The datacenter to make primary (the current standby).
        #[arg(long)]
        to: String,
    },
    /// Let a failover held by the data-loss budget or the anti-flap window
    /// proceed, accepting that writes not yet replicated are lost.
    ForceFailover {
        /// Required: you accept losing the writes the standby lacks.
        #[arg(long)]
        accept_data_loss: bool,
    },
    /// State that a demoted datacenter has been resynchronised and may be
    /// chosen again. Refused until its agent has recorded that it kept the
    /// writes it accepted as primary and had not replicated.
    MarkResynced {
        datacenter: String,
        /// Go ahead without that record: those writes are given up.
        #[arg(long)]
        discard_divergent: bool,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create a CA and certificates for agents, witnesses and an operator.
    Init {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "dc-a,dc-b")]
        datacenters: Vec<String>,
        #[arg(long, default_value_t = 3)]
        witnesses: u32,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

async fn dns(cmd: DnsCmd) -> ExitCode {
    use dr_agent::dns::route53::{failover_records, Route53};
    let (path, apply) = match &cmd {
        DnsCmd::Plan { agent_config } => (agent_config, false),
        DnsCmd::Apply { agent_config } => (agent_config, true),
    };
    let run = async {
        let cfg = dr_agent::config::Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let plan = failover_records::plan(&cfg)?;
        if !apply {
            out(&format!("{}\n", serde_json::to_string_pretty(&plan)?));
            return Ok(());
        }
        let r53 = Route53::from_config(&cfg.dns).await?;
        for (dc, id) in failover_records::apply(&r53, &plan).await? {
            out(&format!("{dc}: health check {id}\n"));
        }
        out(&format!(
            "{}: failover records applied in zone {}\n",
            plan.record, plan.hosted_zone_id
        ));
        anyhow::Ok(())
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drctl dns: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints without panicking when stdout is closed (`drctl status | head`).
pub(crate) fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// The drctl config, or the exit code after saying why it is unusable.
fn load(config: &Option<PathBuf>) -> Result<DrctlConfig, ExitCode> {
    let loaded = config
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no drctl config: pass --config FILE or set DRCTL_CONFIG"))
        .and_then(|path| DrctlConfig::load(path));
    loaded.map_err(|e| {
        eprintln!("drctl: {e:#}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    dr_agent::logging::init("text");
    dr_agent::tls::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match args.cmd {
        Cmd::Certs {
            cmd:
                CertsCmd::Init {
                    out,
                    datacenters,
                    witnesses,
                    days,
                },
        } => {
            let mut names: Vec<String> = datacenters.iter().map(|d| format!("agent.{d}")).collect();
            names.extend((1..=witnesses).map(|i| format!("witness-{i}")));
            names.push("operator".into());
            match dr_agent::tls::generate_dev_certs(&out, &names, days) {
                Ok(g) => {
                    println!(
                        "wrote a development CA and {} certificates to {}",
                        g.names.len(),
                        g.dir.display()
                    );
                    for n in &g.names {
                        println!("  {n}.pem / {n}.key");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("drctl certs init: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Backup(b) => rt.block_on(backup::run(b)),
        Cmd::Drill(d) => rt.block_on(async {
            match load(&args.config) {
                Ok(cfg) => drill::run(cfg, d).await,
                Err(code) => code,
            }
        }),
        Cmd::Dns { cmd } => rt.block_on(dns(cmd)),
        Cmd::DropUnmanaged {
            datacenter,
            collection,
        } => rt.block_on(async {
            let cfg = match load(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cfg.drop_unmanaged(&datacenter, &collection).await {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("drctl: {e:#}");
                    ExitCode::from(1)
                }
            }
        }),
        Cmd::Status { json } => rt.block_on(async {
            let cfg = match load(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mut all = Vec::new();
            for dc in cfg.agents.keys() {
                all.push(render::to_agent_status(dc, cfg.status(dc).await));
            }
            let witnesses = cfg.witness_status().await;
            if json {
                let w: Vec<serde_json::Value> = witnesses
                    .iter()
                    .map(|(id, r)| match r {
                        Ok(s) => serde_json::json!({ "id": id, "reachable": true, "status": s }),
                        Err(e) => serde_json::json!({ "id": id, "reachable": false, "error": format!("{e:#}") }),
                    })
                    .collect();
                let doc = serde_json::json!({ "agents": all, "witnesses": w });
                out(&(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"));
            } else {
                out(&render::status_table(&all));
                if !witnesses.is_empty() {
                    out("\n");
                    out(&render::witness_table(&witnesses));
                }
            }
            if all.iter().all(|s| s.reachable) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        Cmd::Verify {
            json,
            buckets,
            limit,
            settle,
        } => rt.block_on(async {
            let cfg = match load(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = client::VerifyOptions {
                buckets,
                limit,
                settle,
            };
            match client::verify(&cfg, &opts).await {
                Ok(r) => {
                    if json {
                        out(&(serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"));
                    } else {
                        out(&render::verify_text(&r));
                    }
                    if r.identical {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("drctl verify: could not run: {e:#}");
                    ExitCode::from(2)
                }
            }
        }),
        Cmd::Witness { cmd } => rt.block_on(async {
            let cfg = match load(&args.config) {
                Ok(c) if !c.witnesses.is_empty() => c,
                Ok(_) => {
                    eprintln!("drctl: no witnesses in the drctl config; add witnesses: {{1: https://..., 2: ..., 3: ...}}");
                    return ExitCode::from(2);
                }
                Err(code) => return code,
            };
            let req = match cmd {
                WitnessCmd::Status { json } => {
                    let all = cfg.witness_status().await;
                    if json {
                        let v: Vec<serde_json::Value> = all
                            .iter()
                            .map(|(id, r)| match r {
                                Ok(s) => serde_json::json!({ "id": id, "reachable": true, "status": s }),
                                Err(e) => serde_json::json!({ "id": id, "reachable": false, "error": format!("{e:#}") }),
                            })
                            .collect();
                        out(&(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"));
                    } else {
                        out(&render::witness_table(&all));
                    }
                    let up = all.iter().filter(|(_, r)| r.is_ok()).count();
                    return if up > all.len() / 2 { ExitCode::SUCCESS } else { ExitCode::from(1) };
                }
                WitnessCmd::Switchover { to } => OperatorRequest::Switchover { to, by: String::new() },
                WitnessCmd::ForceFailover { accept_data_loss } => {
                    if !accept_data_loss {
                        eprintln!("drctl: force-failover may lose writes the standby lacks; rerun with --accept-data-loss to proceed");
                        return ExitCode::from(2);
                    }
                    OperatorRequest::ForceFailover { by: String::new() }
                }
                WitnessCmd::MarkResynced {
                    datacenter,
                    discard_divergent,
                } => OperatorRequest::MarkResynced {
                    dc: datacenter,
                    by: String::new(),
                    discard_divergent,
                },
            };
            let before = client::newest_cluster(&cfg).await;
            match cfg.witness_command(&req).await {
                Ok(msg) => {
                    out(&format!("{msg}\n"));
                    if let (OperatorRequest::Switchover { to, .. }, Some(b)) = (&req, before) {
                        return match client::await_switchover(&cfg, b.epoch, to).await {
                            Ok(text) => {
                                out(&format!("{text}\n"));
                                ExitCode::SUCCESS
                            }
                            Err(e) => {
                                eprintln!("drctl witness switchover: {e:#}");
                                ExitCode::from(1)
                            }
                        };
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("drctl witness: {e:#}");
                    ExitCode::from(1)
                }
            }
        }),
    }
}
