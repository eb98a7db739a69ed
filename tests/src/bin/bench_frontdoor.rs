//! The front door benchmark, in one run against two real Milvus servers:
//!
//! (a) pymilvus insert throughput and search latency through the front
//!     door, divided by the same directly against Milvus;
//! (b) replication lag (the agent's own, sampled every 250 ms) under steady
//!     writes at each rate of `BENCH_RATES` on collections of each size of
//!     `BENCH_SIZES`, with the change log (writes through the front door)
//!     and with scan capture alone (writes straight into Milvus);
//! (c) the latency sync mode adds to a write;
//! (d) the agents' peak RSS.
//!
//! `BENCH_SIZES` (100000,1000000), `BENCH_RATES` (500,5000),
//! `BENCH_SECONDS` (20), `BENCH_DIM` (128), `BENCH_PY_ROWS` (50000),
//! `BENCH_PY_PAIRS` (5: whole runs alternating direct and door),
//! `BENCH_PY_INTERLEAVED` (5: runs call by call through direct, a plain
//! TCP relay and the door; the firmer figure, see [`call_by_call`]).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dr_agent::milvus::{Connection, Milvus};
use dr_tests::bench::env_num;
use dr_tests::data::{self, Shape};
use dr_tests::{peak_rss_mib, start_pair, wait_until, Agent, TestEnv};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn client(endpoint: String) -> Result<Milvus> {
    Ok(Milvus::connect(Connection {
        endpoint,
        health_url: None,
        authorization: None,
        request_timeout: Duration::from_secs(60),
    })?)
}

/// frontdoor_bench.py against `uri` (and call by call against each of
/// `also` too, when given).
async fn pymilvus(
    uri: &str,
    also: &[&str],
    cpu_pid: Option<u32>,
    db: &str,
    coll: &str,
    rows: u64,
    dim: usize,
) -> Result<serde_json::Value> {
    let (uri, db, coll) = (uri.to_string(), db.to_string(), coll.to_string());
    let also: Vec<String> = also.iter().map(|u| u.to_string()).collect();
    tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
        let mut cmd = std::process::Command::new(dr_tests::venv_python()?);
        cmd.arg(dr_tests::repo_root().join("tests/py/frontdoor_bench.py"))
            .args(["--uri", &uri, "--db", &db, "--collection", &coll])
            .args(["--rows", &rows.to_string(), "--dim", &dim.to_string()]);
        for u in &also {
            cmd.args(["--also", u]);
        }
        if let Some(pid) = cpu_pid {
            cmd.args(["--cpu-pid", &pid.to_string()]);
        }
        let out = cmd.output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "frontdoor_bench.py: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_str(
            stdout.lines().last().unwrap_or_default(),
        )?)
    })
    .await?
}

/// Both agents, dc-a acting as primary and caught up.
async fn pair(env: &TestEnv, extra: &str) -> Result<(Agent, Agent)> {
    let (a, b) = start_pair(env, extra, None).await?;
    let ctl = env.drctl(&a, &b);
    wait_until(Duration::from_secs(900), "the initial sync", || async {
        let st = ctl.status("dc-a").await.ok()?;
        let r = st.replication?;
        let log_empty = st.frontdoor.is_none_or(|f| f.log_entries == 0);
        (st.role == "source" && r.applied_snapshot_ms > 0 && log_empty).then_some(())
    })
    .await?;
    Ok((a, b))
}

struct Lag {
    p50: f64,
    p99: f64,
    max: f64,
    achieved: f64,
}

