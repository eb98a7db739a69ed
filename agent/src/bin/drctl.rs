//! `drctl`: the operator's command line for milvus-dr.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dr_agent::drctl::{self, DrctlConfig};

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
    /// Certificates for a development deployment.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
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

/// Prints without panicking when stdout is closed (`drctl status | head`).
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn load(config: &Option<PathBuf>) -> anyhow::Result<DrctlConfig> {
    let path = config.as_ref().ok_or_else(|| {
        anyhow::anyhow!("no drctl config: pass --config FILE or set DRCTL_CONFIG")
    })?;
    DrctlConfig::load(path)
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
        Cmd::Status { json } => rt.block_on(async {
            let cfg = match load(&args.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("drctl: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let mut all = Vec::new();
            for dc in cfg.agents.keys() {
                all.push(drctl::to_agent_status(dc, cfg.status(dc).await));
            }
            if json {
                out(&(serde_json::to_string_pretty(&all).unwrap_or_default() + "\n"));
            } else {
                out(&drctl::status_table(&all));
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
                Err(e) => {
                    eprintln!("drctl: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let opts = drctl::VerifyOptions {
                buckets,
                limit,
                settle,
            };
            match drctl::verify(&cfg, &opts).await {
                Ok(r) => {
                    if json {
                        out(&(serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"));
                    } else {
                        out(&drctl::verify_text(&r));
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
    }
}
