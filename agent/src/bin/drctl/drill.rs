//! `drctl drill …`: run a switchover or failover drill, list and show kept
//! reports.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use dr_agent::client::DrctlConfig;
use dr_agent::drill::run::{self, Kind, Options, Refused, Report};

#[derive(Args)]
pub struct DrillArgs {
    #[command(subcommand)]
    cmd: DrillCmd,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long)]
    json: bool,
    /// Drill even though the standby is unhealthy, behind the data-loss
    /// budget, or not resynchronised.
    #[arg(long)]
    force: bool,
    /// RTO target (default: drill.rto_target_ms of the drctl config, 60 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    rto_target: Option<Duration>,
    /// RPO target (default: drill.rpo_target_ms, 1 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    rpo_target: Option<Duration>,
    /// Marker rows are written this long before the outage or request.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Give up (and end the outage) after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Planned switchover to the standby, measured (expects RPO 0).
    Switchover(RunArgs),
    /// Makes the primary look dead to the witnesses (as a killed Milvus
    /// does) until they fail over; measures every step, RTO and RPO.
    Failover(RunArgs),
    /// Kept drill reports, oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One kept report.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn print(r: &Report, json: bool) {
    if json {
        super::out(&(serde_json::to_string_pretty(r).unwrap_or_default() + "\n"));
    } else {
        super::out(&super::render::drill_text(r));
    }
}

pub async fn run(cfg: DrctlConfig, args: DrillArgs) -> ExitCode {
    let dir = cfg.drill.dir();
    let (kind, a) = match args.cmd {
        DrillCmd::Switchover(a) => (Kind::Switchover, a),
        DrillCmd::Failover(a) => (Kind::Failover, a),
        DrillCmd::List { json } => {
            return match run::list(&dir) {
                Ok(all) if json => {
                    super::out(&(serde_json::to_string_pretty(&all).unwrap_or_default() + "\n"));
                    ExitCode::SUCCESS
                }
                Ok(all) => {
                    super::out(&super::render::drill_list(&all));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("drctl drill list: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        DrillCmd::Show { id, json } => {
            return match run::show(&dir, &id) {
                Ok(r) => {
                    print(&r, json);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("drctl drill show: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
    };
    if cfg.witnesses.is_empty() {
        eprintln!("drctl drill: drills need the witnesses; add witnesses: to the drctl config");
        return ExitCode::from(2);
    }
    let opts = Options {
        kind,
        force: a.force,
        rto_target: a
            .rto_target
            .unwrap_or(Duration::from_millis(cfg.drill.rto_target_ms)),
        rpo_target: a
            .rpo_target
            .unwrap_or(Duration::from_millis(cfg.drill.rpo_target_ms)),
        warmup: a.warmup,
        timeout: a.timeout,
    };
    match run::run(&cfg, &opts, &dir).await {
        Ok(r) => {
            print(&r, a.json);
            if r.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) if e.downcast_ref::<Refused>().is_some() => {
            eprintln!("drctl drill: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("drctl drill: {e:#}");
            ExitCode::from(2)
        }
    }
}