/// Steady writes (40% insert, 40% upsert, 20% delete) through `writer` at
/// `wps` for `secs`, sampling the agent's lag every 250 ms.
#[allow(clippy::too_many_arguments)]
async fn steady(
    env: &TestEnv,
    a: &Agent,
    b: &Agent,
    writer: &Milvus,
    db: &str,
    shape: Shape,
    next_id: &mut i64,
    wps: u64,
    secs: u64,
) -> Result<Lag> {
    let ctl = env.drctl(a, b);
    let tick = Duration::from_millis(100);
    let per_tick = (wps / 10).max(1) as i64;
    let (n_ins, n_ups) = (per_tick * 2 / 5, per_tick * 2 / 5);
    let n_del = per_tick - n_ins - n_ups;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let lags = std::sync::Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (lags, stop, ctl) = (lags.clone(), stop.clone(), ctl.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(s) = ctl.status("dc-a").await {
                    if let Some(r) = s.replication.filter(|r| r.lag_ms >= 0) {
                        lags.lock().unwrap().push(r.lag_ms as f64 / 1e3);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        interval.tick().await;
        let ins: Vec<i64> = (*next_id..*next_id + n_ins).collect();
        *next_id += n_ins;
        let mut ups: Vec<i64> = (0..n_ups)
            .map(|_| (rand() % *next_id as u64) as i64)
            .collect();
        ups.sort();
        ups.dedup();
        let dels: Vec<i64> = (0..n_del)
            .map(|_| (rand() % *next_id as u64) as i64)
            .collect();
        data::insert(writer, db, "c", shape, &ins, 1).await?;
        data::upsert(writer, db, "c", shape, &ups, 2).await?;
        data::delete(writer, db, "c", shape, &dels).await?;
        writes += (ins.len() + ups.len() + dels.len()) as u64;
    }
    let achieved = writes as f64 / start.elapsed().as_secs_f64();
    stop.cancel();
    sampler.await?;
    let mut l = lags.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    Ok(Lag {
        p50: percentile(&l, 0.5),
        p99: percentile(&l, 0.99),
        max: l.last().copied().unwrap_or(f64::NAN),
        achieved,
    })
}

/// Milliseconds of `n` single 10-row inserts through `writer`, sorted.
async fn write_latencies(
    writer: &Milvus,
    db: &str,
    shape: Shape,
    next_id: &mut i64,
    n: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ids: Vec<i64> = (*next_id..*next_id + 10).collect();
        *next_id += 10;
        let t = Instant::now();
        data::insert(writer, db, "c", shape, &ids, 1).await?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

async fn identical(env: &TestEnv, a: &Agent, b: &Agent) -> Result<bool> {
    let ctl = env.drctl(a, b);
    wait_until(
        Duration::from_secs(600),
        "catch-up after the load",
        || async {
            let st = ctl.status("dc-a").await.ok()?;
            (st.frontdoor.is_none_or(|f| f.log_entries == 0)).then_some(())
        },
    )
    .await?;
    Ok(data::read_all(&env.primary, &env.name, "c").await?
        == data::read_all(&env.standby, &env.name, "c").await?)
}

/// Phase (a'): the runs of frontdoor_bench.py with sides direct, relay
/// and door (in that order). Per call, a door call's time divided by the
/// direct call of the same batch, pooled over every run: Milvus's stalls
/// (a flush, an index build, taking one call hundreds of ms) land on
/// either side at random, so whole-run totals move by up to ±40% from run to
/// run while the median of the per-call ratios moves by a few percent.
/// Both are reported.
fn call_by_call(
    runs: &[serde_json::Value],
    n: u64,
    show: &dyn Fn(&[f64], &str) -> String,
) -> Vec<String> {
    const SIDES: [&str; 3] = ["direct", "relay", "door"];
    let calls = |run: &serde_json::Value, k: usize, what: &str| -> Vec<f64> {
        run["sides"][k][what]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_f64())
            .collect()
    };
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let pooled =
        |k: usize, what: &str| sorted(runs.iter().flat_map(|r| calls(r, k, what)).collect());
    // Per-call ratios side ÷ direct, pooled; and per run from the totals.
    let per_call = |k: usize| {
        sorted(
            runs.iter()
                .flat_map(|r| {
                    calls(r, k, "insert_ms")
                        .into_iter()
                        .zip(calls(r, 0, "insert_ms"))
                        .map(|(s, d)| s / d)
                        .collect::<Vec<_>>()
                })
                .collect(),
        )
    };
    let totals = |k: usize| -> Vec<f64> {
        runs.iter()
            .map(|r| {
                r["sides"][k]["insert_rows_per_s"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
                    / r["sides"][0]["insert_rows_per_s"]
                        .as_f64()
                        .unwrap_or(f64::NAN)
            })
            .collect()
    };
    let ins: Vec<Vec<f64>> = (0..3).map(|k| pooled(k, "insert_ms")).collect();
    let srch: Vec<Vec<f64>> = (0..3).map(|k| pooled(k, "search_ms")).collect();
    let each = |v: &[Vec<f64>], p: f64| {
        (0..3)
            .map(|k| format!("{} {:.2}", SIDES[k], percentile(&v[k], p)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (relay_call, door_call) = (per_call(1), per_call(2));
    // The door agent's CPU during each side's inserts: during direct and
    // relay calls it is the agent's background work.
    let cpu_ms = |k: usize| {
        let s: f64 = runs
            .iter()
            .filter_map(|r| r["sides"][k]["cpu_pid_insert_s"].as_f64())
            .sum();
        1000.0 * s / ins[k].len().max(1) as f64
    };
    let (relay_tot, door_tot) = (totals(1), totals(2));
    let median = |v: &[f64]| percentile(&sorted(v.to_vec()), 0.5);
    vec![
        format!("(a') call by call in one client, {n} runs: each batch and each search through direct, a plain TCP relay and the door, the order rotating; {} inserts and {} searches per side", ins[0].len(), srch[0].len()),
        format!("    insert ms per call, p50: {}; p90: {}", each(&ins, 0.5), each(&ins, 0.9)),
        format!(
            "    insert throughput, door / direct: {:.2} from the median per-call ratio ({} pairs; relay / direct {:.2}); {:.2} from the runs' total times, median (runs: {}; relay {:.2})",
            1.0 / percentile(&door_call, 0.5),
            door_call.len(),
            1.0 / percentile(&relay_call, 0.5),
            median(&door_tot),
            show(&door_tot, ""),
            median(&relay_tot),
        ),
        format!(
            "    the door's agent, CPU ms per insert: during door calls {:.2}, during direct calls {:.2}, during relay calls {:.2}",
            cpu_ms(2),
            cpu_ms(0),
            cpu_ms(1)
        ),
        format!("    search ms, p50: {}; p99: {}", each(&srch, 0.5), each(&srch, 0.99)),
        format!(
            "    search, door - direct: p50 {:+.2} ms, p99 {:+.2} ms (relay - direct: p99 {:+.2} ms)",
            percentile(&srch[2], 0.5) - percentile(&srch[0], 0.5),
            percentile(&srch[2], 0.99) - percentile(&srch[0], 0.99),
            percentile(&srch[1], 0.99) - percentile(&srch[0], 0.99),
        ),
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let sizes = list("BENCH_SIZES", "100000,1000000");
    let rates = list("BENCH_RATES", "500,5000");
    let secs = env_num("BENCH_SECONDS", 20);
    let dim = env_num("BENCH_DIM", 128) as usize;
    let py_rows = env_num("BENCH_PY_ROWS", 50_000);
    let py_pairs = env_num("BENCH_PY_PAIRS", 5);
    let py_interleaved = env_num("BENCH_PY_INTERLEAVED", 5);
    let shape = Shape::Simple { dim };
    let door_yaml = "frontdoor: { listen: \"127.0.0.1:0\", scan_interval: 10m }";
    let mut report = Vec::new();

    // (a) pymilvus directly and through the door (agents idle otherwise).
    let env = TestEnv::new("bench_fd_a").await?;
    let (a, b) = pair(&env, door_yaml).await?;
    let door = format!("http://{}", a.frontdoor.context("no front door")?);
    let direct = env.endpoints[0].0.clone();
    // With the standby's agent stopped first: what the door itself costs a
    // client (the writes wait in the change log); then with replication
    // running, which on this one machine competes for the same two cores
    // as the client and the primary (in production the standby is
    // elsewhere).
    let (mut a, mut b) = (a, b);
    b.stop()?;
    // Alternating pairs (the machine's own noise varies more between runs
    // than the door costs): medians of each side and of the pairs' ratios.
    let mut runs: Vec<(bool, serde_json::Value)> = Vec::new();
    for i in 0..py_pairs {
        for (j, uri) in [&direct, &door].into_iter().enumerate() {
            let r = pymilvus(
                uri,
                &[],
                None,
                &env.name,
                &format!("py{i}_{j}"),
                py_rows,
                dim,
            )
            .await?;
            println!(
                "pymilvus via {}: {r}",
                if uri == &door { "door" } else { "direct" }
            );
            runs.push((uri == &door, r));
        }
    }
    // Call by call in one client: every side under the same background
    // load of Milvus. Beside direct and the door, a plain TCP relay (the
    // test proxy: 64 KiB reads, tokio): what any extra hop on loopback
    // costs on this machine, whatever it does.
    let relay = dr_tests::proxy::Proxy::start().await?;
    relay.set_target(
        direct
            .trim_start_matches("http://")
            .parse()
            .context("the Milvus endpoint as host:port")?,
    );
    let relay_uri = format!("http://{}", relay.addr);
    let mut interleaved: Vec<serde_json::Value> = Vec::new();
    for i in 0..py_interleaved {
        let r = pymilvus(
            &direct,
            &[&relay_uri, &door],
            a.pid(),
            &env.name,
            &format!("pi{i}"),
            py_rows,
            dim,
        )
        .await?;
        let brief: Vec<serde_json::Value> = r["sides"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                serde_json::json!({
                    "insert_rows_per_s": s["insert_rows_per_s"],
                    "search_p50_ms": s["search_p50_ms"],
                    "search_p99_ms": s["search_p99_ms"],
                })
            })
            .collect();
        println!(
            "pymilvus direct, relay and door, call by call: {}",
            serde_json::Value::Array(brief)
        );
        interleaved.push(r);
    }
    drop(relay);
    b.restart().await?;
    let mut replicating = Vec::new();
    for (i, uri) in [&direct, &door].into_iter().enumerate() {
        let r = pymilvus(uri, &[], None, &env.name, &format!("pr{i}"), py_rows, dim).await?;
        println!(
            "pymilvus via {}, replicating: {r}",
            if uri == &door { "door" } else { "direct" }
        );
        replicating.push(r);
    }
    let side = |door: bool, k: &str| -> Vec<f64> {
        runs.iter()
            .filter(|(d, _)| *d == door)
            .filter_map(|(_, r)| r[k].as_f64())
            .collect()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    // Each run's figure, for the report.
    let show = |v: &[f64], unit: &str| {
        v.iter()
            .map(|r| format!("{r:.2}{unit}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ratios: Vec<f64> = side(true, "insert_rows_per_s")
        .iter()
        .zip(side(false, "insert_rows_per_s"))
        .map(|(f, d)| f / d)
        .collect();
    let (ti_d, ti_f) = (
        median(side(false, "insert_rows_per_s")),
        median(side(true, "insert_rows_per_s")),
    );
    let (s99_d, s99_f) = (
        median(side(false, "search_p99_ms")),
        median(side(true, "search_p99_ms")),
    );
    let (s50_d, s50_f) = (
        median(side(false, "search_p50_ms")),
        median(side(true, "search_p50_ms")),
    );
    report.push(format!("(a) pymilvus, {py_rows} rows x {dim}-d in 1,000-row inserts, 300 searches, {py_pairs} alternating pairs (medians), standby agent stopped"));
    report.push(format!(
        "    insert  direct {ti_d:>8.0} rows/s   door {ti_f:>8.0} rows/s   ratio of medians {:.2}   median of pair ratios {:.2} (pairs: {})",
        ti_f / ti_d,
        median(ratios.clone()),
        show(&ratios, "")
    ));
    report.push(format!("    search  direct p50 {s50_d:.2} ms p99 {s99_d:.2} ms   door p50 {s50_f:.2} ms p99 {s99_f:.2} ms   p99 {:+.2} ms", s99_f - s99_d));

    if !interleaved.is_empty() {
        report.extend(call_by_call(&interleaved, py_interleaved, &show));
    }

    let f = |i: usize, k: &str| replicating[i][k].as_f64().unwrap_or(f64::NAN);
    report.push(format!(
        "    replicating on the same 2 cores: insert direct {:.0} rows/s (not replicated until a scan), door {:.0} rows/s (replicated as written): ratio {:.2}; search p99 direct {:.2} ms, door {:.2} ms",
        f(0, "insert_rows_per_s"), f(1, "insert_rows_per_s"),
        f(1, "insert_rows_per_s") / f(0, "insert_rows_per_s"),
        f(0, "search_p99_ms"), f(1, "search_p99_ms")
    ));

    // (c) sync mode's added latency, on the same small collection.
    let mut next_id = 10_000_000i64;
    data::create(&env.primary, &env.name, "c", shape).await?;
    let writer = client(door.clone())?;
    let lat_async = write_latencies(&writer, &env.name, shape, &mut next_id, 200).await?;
    a.stop()?;
    b.stop()?;
    drop((a, b));
    let (a, b) = pair(&env, &format!("  mode: sync\n{door_yaml}")).await?;
    let writer = client(format!("http://{}", a.frontdoor.context("no front door")?))?;
    let lat_sync = write_latencies(&writer, &env.name, shape, &mut next_id, 200).await?;
    report.push("(c) one 10-row insert through the door, 200 each, async then sync".into());
    report.push(format!(
        "    async p50 {:.2} ms p99 {:.2} ms   sync p50 {:.2} ms p99 {:.2} ms   added p50 {:.2} ms p99 {:.2} ms",
        percentile(&lat_async, 0.5), percentile(&lat_async, 0.99),
        percentile(&lat_sync, 0.5), percentile(&lat_sync, 0.99),
        percentile(&lat_sync, 0.5) - percentile(&lat_async, 0.5),
        percentile(&lat_sync, 0.99) - percentile(&lat_async, 0.99),
    ));
    drop((a, b));
    drop(env);

    // (b) lag, and (d) RSS.
    let mut rss_door: f64 = 0.0;
    report.push(format!(
        "(b) lag (s) under steady writes, 40% insert / 40% upsert / 20% delete, {secs} s each"
    ));
    report.push(
        "    rows      writes/s  capture       achieved  p50     p99     max     identical".into(),
    );
    for &size in &sizes {
        let env = TestEnv::new(&format!("bench_fd_{size}")).await?;
        let ids: Vec<i64> = (0..size as i64).collect();
        data::create(&env.primary, &env.name, "c", shape).await?;
        for chunk in ids.chunks(50_000) {
            data::insert(&env.primary, &env.name, "c", shape, chunk, 1).await?;
        }
        let mut next_id = size as i64;
        for (label, yaml) in [("scan", ""), ("change log", door_yaml)] {
            let t = Instant::now();
            let (a, b) = pair(&env, yaml).await?;
            println!(
                "{size} rows, {label}: in sync after {:.0} s",
                t.elapsed().as_secs_f64()
            );
            let writer = match a.frontdoor {
                Some(addr) => client(format!("http://{addr}"))?,
                None => env.primary.clone(),
            };
            for &wps in &rates {
                let l = steady(
                    &env,
                    &a,
                    &b,
                    &writer,
                    &env.name,
                    shape,
                    &mut next_id,
                    wps,
                    secs,
                )
                .await?;
                let same = if label == "change log" {
                    identical(&env, &a, &b).await?
                } else {
                    true
                };
                let line = format!(
                    "    {size:<9} {wps:<9} {label:<13} {:<9.0} {:<7.2} {:<7.2} {:<7.2} {}",
                    l.achieved,
                    l.p50,
                    l.p99,
                    l.max,
                    if label == "change log" {
                        if same {
                            "yes"
                        } else {
                            "NO"
                        }
                    } else {
                        "-"
                    }
                );
                println!("{line}");
                report.push(line);
            }
            if label == "change log" {
                rss_door = rss_door.max(peak_rss_mib(a.pid().unwrap_or(0)).unwrap_or(-1.0));
                rss_door = rss_door.max(peak_rss_mib(b.pid().unwrap_or(0)).unwrap_or(-1.0));
            }
        }
    }
    report.push(if rss_door > 0.0 {
        format!("(d) peak RSS of an agent with the front door: {rss_door:.0} MiB")
    } else {
        "(d) peak RSS of an agent with the front door: not measured (it is read during (b), and BENCH_SIZES is empty)".into()
    });
    println!();
    for l in report {
        println!("{l}");
    }
    Ok(())
}
