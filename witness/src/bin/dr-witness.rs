//! `dr-witness --config FILE [--check]`: one member of the witness quorum.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// milvus-dr witness: one of three Raft members deciding which datacenter
/// is primary.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The witness's YAML config file.
    #[arg(long, env = "DR_WITNESS_CONFIG")]
    config: PathBuf,
    /// Validate the config and exit (0 valid, 64 invalid).
    #[arg(long)]
    check: bool,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    dr_proto::logging::init(&args.log_format);
    let cfg = match dr_witness::config::WitnessConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dr-witness: invalid config {}: {e}", args.config.display());
            return ExitCode::from(64);
        }
    };
    if args.check {
        println!(
            "{}: valid (witness {} of {})",
            args.config.display(),
            cfg.id,
            cfg.witnesses.len()
        );
        return ExitCode::SUCCESS;
    }
    let systemd = dr_proto::systemd::Notifier::from_env();
    dr_proto::logging::run_service("dr-witness", |shutdown| {
        dr_witness::service::run(cfg, shutdown, systemd, |_| {})
    })
}
