//! `cargo run --release -p dr-tests --bin bench_backup`: backup and restore
//! throughput against real Milvus servers and an in-process S3 server,
//! reported as ratios against baselines measured in the same run:
//!
//! (a) backup MB/s ÷ MB/s of just scanning the collection from Milvus;
//! (b) restore rows/s ÷ rows/s of inserting the same rows directly;
//! (c) peak RSS of the `drctl` process during each.
//!
//! Environment: BENCH_ROWS (100000), BENCH_DIM (128).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dr_tests::bench::{self, env_num};
use dr_tests::data::{self, Shape};
use dr_tests::s3::S3Server;
use dr_tests::{bin, peak_rss_mib, servers, Agent, TestEnv};

/// Runs a command, sampling its peak RSS until it exits.
async fn run_measured(mut cmd: Command) -> Result<(std::process::Output, f64, f64)> {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    let mut peak = 0f64;
    while !waiter.is_finished() {
        if let Some(r) = peak_rss_mib(pid) {
            peak = peak.max(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = waiter.await??;
    Ok((out, start.elapsed().as_secs_f64(), peak))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n = env_num("BENCH_ROWS", 100_000) as i64;
    let dim = env_num("BENCH_DIM", 128) as usize;
    let shape = Shape::Simple { dim };
    let env = TestEnv::new("bench_backup").await?;
    let db = env.name.clone();
    let ids: Vec<i64> = (0..n).collect();
    println!("bench-backup: {n} rows x {dim}-d");
    data::create(&env.primary, &db, "c", shape).await?;
    data::insert(&env.primary, &db, "c", shape, &ids, 1).await?;

    // Baseline (a): scanning the collection, the way a backup reads it.
    let scan = bench::scan(&env.primary, &db, "c").await?;
    let mb = scan.bytes as f64 / 1e6;
    let scan_mbps = mb / scan.seconds;
    println!(
        "scan baseline: {} rows, {mb:.1} MB in {:.2}s = {scan_mbps:.1} MB/s",
        scan.rows, scan.seconds
    );

    // S3 and an agent config pointing at it (default part and page sizes).
    let s3 = S3Server::start(&env.dir.path().join("s3")).await?;
    let extra = format!("backup:\n  s3: {}\n", s3.s3_yaml(env.dir.path(), "bench/")?);
    let config = Agent::write_lone_config(&env, &extra)?;
    let drctl = |args: &[&str]| {
        let mut c = Command::new(bin("drctl"));
        c.arg("backup")
            .arg("--agent-config")
            .arg(&config)
            .args(args)
            .env("DR_RESTORE_CHECKPOINTS", env.dir.path().join("ckpt"))
            .env("RUST_LOG", "warn");
        c
    };

    // (a) backup.
    let (out, backup_s, backup_rss) =
        run_measured(drctl(&["create", "--no-verify", "--json"])).await?;
    if !out.status.success() {
        bail!("backup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let parquet_mb = v["bytes"].as_f64().unwrap_or(0.0) / 1e6;
    let backup_mbps = mb / backup_s;
    let run_s = v["seconds"].as_f64().unwrap_or(f64::NAN);
    println!(
        "backup: {backup_s:.2}s (drctl start to exit) = {backup_mbps:.1} MB/s of row data ({parquet_mb:.1} MB Parquet); ratio to scan {:.2}; the run itself (lock to manifest) {run_s:.2}s, ratio {:.2}; peak RSS {backup_rss:.0} MiB",
        backup_mbps / scan_mbps,
        mb / run_s / scan_mbps
    );

    // Baseline (b): inserting the same rows directly into the other Milvus.
    env.standby.create_database(&db).await?;
    let insert_s = bench::insert(&env.standby, &db, "direct", shape, &ids).await?;
    let insert_rps = n as f64 / insert_s;
    println!("direct insert baseline: {n} rows in {insert_s:.2}s = {insert_rps:.0} rows/s");

    // (b) restore into the other Milvus.
    let target = servers().standby.endpoint();
    let (out, restore_s, restore_rss) = run_measured(drctl(&[
        "restore",
        &id,
        "--target-milvus",
        &target,
        "--json",
    ]))
    .await?;
    if !out.status.success() {
        bail!("restore failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let data_s = r["collections"][0]["data_seconds"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let download_wait_s = r["collections"][0]["download_wait_seconds"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let ok = r["ok"].as_bool() == Some(true);
    println!(
        "restore: rows written in {data_s:.2}s (of which {download_wait_s:.2}s waiting for the first rows) = {:.0} rows/s, ratio to direct insert {:.2}; end to end (drctl start to exit, incl. index build, load, content check) {restore_s:.2}s = {:.0} rows/s, ratio {:.2}; peak RSS {restore_rss:.0} MiB; content check {}",
        n as f64 / data_s,
        n as f64 / data_s / insert_rps,
        n as f64 / restore_s,
        n as f64 / restore_s / insert_rps,
        if ok { "passed" } else { "FAILED" }
    );
    Ok(())
}
