//! `dr-witness --config FILE [--check]`: one member of the witness quorum.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

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
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dr-witness: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(dr_proto::logging::on_signal(shutdown.clone()));
        match dr_witness::service::run(cfg, shutdown, |_| {}).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "dr-witness failed");
                ExitCode::from(1)
            }
        }
    })
}
