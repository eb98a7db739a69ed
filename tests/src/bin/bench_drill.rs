//! `cargo run --release -p dr-tests --bin bench_drill`: failover drills,
//! measured end to end, many times, on a two-datacenter deployment whose
//! agents switch the service name on a real BIND 9 (three witnesses, two
//! agents, two real Milvus servers), under a client that writes through
//! the name at a steady rate.
//!
//! Each round runs `drctl drill failover` (the same code, as a library),
//! then waits until the demoted datacenter has caught up as the standby and
//! marks it resynchronised; the next round fails over back. Reports RTO
//! (outage start to the service verified through the name) and RPO
//! (markers) p50/p99/max, and how many drills met the targets.
//!
//! Environment: DRILL_PROFILE (fast | default), DRILLS (10),
//! DRILL_WRITES_PER_SEC (100), DRILL_ANTI_FLAP_MS (5000: drills follow each
//! other faster than the profiles' anti-flap windows allow), DRILL_RTO_TARGET_MS
//! (fast 10000, default 40000), DRILL_RPO_TARGET_MS (1000), DRILL_JSON (a
//! file for every report).

use std::time::Duration;

use anyhow::{Context, Result};
use dr_agent::drill::run::{self, Kind, Options, Report};
use dr_tests::bench::env_num;
use dr_tests::client::{ClientSpec, NameClient};
use dr_tests::data::{self, Shape};
use dr_tests::deployment::{deploy_with, Extra};
use dr_tests::dns::Bind;
use dr_tests::wait_until;
use dr_witness::decide::OperatorRequest;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    dr_tests::init_logging();
    let profile = std::env::var("DRILL_PROFILE").unwrap_or_else(|_| "fast".into());
    let drills = env_num("DRILLS", 10) as usize;
    let rate = env_num("DRILL_WRITES_PER_SEC", 100) as u32;
    let anti_flap = env_num("DRILL_ANTI_FLAP_MS", 5_000);
    let rto_target = env_num(
        "DRILL_RTO_TARGET_MS",
        if profile == "fast" { 10_000 } else { 40_000 },
    );
    let rpo_target = env_num("DRILL_RPO_TARGET_MS", 1_000);
    let failover = format!("{{ profile: {profile}, anti_flap_ms: {anti_flap} }}");
    println!(
        "bench_drill: {drills} failover drills, profile {profile} (anti-flap {anti_flap} ms), client {rate} writes/s through the name"
    );

    let dir = tempfile::tempdir()?;
    let bind = Bind::start(&dir.path().join("bind"), "").await?;
    let dns = bind.two_datacenters_yaml("svc");
    let d = deploy_with(
        "bench_drill",
        &failover,
        None,
        Extra {
            agents: &dns,
            ..Default::default()
        },
    )
    .await?;
    let db = d.env.name.clone();
    let shape = Shape::Simple { dim: 8 };
    data::create(&d.env.primary, &db, "w", shape).await?;
    let client = NameClient::start(
        ClientSpec {
            dns: bind.addr,
            label: "svc".into(),
            ports: [
                (
                    "127.0.0.11".to_string(),
                    dr_tests::port_of(&d.env.endpoints[0].0),
                ),
                (
                    "127.0.0.12".to_string(),
                    dr_tests::port_of(&d.env.endpoints[1].0),
                ),
            ]
            .into(),
            database: db.clone(),
            collection: "w".into(),
            shape,
            rate,
            // A client honouring a short TTL.
            resolve_every: Duration::from_secs(1),
        },
        1_000_000,
    );
    let long = Duration::from_secs(600);
    let opts = Options {
        kind: Kind::Failover,
        force: false,
        rto_target: Duration::from_millis(rto_target),
        rpo_target: Duration::from_millis(rpo_target),
        warmup: Duration::from_secs(2),
        timeout: Duration::from_secs(300),
    };
    let reports_dir = dir.path().join("drills");
    let mut reports: Vec<Report> = vec![];
    let started = std::time::Instant::now();
    for i in 1..=drills {
        // Ready: the standby healthy, caught up, eligible, past anti-flap.
        wait_until(long, "a drill may start", || async {
            let all = d.ctl.witness_status().await;
            let (_, why) = run::preflight(&all, Kind::Failover).ok()?;
            why.is_empty().then_some(())
        })
        .await
        .with_context(|| d.logs())?;
        let r = run::run(&d.ctl, &opts, &reports_dir)
            .await
            .with_context(|| d.logs())?;
        println!(
            "drill {i:>2}: {} -> {}  RTO {:>6} ms  RPO {:>5} ms  {}{}",
            r.from,
            r.to,
            r.rto_ms.map_or("-".into(), |v| v.to_string()),
            r.rpo_ms.map_or("-".into(), |v| v.to_string()),
            if r.passed { "PASS" } else { "FAIL" },
            if r.problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.problems.join("; "))
            }
        );
        let (demoted, epoch) = (r.from.clone(), r.to_epoch.context("a new epoch")?);
        reports.push(r);
        // The demoted datacenter catches up as the standby, then is marked.
        wait_until(long, "the demoted datacenter caught up", || async {
            let s = d.ctl.status(&demoted).await.ok()?;
            let lag = s.replication.as_ref()?.lag_ms;
            (s.role == "sink" && s.epoch == epoch && s.milvus_healthy && (0..2_000).contains(&lag))
                .then_some(())
        })
        .await
        .with_context(|| d.logs())?;
        d.ctl
            .witness_command(&OperatorRequest::MarkResynced {
                dc: demoted.clone(),
                by: String::new(),
                discard_divergent: false,
            })
            .await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acked = client.acked();
    let failed = client.failed();
    client.stop().await;

    let mut rto: Vec<u64> = reports.iter().filter_map(|r| r.rto_ms).collect();
    let mut rpo: Vec<u64> = reports.iter().filter_map(|r| r.rpo_ms).collect();
    rto.sort_unstable();
    rpo.sort_unstable();
    let step = |name: &str| -> Vec<u64> {
        let mut v: Vec<u64> = reports
            .iter()
            .filter_map(|r| r.steps.iter().find(|s| s.name == name)?.after_ms)
            .collect();
        v.sort_unstable();
        v
    };
    println!(
        "\nprofile {profile}: {} drills, {} passed",
        reports.len(),
        reports.iter().filter(|r| r.passed).count()
    );
    for name in [
        "majority confirmed",
        "epoch committed",
        "new primary acting",
        "service verified through the name",
    ] {
        let v = step(name);
        println!(
            "  {name:<36} p50 {:>6} ms  p99 {:>6} ms",
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        );
    }
    println!(
        "  RTO (outage -> service verified)     p50 {:>6} ms  p99 {:>6} ms  max {:>6} ms  (target {rto_target} ms)",
        percentile(&rto, 0.5),
        percentile(&rto, 0.99),
        rto.last().copied().unwrap_or(0)
    );
    println!(
        "  RPO (markers)                        p50 {:>6} ms  p99 {:>6} ms  max {:>6} ms  (target {rpo_target} ms)",
        percentile(&rpo, 0.5),
        percentile(&rpo, 0.99),
        rpo.last().copied().unwrap_or(0)
    );
    println!(
        "  client: {:.0} writes/s acknowledged through the name over {elapsed:.0} s ({failed} failed or timed out)",
        acked as f64 / elapsed
    );
    if let Ok(path) = std::env::var("DRILL_JSON") {
        std::fs::write(&path, serde_json::to_vec_pretty(&reports)?)?;
        println!("  reports: {path}");
    }
    Ok(())
}
