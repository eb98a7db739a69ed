//! `s3-server --root DIR --bound FILE`: the demo's S3-compatible store, the
//! same real S3 protocol server the tests use (s3s-fs over a directory,
//! signatures checked). Binds 127.0.0.1:0 and writes
//! `{"pid", "endpoint", "bucket", "access_key_file", "secret_key_file"}` to
//! FILE; the credential files are written next to it. Runs until SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use dr_tests::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};

#[derive(Parser)]
struct Args {
    /// Directory holding the buckets (one folder each).
    #[arg(long)]
    root: PathBuf,
    /// Where to write the bound address and credentials (JSON).
    #[arg(long)]
    bound: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = S3Server::start(&args.root).await?;
    let dir = args
        .bound
        .parent()
        .context("--bound has no parent folder")?
        .to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let (key, secret) = (dir.join("s3-access-key"), dir.join("s3-secret-key"));
    std::fs::write(&key, ACCESS_KEY)?;
    std::fs::write(&secret, SECRET_KEY)?;
    let tmp = args.bound.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&serde_json::json!({
            "pid": std::process::id(),
            "endpoint": server.endpoint(),
            "bucket": BUCKET,
            "access_key_file": key,
            "secret_key_file": secret,
        }))?,
    )?;
    std::fs::rename(&tmp, &args.bound)?;
    println!(
        "s3-server: serving {} on {}",
        args.root.display(),
        server.endpoint()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.stop();
    Ok(())
}
