//! The front door: pymilvus (the official Python client) through the
//! agents' gRPC proxy, against real Milvus servers and real agents.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use dr_agent::client::DrctlConfig;
use dr_agent::milvus::Pk;
use dr_tests::webhook::Receiver;
use dr_tests::{data, start_pair, start_pair_with_vars, wait_until, Agent, TestEnv};
use serde_json::Value;
use tracing::info;

const LONG: Duration = Duration::from_secs(180);
const FRONTDOOR: &str = "frontdoor: { listen: \"127.0.0.1:0\" }";

/// Runs tests/py/frontdoor_ops.py with the venv's python; its JSON output.
async fn py(args: &[&str]) -> Result<Value> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || -> Result<Value> {
        let out = std::process::Command::new(dr_tests::venv_python()?)
            .arg(dr_tests::repo_root().join("tests/py/frontdoor_ops.py"))
            .args(&args)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "frontdoor_ops.py {args:?} failed ({}):\n{}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| format!("JSON from frontdoor_ops.py: {stdout}"))
    })
    .await?
}

fn uri(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

fn door(a: &Agent) -> Result<String> {
    Ok(uri(a.frontdoor.context("the agent bound no front door")?))
}

/// Both agents with a front door, dc-a acting as primary.
async fn pair(env: &TestEnv) -> Result<(Agent, Agent, DrctlConfig)> {
    let (a, b) = start_pair(env, FRONTDOOR, None).await?;
    let ctl = env.drctl(&a, &b);
    wait_until(LONG, "dc-a to act as primary", || async {
        (ctl.status("dc-a").await.ok()?.role == "source").then_some(())
    })
    .await?;
    Ok((a, b, ctl))
}

/// The standby has applied a first pass and every write the front door
/// acknowledged (its change log is empty).
async fn caught_up(ctl: &DrctlConfig) -> Result<()> {
    wait_until(LONG, "the standby to apply the primary's state", || async {
        let st = ctl.status("dc-a").await.ok()?;
        let r = st.replication?;
        (r.applied_snapshot_ms > 0 && st.frontdoor?.log_entries == 0).then_some(())
    })
    .await
}

async fn metrics(a: &Agent) -> Result<String> {
    Ok(reqwest::get(format!("http://{}/metrics", a.metrics))
        .await?
        .text()
        .await?)
}

/// The value of the sample line starting with `series` (labels included).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymilvus_through_the_front_door_sees_what_it_sees_directly_and_replicates() -> Result<()> {
    let env = TestEnv::new("t_fd_same").await?;
    let db = env.name.clone();
    let (a, b, ctl) = pair(&env).await?;
    let via = door(&a)?;
    let direct = env.endpoints[0].0.clone();

    info!("phase: the same pymilvus sequence directly and through dc-a's front door");
    let d = py(&[
        "sequence",
        "--uri",
        &direct,
        "--db",
        &db,
        "--collection",
        "direct",
    ])
    .await?;
    let f = py(&[
        "sequence",
        "--uri",
        &via,
        "--db",
        &db,
        "--collection",
        "via_door",
    ])
    .await?;
    info!(%d, "direct");
    info!(%f, "through the front door");
    assert_eq!(d, f, "the front door must not change any answer");
    // Non-trivial: 100 inserted, 10 upserted, 3 + 5 deleted.
    assert_eq!(f["insert"], 100);
    assert_eq!(f["upsert"], 10);
    assert_eq!(f["created"], true);
    assert_eq!(f["dropped"], true);
    assert_eq!(f["loaded"], "Loaded", "{f}");
    assert_eq!(f["released"], "NotLoad", "{f}");
    assert_eq!(f["reloaded"], "Loaded", "{f}");
    for reads in [&f["reads"], &f["reads_after_reload"]] {
        assert_eq!(reads["count"], 92, "{reads}");
        let hits = reads["search"].as_array().context("search hits")?;
        assert_eq!(hits.len(), 5, "{reads}");
        assert_eq!(hits[0]["id"], 20, "the query vector is row 20's: {reads}");
        assert_eq!(hits[0]["distance"], 0.0, "{reads}");
        assert_eq!(
            reads["query_low"],
            serde_json::json!([
                [3, 31],
                [4, 41],
                [5, 51],
                [6, 61],
                [7, 71],
                [8, 81],
                [9, 91]
            ]),
            "ids 0-2 deleted: {reads}"
        );
        assert_eq!(
            reads["query_upserted"],
            serde_json::json!([[50, 502], [55, 552], [59, 592]]),
            "the upserted version: {reads}"
        );
    }

    info!("phase: a collection written through the front door ends identical on the standby");
    py(&[
        "sequence",
        "--uri",
        &via,
        "--db",
        &db,
        "--collection",
        "kept",
        "--keep",
    ])
    .await?;
    caught_up(&ctl).await?;
    let primary = data::read_all(&env.primary, &db, "kept").await?;
    let standby = data::read_all(&env.standby, &db, "kept")
        .await
        .context("read kept on the standby")?;
    if let Some(diff) = data::describe_diff(&primary, &standby) {
        anyhow::bail!("kept: the standby differs: {diff}");
    }
    assert_eq!(standby.len(), 92);
    info!(
        rows = standby.len(),
        "the standby holds what went through the front door"
    );
    for ag in [&a, &b] {
        ensure!(
            ag.error_lines().is_empty(),
            "{} logged errors:\n{}",
            ag.dc,
            ag.error_lines().join("\n")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standbys_front_door_refuses_writes_and_serves_reads() -> Result<()> {
    let env = TestEnv::new("t_fd_fence").await?;
    let db = env.name.clone();
    let (a, b, ctl) = pair(&env).await?;
    let (door_a, door_b) = (door(&a)?, door(&b)?);

    info!("phase: a collection written through the primary's front door, replicated");
    py(&[
        "sequence",
        "--uri",
        &door_a,
        "--db",
        &db,
        "--collection",
        "c",
        "--keep",
    ])
    .await?;
    caught_up(&ctl).await?;

    info!("phase: an insert through the standby's front door is refused");
    let r = py(&[
        "insert",
        "--uri",
        &door_b,
        "--db",
        &db,
        "--collection",
        "c",
        "--id",
        "9999",
    ])
    .await?;
    info!(%r, "the standby's answer");
    assert_eq!(r["error"]["code"], "PERMISSION_DENIED", "{r}");
    let msg = r["error"]["message"].as_str().context("a message")?;
    assert!(
        msg.contains(
            "milvus-dr: dc-b is not the primary at epoch 1 (dc-a is): writes are refused here; connect through the service name"
        ),
        "{msg}"
    );
    let ok = py(&[
        "insert",
        "--uri",
        &door_a,
        "--db",
        &db,
        "--collection",
        "c",
        "--id",
        "9998",
    ])
    .await?;
    assert_eq!(ok["insert"], 1, "the primary's front door takes it: {ok}");
    caught_up(&ctl).await?;
    let on_a = data::read_all(&env.primary, &db, "c").await?;
    let on_b = data::read_all(&env.standby, &db, "c").await?;
    assert!(on_a.contains_key(&Pk::Int(9998)) && on_b.contains_key(&Pk::Int(9998)));
    assert!(
        !on_a.contains_key(&Pk::Int(9999)) && !on_b.contains_key(&Pk::Int(9999)),
        "the refused row is on neither cluster"
    );
    if let Some(diff) = data::describe_diff(&on_a, &on_b) {
        anyhow::bail!("c: the standby differs: {diff}");
    }

    info!("phase: reads through the standby's front door (allowed by default)");
    let read_b = py(&["read", "--uri", &door_b, "--db", &db, "--collection", "c"]).await?;
    let read_a = py(&["read", "--uri", &door_a, "--db", &db, "--collection", "c"]).await?;
    info!(%read_b, "read through the standby's front door");
    assert_eq!(read_a, read_b, "the standby answers as the primary does");
    assert_eq!(read_b["count"], 93, "{read_b}");
    assert_eq!(read_b["search"][0]["id"], 20, "{read_b}");

    info!("phase: the metrics count requests and the refused write");
    let mb = metrics(&b).await?;
    let ma = metrics(&a).await?;
    let lines = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("milvus_dr_frontdoor_"))
            .filter(|l| l.contains("Insert") || l.contains("refused_writes"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    info!(dc_b = ?lines(&mb), dc_a = ?lines(&ma), "front door metrics");
    // PERMISSION_DENIED: pymilvus does not retry it.
    let refused = sample(
        &mb,
        "milvus_dr_frontdoor_refused_writes_total{datacenter=\"dc-b\"}",
    );
    assert_eq!(refused, Some(1.0), "{mb}");
    assert_eq!(
        sample(
            &mb,
            "milvus_dr_frontdoor_requests_total{datacenter=\"dc-b\",method=\"Insert\",outcome=\"refused\"}"
        ),
        refused,
        "{mb}"
    );
    for m in ["Search", "Query"] {
        let n = sample(
            &mb,
            &format!(
                "milvus_dr_frontdoor_requests_total{{datacenter=\"dc-b\",method=\"{m}\",outcome=\"ok\"}}"
            ),
        );
        assert!(n.is_some_and(|n| n >= 1.0), "{m} on dc-b: {mb}");
    }
    let inserts = sample(
        &ma,
        "milvus_dr_frontdoor_requests_total{datacenter=\"dc-a\",method=\"Insert\",outcome=\"ok\"}",
    );
    assert_eq!(inserts, Some(2.0), "the kept collection's and 9998: {ma}");
    assert_eq!(
        sample(
            &ma,
            "milvus_dr_frontdoor_refused_writes_total{datacenter=\"dc-a\"}"
        ),
        Some(0.0),
        "{ma}"
    );
    let timed = sample(
        &ma,
        "milvus_dr_frontdoor_request_duration_seconds_count{datacenter=\"dc-a\",method=\"Search\"}",
    );
    assert!(timed.is_some_and(|n| n >= 1.0), "{ma}");
    Ok(())
}

/// `database.collection` is the same on both clusters (and `count(*)`
/// equals its distinct keys on each: `read_all` checks).
async fn identical(env: &TestEnv, coll: &str) -> Option<usize> {
    let a = data::read_all(&env.primary, &env.name, coll).await.ok()?;
    let b = data::read_all(&env.standby, &env.name, coll).await.ok()?;
    (a == b).then_some(a.len())
}

const PASSES: &str = "milvus_dr_replication_passes_total{datacenter=\"dc-a\"}";

/// Both agents with `frontdoor` (a YAML line), dc-a primary, sending its
/// alerts to `hook`.
async fn alerting_pair(env: &TestEnv, frontdoor: &str, hook: &Receiver) -> Result<(Agent, Agent)> {
    let extra = format!(
        "{frontdoor}\nalerts:\n  webhooks: [ {{ kind: generic, url_env: DR_TEST_WEBHOOK }} ]\n"
    );
    start_pair_with_vars(env, &extra, None, &[("DR_TEST_WEBHOOK", &hook.url)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_front_door_reach_the_standby_from_the_change_log_not_a_scan(
) -> Result<()> {
    let env = TestEnv::new("t_fd_log").await?;
    let db = env.name.clone();
    // Scans every 10 minutes: only the first pass runs during the test.
    let (a, _b) = start_pair(
        &env,
        "frontdoor: { listen: \"127.0.0.1:0\", scan_interval: 10m }",
        None,
    )
    .await?;
    let ctl = env.drctl(&a, &_b);
    caught_up(&ctl).await?;
    let passes = sample(&metrics(&a).await?, PASSES);
    assert_eq!(passes, Some(1.0), "one pass at start");

    info!("phase: create, insert, upsert, delete by ids and by filter through the door");
    let started = std::time::Instant::now();
    py(&[
        "sequence",
        "--uri",
        &door(&a)?,
        "--db",
        &db,
        "--collection",
        "c",
        "--keep",
    ])
    .await?;
    let rows = wait_until(
        Duration::from_secs(60),
        "the standby to equal the primary",
        || identical(&env, "c"),
    )
    .await?;
    info!(
        rows,
        secs = started.elapsed().as_secs_f64(),
        "replicated from the change log"
    );
    assert_eq!(rows, 92);
    let m = metrics(&a).await?;
    assert_eq!(sample(&m, PASSES), Some(1.0), "no scan pass ran: {m}");
    let depth = wait_until(LONG, "the change log to be trimmed", || async {
        let m = metrics(&a).await.ok()?;
        (sample(&m, "milvus_dr_change_log_entries{datacenter=\"dc-a\"}")? == 0.0).then_some(m)
    })
    .await?;
    assert!(
        sample(
            &depth,
            "milvus_dr_replication_lag_seconds{datacenter=\"dc-a\"}"
        )
        .is_some_and(|l| l == 0.0),
        "nothing unapplied: no lag: {depth}"
    );
    info!("phase: idle; the standby's applied time keeps up without a scan");
    let t = dr_proto::now_ms();
    let applied = wait_until(
        Duration::from_secs(30),
        "the standby's applied time to pass now",
        || async {
            let r = ctl.status("dc-b").await.ok()?.replication?;
            (r.applied_snapshot_ms >= t).then_some(r.applied_snapshot_ms)
        },
    )
    .await?;
    info!(behind_ms = applied - t, "standby applied time");
    assert_eq!(
        sample(&metrics(&a).await?, PASSES),
        Some(1.0),
        "still no scan pass"
    );
    let st = ctl.status("dc-a").await?;
    let fd = st.frontdoor.context("status shows the front door")?;
    info!(?fd, "dc-a's front door in status");
    assert_eq!(fd.mode, "async");
    assert!(fd.accepting_writes);
    assert_eq!((fd.log_entries, fd.bypass_rows), (0, 0));
    assert!(fd.requests >= 10, "{fd:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_around_the_front_door_is_found_by_the_scan_repaired_and_alerted() -> Result<()> {
    let env = TestEnv::new("t_fd_bypass").await?;
    let db = env.name.clone();
    let hook = Receiver::start().await?;
    let (a, b) = alerting_pair(
        &env,
        "frontdoor: { listen: \"127.0.0.1:0\", scan_interval: 2s }",
        &hook,
    )
    .await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl).await?;
    py(&[
        "sequence",
        "--uri",
        &door(&a)?,
        "--db",
        &db,
        "--collection",
        "c",
        "--keep",
    ])
    .await?;
    wait_until(LONG, "the standby to equal the primary", || {
        identical(&env, "c")
    })
    .await?;
    const BYPASS: &str = "milvus_dr_bypass_rows_total";
    info!("phase: scans over what came through the door find nothing around it");
    let before = sample(&metrics(&a).await?, PASSES).unwrap_or(0.0);
    wait_until(LONG, "two more scan passes", || async {
        let m = metrics(&a).await.ok()?;
        (sample(&m, PASSES)? >= before + 2.0).then_some(())
    })
    .await?;
    let m = metrics(&a).await?;
    assert!(
        m.lines()
            .filter(|l| l.starts_with(BYPASS))
            .all(|l| l.ends_with(" 0")),
        "rows written through the door are not writes around it (their hashes as logged equal their hashes as scanned): {m}"
    );

    info!("phase: an insert and a delete straight into the primary's Milvus");
    py(&[
        "insert",
        "--uri",
        &env.endpoints[0].0,
        "--db",
        &db,
        "--collection",
        "c",
        "--id",
        "7777",
    ])
    .await?;
    env.primary
        .delete(&db, "c", None, "id", &[Pk::Int(30)])
        .await?;
    let rows = wait_until(LONG, "the scan to replicate both", || async {
        let b = data::read_all(&env.standby, &db, "c").await.ok()?;
        (b.contains_key(&Pk::Int(7777)) && !b.contains_key(&Pk::Int(30))).then_some(())?;
        identical(&env, "c").await
    })
    .await?;
    assert_eq!(rows, 92);
    let label = format!("{BYPASS}{{datacenter=\"dc-a\",collection=\"{db}.c\"}}");
    let n = wait_until(LONG, "the bypass counted", || async {
        sample(&metrics(&a).await.ok()?, &label).filter(|n| *n >= 2.0)
    })
    .await?;
    assert_eq!(n, 2.0, "one insert and one delete around the door");
    let fired = hook
        .wait_for(LONG, "the bypass_writes alert", |v| {
            v["event"] == "bypass_writes" && v["status"] == "firing"
        })
        .await?;
    info!(%fired, "alerted");
    // The alert fires on the first pass that finds rows around the door:
    // both, or only the insert when a pass ran between the two writes (the
    // counter above is exact either way).
    let rows = fired["detail"]["rows"].as_u64().unwrap_or(0);
    assert!((1..=2).contains(&rows), "{fired}");
    let keys = fired["detail"]["collections"][0]["sample_keys"].to_string();
    assert!(keys.contains("7777") || keys.contains("\"30\""), "{fired}");
    assert_eq!(
        fired["detail"]["collections"][0]["collection"],
        format!("{db}.c")
    );
    hook.wait_for(LONG, "resolved by a clean pass", |v| {
        v["event"] == "bypass_writes" && v["status"] == "resolved"
    })
    .await?;
    Ok(())
}

/// Runs a burst through `uri` in the background: its final JSON.
fn spawn_burst(uri: &str, db: &str, start: i64, count: i64) -> Result<std::process::Child> {
    Ok(std::process::Command::new(dr_tests::venv_python()?)
        .arg(dr_tests::repo_root().join("tests/py/frontdoor_ops.py"))
        .args(["burst", "--uri", uri, "--db", db, "--collection", "c"])
        .args([
            "--id",
            &start.to_string(),
            "--count",
            &count.to_string(),
            "--batch",
            "10",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

async fn burst_result(child: std::process::Child) -> Result<Vec<i64>> {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "burst failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    Ok(last["acked"]
        .as_array()
        .context("acked")?
        .iter()
        .filter_map(Value::as_i64)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_either_agent_mid_burst_loses_no_acknowledged_write() -> Result<()> {
    let env = TestEnv::new("t_fd_kill").await?;
    let db = env.name.clone();
    let (mut a, mut b) = start_pair(
        &env,
        "frontdoor: { listen: \"127.0.0.1:0\", scan_interval: 10m }",
        None,
    )
    .await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl).await?;
    py(&[
        "create",
        "--uri",
        &door(&a)?,
        "--db",
        &db,
        "--collection",
        "c",
    ])
    .await?;
    let mut acked: Vec<i64> = Vec::new();
    const INSERTS: &str =
        "milvus_dr_frontdoor_requests_total{datacenter=\"dc-a\",method=\"Insert\",outcome=\"ok\"}";

    info!("phase: kill -9 the primary's agent in the middle of a burst");
    let child = spawn_burst(&door(&a)?, &db, 0, 100_000)?;
    wait_until(LONG, "20 batches through the door", || async {
        (sample(&metrics(&a).await.ok()?, INSERTS)? >= 20.0).then_some(())
    })
    .await?;
    a.kill9();
    let got = burst_result(child).await?;
    info!(acked = got.len(), "acknowledged before the kill");
    ensure!(
        got.len() >= 200 && got.len() < 100_000,
        "the burst was cut: {}",
        got.len()
    );
    acked.extend(got);
    a.restart().await?;
    wait_until(LONG, "dc-a to act as primary again", || async {
        (ctl.status("dc-a").await.ok()?.role == "source").then_some(())
    })
    .await?;

    info!("phase: kill -9 the standby's agent in the middle of a burst");
    let child = spawn_burst(&door(&a)?, &db, 200_000, 2_000)?;
    wait_until(LONG, "20 batches through the restarted door", || async {
        (sample(&metrics(&a).await.ok()?, INSERTS)? >= 20.0).then_some(())
    })
    .await?;
    b.kill9();
    let got = burst_result(child).await?;
    ensure!(
        got.len() == 2_000,
        "the primary takes every write while its standby is down: {}",
        got.len()
    );
    acked.extend(got);
    b.restart().await?;

    let rows = wait_until(LONG, "both clusters identical", || identical(&env, "c")).await?;
    let on_b = data::read_all(&env.standby, &db, "c").await?;
    let missing: Vec<&i64> = acked
        .iter()
        .filter(|k| !on_b.contains_key(&Pk::Int(**k)))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes missing on the standby, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    info!(
        rows,
        acknowledged = acked.len(),
        "identical, no duplicate keys, every acknowledged write on both"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_refuses_or_degrades_while_the_standby_is_away_and_converges() -> Result<()> {
    let env = TestEnv::new("t_fd_sync").await?;
    let db = env.name.clone();
    let fd = "frontdoor: { listen: \"127.0.0.1:0\", scan_interval: 10m }\n";
    // dc-a reaches dc-b's agent through a path that can drop every packet.
    let path = dr_tests::proxy::Proxy::start().await?;
    let (mut a, mut b) = start_pair(&env, fd, Some(&path)).await?;
    // The replication section is written before `extra`: set the mode by
    // rewriting dc-a's config and restarting it.
    let set_mode = |a: &Agent, on_timeout: &str| -> Result<()> {
        let text = std::fs::read_to_string(&a.config)?;
        let text = text.replace(
            "replication:\n",
            &format!(
                "replication:\n  mode: sync\n  sync_timeout: 5s\n  sync_on_timeout: {on_timeout}\n"
            ),
        );
        std::fs::write(&a.config, text)?;
        Ok(())
    };
    a.stop()?;
    set_mode(&a, "refuse")?;
    a.restart().await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl).await?;
    py(&[
        "create",
        "--uri",
        &door(&a)?,
        "--db",
        &db,
        "--collection",
        "c",
    ])
    .await?;
    let ok = py(&[
        "insert",
        "--uri",
        &door(&a)?,
        "--db",
        &db,
        "--collection",
        "c",
        "--id",
        "1",
    ])
    .await?;
    assert_eq!(ok["insert"], 1, "{ok}");
    // Acknowledged in sync mode: already on the standby.
    let on_b = data::read_all(&env.standby, &db, "c").await?;
    assert!(
        on_b.contains_key(&Pk::Int(1)),
        "a sync write is on the standby when acknowledged"
    );
    let st = ctl
        .status("dc-a")
        .await?
        .frontdoor
        .context("front door status")?;
    assert_eq!(st.mode, "sync");
    assert!(st.sync_state.starts_with("sync: writes wait"), "{st:?}");

    info!("phase: the standby's agent stopped: writes are refused");
    b.stop()?;
    wait_until(LONG, "dc-a to see its standby gone", || async {
        (!ctl.status("dc-a").await.ok()?.replication?.connected).then_some(())
    })
    .await?;
    let r = py(&[
        "insert",
        "--uri",
        &door(&a)?,
        "--db",
        &db,
        "--collection",
        "c",
        "--id",
        "2",
    ])
    .await?;
    info!(%r, "refused");
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("replication.mode is sync"),
        "{r}"
    );
    assert!(
        !data::read_all(&env.primary, &db, "c")
            .await?
            .contains_key(&Pk::Int(2)),
        "refused before Milvus"
    );

    info!("phase: the standby back: writes wait for it again");
    b.restart().await?;
    wait_until(LONG, "a sync write to be accepted again", || async {
        let r = py(&[
            "insert",
            "--uri",
            &door(&a).ok()?,
            "--db",
            &db,
            "--collection",
            "c",
            "--id",
            "3",
        ])
        .await
        .ok()?;
        (r["insert"] == 1).then_some(())
    })
    .await?;
    assert!(data::read_all(&env.standby, &db, "c")
        .await?
        .contains_key(&Pk::Int(3)));

    info!("phase: the path to the standby drops every packet (nothing refused, nothing closed)");
    path.silence(true);
    // A deadline past sync_timeout (pymilvus retries UNAVAILABLE until it).
    let insert = |a: &Agent, id: i64| {
        let uri = door(a);
        let db = db.clone();
        async move {
            py(&[
                "insert",
                "--uri",
                &uri?,
                "--db",
                &db,
                "--collection",
                "c",
                "--id",
                &id.to_string(),
                "--timeout",
                "8",
            ])
            .await
        }
    };
    // The first write waits for a standby that never answers: after
    // sync_timeout it is answered UNAVAILABLE (applied on the primary, not
    // confirmed) and sync mode is degraded, so pymilvus's retries are
    // refused before they reach Milvus. So is the next write.
    let r = insert(&a, 6).await?;
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    ensure!(
        std::fs::read_to_string(&a.log)?
            .contains("sync mode: the standby did not apply a write in time"),
        "dc-a did not time a write out"
    );
    let r = insert(&a, 7).await?;
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("writes are refused until it does"),
        "{r}"
    );
    let on_a = data::read_all(&env.primary, &db, "c").await?;
    assert!(
        on_a.contains_key(&Pk::Int(6)),
        "the unconfirmed write is applied on the primary"
    );
    assert!(!on_a.contains_key(&Pk::Int(7)), "the refused write is not");
    let st = ctl
        .status("dc-a")
        .await?
        .frontdoor
        .context("front door status")?;
    assert!(st.sync_state.contains("degraded"), "{st:?}");
    assert!(!st.accepting_writes, "{st:?}");

    info!("phase: the path heals: the standby applies the unconfirmed write, writes wait again");
    path.silence(false);
    wait_until(LONG, "sync mode confirming again", || async {
        let st = ctl.status("dc-a").await.ok()?.frontdoor?;
        (st.sync_state.starts_with("sync: writes wait") && st.accepting_writes).then_some(())
    })
    .await?;
    let r = insert(&a, 8).await?;
    assert_eq!(r["insert"], 1, "{r}");
    let on_b = data::read_all(&env.standby, &db, "c").await?;
    assert!(
        on_b.contains_key(&Pk::Int(6)) && on_b.contains_key(&Pk::Int(8)),
        "the unconfirmed and the new write are on the standby"
    );

    info!("phase: sync_on_timeout: async: accepted while the standby is away, alerted");
    a.stop()?;
    let text = std::fs::read_to_string(&a.config)?
        .replace("sync_on_timeout: refuse", "sync_on_timeout: async")
        .replace("sync_timeout: 5s", "sync_timeout: 1s");
    std::fs::write(&a.config, text)?;
    a.restart().await?;
    caught_up(&ctl).await?;
    b.stop()?;
    for id in [4, 5] {
        let r = insert(&a, id).await?;
        assert_eq!(r["insert"], 1, "accepted asynchronously: {r}");
    }
    let st = ctl
        .status("dc-a")
        .await?
        .frontdoor
        .context("front door status")?;
    assert!(st.sync_state.contains("accepted asynchronously"), "{st:?}");
    assert!(st.log_entries >= 2, "waiting for the standby: {st:?}");
    b.restart().await?;
    let rows = wait_until(LONG, "both clusters identical", || identical(&env, "c")).await?;
    assert_eq!(rows, 6, "1, 3, 4, 5, 6, 8");
    wait_until(LONG, "sync mode confirming again", || async {
        let st = ctl.status("dc-a").await.ok()?.frontdoor?;
        st.sync_state.starts_with("sync: writes wait").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_bound_the_change_log_is_cleared_alerted_and_a_scan_replicates_what_it_held(
) -> Result<()> {
    let env = TestEnv::new("t_fd_overflow").await?;
    let db = env.name.clone();
    let hook = Receiver::start().await?;
    // A 1 MB log; scans every 10 minutes, so only the first and the one
    // the overflow asks for run during the test.
    let (a, mut b) = alerting_pair(
        &env,
        "frontdoor: { listen: \"127.0.0.1:0\", scan_interval: 10m, change_log_max_mb: 1 }",
        &hook,
    )
    .await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl).await?;
    let (door, coll) = (door(&a)?, "c");
    py(&["create", "--uri", &door, "--db", &db, "--collection", coll]).await?;
    wait_until(LONG, "the collection on the standby", || {
        identical(&env, coll)
    })
    .await?;
    const OVERFLOWS: &str = "milvus_dr_change_log_overflows_total{datacenter=\"dc-a\"}";
    assert_eq!(sample(&metrics(&a).await?, OVERFLOWS), Some(0.0));

    info!("phase: the standby's agent stops; 40,000 rows (about 2 MB) through the door");
    b.stop()?;
    let out = py(&[
        "burst",
        "--uri",
        &door,
        "--db",
        &db,
        "--collection",
        coll,
        "--id",
        "0",
        "--count",
        "40000",
        "--batch",
        "1000",
    ])
    .await?;
    assert_eq!(
        out["acked"].as_array().map(Vec::len),
        Some(40_000),
        "every write is accepted: {out}"
    );
    let m = metrics(&a).await?;
    assert!(
        sample(&m, OVERFLOWS).is_some_and(|n| n >= 1.0),
        "the log reached its bound: {m}"
    );
    let bytes = sample(&m, "milvus_dr_change_log_bytes{datacenter=\"dc-a\"}").unwrap_or(-1.0);
    assert!(
        (0.0..=1_048_576.0).contains(&bytes),
        "the log stays within its bound: {bytes}"
    );
    let fired = hook
        .wait_for(LONG, "the change_log_overflow alert", |v| {
            v["event"] == "change_log_overflow" && v["status"] == "firing"
        })
        .await?;
    info!(%fired, "alerted");
    assert_eq!(fired["detail"]["recovered"], false, "{fired}");
    let st = ctl.status("dc-a").await?;
    assert!(st.frontdoor.context("front door status")?.log_overflows >= 1);

    info!("phase: the standby comes back; a scan pass replicates what the log dropped");
    b.restart().await?;
    let rows = wait_until(LONG, "the standby to equal the primary", || {
        identical(&env, coll)
    })
    .await?;
    assert_eq!(rows, 40_000);
    hook.wait_for(LONG, "the alert resolved", |v| {
        v["event"] == "change_log_overflow" && v["status"] == "resolved"
    })
    .await?;
    let passes = sample(&metrics(&a).await?, PASSES).unwrap_or(0.0);
    assert!(passes >= 2.0, "a scan pass replicated them: {passes}");
    Ok(())
}
