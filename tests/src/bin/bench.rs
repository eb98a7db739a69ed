//! `cargo run --release -p dr-tests --bin bench`: replication benchmark
//! against two real Milvus servers, reported as ratios against baselines
//! measured in the same run.
//!
//! (a) initial sync of a collection (default 100,000 rows, 128-d vectors)
//!     ÷ min(scan rows/s on the primary, direct insert rows/s on the standby);
//! (b) p50/p99 lag under a steady mix of inserts, upserts and deletes;
//! (c) peak RSS of each agent.
//!
//! Environment: BENCH_ROWS (100000), BENCH_DIM (128), BENCH_WRITES_PER_SEC
//! (500), BENCH_SECONDS (30).

use std::time::{Duration, Instant};

use anyhow::Result;
use dr_proto::now_ms;
use dr_tests::bench::{self, env_num};
use dr_tests::data::{self, Shape};
use dr_tests::{peak_rss_mib, start_pair, wait_until, TestEnv};

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rows = env_num("BENCH_ROWS", 100_000) as i64;
    let dim = env_num("BENCH_DIM", 128) as usize;
    let wps = env_num("BENCH_WRITES_PER_SEC", 500);
    let secs = env_num("BENCH_SECONDS", 30);
    let shape = Shape::Simple { dim };
    let env = TestEnv::new("bench").await?;
    let db = env.name.clone();
    let ids: Vec<i64> = (0..rows).collect();
    println!("bench: {rows} rows x {dim}-d, steady {wps} writes/s for {secs} s");

    // Baseline 1: scanning the collection on the primary, as the agent does.
    data::create(&env.primary, &db, "c", shape).await?;
    data::insert(&env.primary, &db, "c", shape, &ids, 1).await?;
    let scan = bench::scan(&env.primary, &db, "c").await?;
    let scan_rps = scan.rows as f64 / scan.seconds;

    // Baseline 2: inserting the same rows directly into the standby.
    let scratch = "bench_insert_baseline";
    data::drop_database(&env.standby, scratch).await?;
    env.standby.create_database(scratch).await?;
    let insert_rps = rows as f64 / bench::insert(&env.standby, scratch, "c", shape, &ids).await?;
    data::drop_database(&env.standby, scratch).await?;
    let limit = scan_rps.min(insert_rps);
    // Both Milvus servers and both agents share this machine's cores: the
    // scan and the inserts cannot both run at full speed at once.
    let shared_limit = 1.0 / (1.0 / scan_rps + 1.0 / insert_rps);

    // (a) Initial sync through the agents.
    let since = now_ms();
    let t = Instant::now();
    let (a, b) = start_pair(&env, "", None).await?;
    let ctl = env.drctl(&a, &b);
    let mut first_row: Option<Duration> = None;
    loop {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "initial sync took over 600 s"
        );
        if let Some(sb) = ctl.status("dc-b").await.ok().and_then(|s| s.replication) {
            if sb.rows_upserted > 0 && first_row.is_none() {
                first_row = Some(t.elapsed());
            }
        }
        if let Some(sa) = ctl.status("dc-a").await.ok().and_then(|s| s.replication) {
            if sa.applied_snapshot_ms >= since {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = t.elapsed();
    let sync_rps = rows as f64 / total.as_secs_f64();
    let data_phase = total - first_row.unwrap_or_default();
    let sync_data_rps = rows as f64 / data_phase.as_secs_f64().max(1e-3);
    let (pa, pb) = (a.pid().unwrap_or(0), b.pid().unwrap_or(0));
    let rss_a_sync = peak_rss_mib(pa).unwrap_or(-1.0);
    let rss_b_sync = peak_rss_mib(pb).unwrap_or(-1.0);

    // (b) Steady mixed writes; lag sampled from the primary agent's status.
    let mut next_id = rows;
    let mut lags = Vec::new();
    let tick = Duration::from_millis(100);
    let per_tick = (wps / 10).max(1) as i64;
    let (n_ins, n_ups) = (per_tick * 2 / 5, per_tick * 2 / 5);
    let n_del = per_tick - n_ins - n_ups;
    let mut interval = tokio::time::interval(tick);
    let start = Instant::now();
    let mut last_sample = Instant::now();
    let mut writes = 0u64;
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    while start.elapsed() < Duration::from_secs(secs) {
        interval.tick().await;
        let ins: Vec<i64> = (next_id..next_id + n_ins).collect();
        next_id += n_ins;
        let ups: Vec<i64> = (0..n_ups)
            .map(|_| (rand() % next_id as u64) as i64)
            .collect();
        let dels: Vec<i64> = (0..n_del)
            .map(|_| (rand() % next_id as u64) as i64)
            .collect();
        data::insert(&env.primary, &db, "c", shape, &ins, 1).await?;
        let mut ups = ups;
        ups.sort();
        ups.dedup();
        data::upsert(&env.primary, &db, "c", shape, &ups, 2).await?;
        data::delete(&env.primary, &db, "c", shape, &dels).await?;
        writes += (ins.len() + ups.len() + dels.len()) as u64;
        if last_sample.elapsed() >= Duration::from_millis(250) {
            last_sample = Instant::now();
            if let Ok(s) = ctl.status("dc-a").await {
                if let Some(r) = s.replication {
                    if r.lag_ms >= 0 {
                        lags.push(r.lag_ms);
                    }
                }
            }
        }
    }
    let achieved = writes as f64 / start.elapsed().as_secs_f64();
    lags.sort();
    let rss_a = peak_rss_mib(pa).unwrap_or(-1.0);
    let rss_b = peak_rss_mib(pb).unwrap_or(-1.0);

    // Still exact afterwards?
    let since = now_ms();
    wait_until(
        Duration::from_secs(300),
        "catch-up after the load",
        || async {
            let r = ctl.status("dc-a").await.ok()?.replication?;
            (r.applied_snapshot_ms >= since).then_some(())
        },
    )
    .await?;
    let pa_rows = data::read_all(&env.primary, &db, "c").await?;
    let pb_rows = data::read_all(&env.standby, &db, "c").await?;
    let identical = pa_rows == pb_rows;

    println!();
    println!("(a) initial sync of {rows} rows x {dim}-d");
    println!("    scan on primary (baseline)      {scan_rps:>10.0} rows/s");
    println!("    direct insert on standby        {insert_rps:>10.0} rows/s");
    println!("    physical limit min(scan,insert) {limit:>10.0} rows/s");
    println!("    one-machine limit 1/(1/s+1/i)   {shared_limit:>10.0} rows/s");
    println!("    sync, agent start to caught up  {sync_rps:>10.0} rows/s  ratio {:.2} (one-machine {:.2})", sync_rps / limit, sync_rps / shared_limit);
    println!("    sync, first row to caught up    {sync_data_rps:>10.0} rows/s  ratio {:.2} (one-machine {:.2})", sync_data_rps / limit, sync_data_rps / shared_limit);
    println!("(b) lag under {achieved:.0} writes/s (40% insert, 40% upsert, 20% delete) for {secs} s, {} samples", lags.len());
    println!(
        "    p50 {:.2} s   p99 {:.2} s   max {:.2} s",
        percentile(&lags, 0.5) as f64 / 1e3,
        percentile(&lags, 0.99) as f64 / 1e3,
        lags.last().copied().unwrap_or(-1) as f64 / 1e3
    );
    println!("(c) peak RSS  source agent {rss_a_sync:.0} MiB after (a), {rss_a:.0} MiB after (b)");
    println!("              sink agent   {rss_b_sync:.0} MiB after (a), {rss_b:.0} MiB after (b)");
    println!(
        "    standby identical to primary after the load: {identical} ({} rows)",
        pa_rows.len()
    );
    let json = serde_json::json!({
        "rows": rows, "dim": dim,
        "scan_rows_per_s": scan_rps, "insert_rows_per_s": insert_rps,
        "sync_rows_per_s": sync_rps, "sync_ratio": sync_rps / limit,
        "sync_data_rows_per_s": sync_data_rps, "sync_data_ratio": sync_data_rps / limit,
        "one_machine_limit_rows_per_s": shared_limit,
        "writes_per_s": achieved, "lag_p50_ms": percentile(&lags, 0.5), "lag_p99_ms": percentile(&lags, 0.99),
        "rss_source_mib": rss_a, "rss_sink_mib": rss_b, "identical": identical,
    });
    println!("{json}");
    anyhow::ensure!(
        identical,
        "the standby differs from the primary after the benchmark"
    );
    Ok(())
}
