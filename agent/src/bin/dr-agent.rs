//! `dr-agent --config FILE [--check]`: the per-datacenter agent.
//! `dr-agent --config FILE reset-capture-base`: forget what the standby
//! holds (after a corrupt capture base); everything is resent once.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// milvus-dr agent: replicates, probes health and serves the admin API.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The agent's YAML config file.
    #[arg(long, env = "DR_AGENT_CONFIG")]
    config: PathBuf,
    /// Validate the config and exit (0 valid, 64 invalid).
    #[arg(long)]
    check: bool,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Forget the capture base (what this agent believes the standby
    /// holds), e.g. after it was reported corrupt. Run it with the agent
    /// stopped; once started again as primary, the agent resends every row
    /// once, as upserts (no duplicate keys).
    ResetCaptureBase,
}

fn main() -> ExitCode {
    let args = Args::parse();
    dr_agent::logging::init(&args.log_format);
    let cfg = match dr_agent::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dr-agent: invalid config {}: {e}", args.config.display());
            return ExitCode::from(64);
        }
    };
    if let Some(Command::ResetCaptureBase) = args.command {
        return match dr_agent::agent::reset_capture_base(&cfg) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dr-agent: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    if args.check {
        println!(
            "{}: valid (datacenter {}, peer {})",
            args.config.display(),
            cfg.datacenter,
            cfg.peer_id()
        );
        return ExitCode::SUCCESS;
    }
    let systemd = dr_proto::systemd::Notifier::from_env();
    dr_agent::logging::run_service("dr-agent", |shutdown| {
        dr_agent::agent::run(cfg, shutdown, systemd, |_| {})
    })
}
