//! The front door: pymilvus (the official Python client) through the
//! agents' gRPC proxy, against real Milvus servers and real agents.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use dr_agent::client::DrctlConfig;
use dr_agent::milvus::Pk;
use dr_proto::now_ms;
use dr_tests::{data, start_pair, wait_until, Agent, TestEnv};
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

async fn caught_up(ctl: &DrctlConfig, since: i64) -> Result<()> {
    wait_until(LONG, "the standby to apply the primary's state", || async {
        let r = ctl.status("dc-a").await.ok()?.replication?;
        (r.applied_snapshot_ms >= since).then_some(())
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
    caught_up(&ctl, now_ms()).await?;
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
    caught_up(&ctl, now_ms()).await?;

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
    assert_eq!(r["error"]["code"], "FAILED_PRECONDITION", "{r}");
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
    caught_up(&ctl, now_ms()).await?;
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
    // pymilvus retries a refused call until its timeout: at least once.
    let refused = sample(
        &mb,
        "milvus_dr_frontdoor_refused_writes_total{datacenter=\"dc-b\"}",
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{mb}");
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
