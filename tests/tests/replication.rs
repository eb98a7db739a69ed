//! Replication between two real Milvus servers through real `dr-agent`
//! processes over mutual TLS.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use dr_agent::client::{self, DrctlConfig};
use dr_agent::milvus::{Pk, PkType};
use dr_proto::now_ms;
use dr_proto::pb;
use dr_tests::data::{self, Shape};
use dr_tests::webhook::Receiver;
use dr_tests::{proxy::Proxy, start_pair, wait_until, Agent, AgentSpec, TestEnv};
use milvus::proto::common::LoadState;
use tracing::info;

const SIMPLE: Shape = Shape::Simple { dim: 16 };
const LONG: Duration = Duration::from_secs(180);

/// Waits until the standby has applied the primary's state as of `since`
/// (a pass that began after `since` is acknowledged), as the primary's
/// agent reports it.
async fn caught_up(ctl: &DrctlConfig, since: i64) -> Result<()> {
    wait_until(LONG, "the standby to apply the primary's state", || async {
        let s = ctl.status("dc-a").await;
        tracing::debug!(?s, since, "caught up?");
        let r = s.ok()?.replication?;
        (r.applied_snapshot_ms >= since).then_some(())
    })
    .await
}

async fn assert_identical(env: &TestEnv, coll: &str) -> Result<BTreeMap<Pk, u64>> {
    let a = data::read_all(&env.primary, &env.name, coll).await?;
    let b = data::read_all(&env.standby, &env.name, coll)
        .await
        .with_context(|| format!("read {coll} on the standby"))?;
    if let Some(d) = data::describe_diff(&a, &b) {
        anyhow::bail!("{coll}: standby differs: {d}");
    }
    Ok(a)
}

/// A collection `c` of `rows` rows on the primary, both agents running and
/// the standby caught up.
async fn replicated(env: &TestEnv, rows: i64) -> Result<(Agent, Agent, DrctlConfig)> {
    data::create(&env.primary, &env.name, "c", SIMPLE).await?;
    data::insert(
        &env.primary,
        &env.name,
        "c",
        SIMPLE,
        &(0..rows).collect::<Vec<_>>(),
        1,
    )
    .await?;
    let (a, b) = start_pair(env, "", None).await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl, now_ms()).await?;
    Ok((a, b, ctl))
}

fn no_errors(agents: &[&Agent]) -> Result<()> {
    for a in agents {
        let errs = a.error_lines();
        ensure!(
            errs.is_empty(),
            "{} logged errors:\n{}",
            a.dc,
            errs.join("\n")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_beyond_the_query_window_is_exact() -> Result<()> {
    let env = TestEnv::new("t_initial").await?;
    let db = env.name.clone();
    info!("phase: 20,000 rows on the primary before any agent runs");
    data::create(&env.primary, &db, "big", SIMPLE).await?;
    let ids: Vec<i64> = (0..20_000).collect();
    data::insert(&env.primary, &db, "big", SIMPLE, &ids, 1).await?;
    let since = now_ms();

    info!("phase: agents start; initial sync");
    let (a, b) = start_pair(&env, "", None).await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl, since).await?;
    let rows = assert_identical(&env, "big").await?;
    assert_eq!(
        rows.len(),
        20_000,
        "all 20,000 rows, past the 16,384 query window"
    );

    info!("phase: drctl verify agrees");
    let report = client::verify(
        &ctl,
        &client::VerifyOptions {
            buckets: 256,
            limit: 10,
            settle: Duration::from_secs(60),
        },
    )
    .await?;
    assert!(report.settled && report.identical, "{report:?}");
    assert_eq!(report.collections.len(), 1);
    assert_eq!(report.collections[0].standby_rows, 20_000);
    no_errors(&[&a, &b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_upserts_and_deletes_all_arrive() -> Result<()> {
    let env = TestEnv::new("t_dml").await?;
    let db = env.name.clone();
    let (a, b, ctl) = replicated(&env, 3000).await?;

    info!("phase: 500 deletes, 500 upserts, 500 inserts while replicating");
    data::delete(
        &env.primary,
        &db,
        "c",
        SIMPLE,
        &(0..500).collect::<Vec<_>>(),
    )
    .await?;
    data::upsert(
        &env.primary,
        &db,
        "c",
        SIMPLE,
        &(500..1000).collect::<Vec<_>>(),
        2,
    )
    .await?;
    data::insert(
        &env.primary,
        &db,
        "c",
        SIMPLE,
        &(3000..3500).collect::<Vec<_>>(),
        1,
    )
    .await?;
    let since = now_ms();
    caught_up(&ctl, since).await?;
    let rows = assert_identical(&env, "c").await?;
    assert_eq!(rows.len(), 3000);
    assert!(!rows.contains_key(&Pk::Int(0)) && !rows.contains_key(&Pk::Int(499)));
    assert!(rows.contains_key(&Pk::Int(3499)));

    info!("phase: the upserted version is the one on the standby");
    let info = env.standby.describe(&db, "c").await?;
    let got = env
        .standby
        .query(&info, None, "id == 700", &["n".into()], None, 0)
        .await?;
    let n = dr_agent::milvus::rows::primary_keys(&got, "n")?;
    assert_eq!(
        n,
        vec![Pk::Int(700 * 10 + 2)],
        "row 700 must hold version 2"
    );
    no_errors(&[&a, &b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_collection_with_partition_and_index_is_created_and_loaded() -> Result<()> {
    let env = TestEnv::new("t_ddl").await?;
    let db = env.name.clone();
    let (a, b) = start_pair(&env, "", None).await?;
    let ctl = env.drctl(&a, &b);

    info!("phase: a collection with a partition appears on the primary");
    data::create(&env.primary, &db, "parts", SIMPLE).await?;
    env.primary.create_partition(&db, "parts", "p1").await?;
    // The new partition must be loaded too before it can be read.
    env.primary.load(&db, "parts").await?;
    env.primary.wait_loaded(&db, "parts", LONG).await?;
    env.primary
        .insert(
            &db,
            "parts",
            Some("p1"),
            data::rows(SIMPLE, &(0..300).collect::<Vec<_>>(), 1),
            300,
        )
        .await?;
    data::insert(
        &env.primary,
        &db,
        "parts",
        SIMPLE,
        &(1000..1200).collect::<Vec<_>>(),
        1,
    )
    .await?;
    caught_up(&ctl, now_ms()).await?;

    info!("phase: schema, partition, index and load state on the standby");
    let p = env.primary.describe(&db, "parts").await?;
    let s = env.standby.describe(&db, "parts").await?;
    assert_eq!(p.schema.fields.len(), s.schema.fields.len());
    let parts = env.standby.list_partitions(&db, "parts").await?;
    assert!(parts.contains(&"p1".to_string()), "{parts:?}");
    let pi = env.primary.list_indexes(&db, "parts").await?;
    let si = env.standby.list_indexes(&db, "parts").await?;
    assert_eq!(pi.len(), 1);
    assert_eq!(
        si.iter()
            .map(|i| (&i.field, &i.index_name))
            .collect::<Vec<_>>(),
        pi.iter()
            .map(|i| (&i.field, &i.index_name))
            .collect::<Vec<_>>()
    );
    let pparams: BTreeMap<_, _> = pi[0].params.iter().cloned().collect();
    let sparams: BTreeMap<_, _> = si[0].params.iter().cloned().collect();
    assert_eq!(pparams.get("index_type"), sparams.get("index_type"));
    assert_eq!(pparams.get("metric_type"), sparams.get("metric_type"));
    env.standby.wait_loaded(&db, "parts", LONG).await?;
    assert_eq!(
        env.standby.load_state(&db, "parts").await?,
        LoadState::Loaded
    );
    assert_identical(&env, "parts").await?;

    info!("phase: rows of p1 are in p1 on the standby");
    let in_p1 = env
        .standby
        .query(&s, Some("p1"), "", &["count(*)".into()], None, 0)
        .await?;
    let n = dr_agent::milvus::rows::primary_keys(&in_p1, "count(*)")?;
    assert_eq!(n, vec![Pk::Int(300)]);

    info!("phase: dropping the collection on the primary drops it on the standby");
    env.primary.drop_collection(&db, "parts").await?;
    caught_up(&ctl, now_ms()).await?;
    assert!(env.standby.list_collections(&db).await?.is_empty());
    no_errors(&[&a, &b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_type_and_both_key_types_replicate_exactly() -> Result<()> {
    let env = TestEnv::new("t_types").await?;
    let db = env.name.clone();
    // Int64 keys with a float vector, VarChar keys with a binary vector.
    let int = Shape::AllTypes {
        pk: PkType::Int,
        binary: false,
    };
    let str_ = Shape::AllTypes {
        pk: PkType::Str,
        binary: true,
    };
    data::create(&env.primary, &db, "ints", int).await?;
    data::create(&env.primary, &db, "strs", str_).await?;
    for (c, sh) in [("ints", int), ("strs", str_)] {
        data::insert(&env.primary, &db, c, sh, &(0..2000).collect::<Vec<_>>(), 1).await?;
    }
    let (a, b) = start_pair(&env, "", None).await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl, now_ms()).await?;
    for (c, sh) in [("ints", int), ("strs", str_)] {
        data::upsert(&env.primary, &db, c, sh, &(100..200).collect::<Vec<_>>(), 7).await?;
        data::delete(&env.primary, &db, c, sh, &(300..350).collect::<Vec<_>>()).await?;
    }
    caught_up(&ctl, now_ms()).await?;
    for c in ["ints", "strs"] {
        let rows = assert_identical(&env, c).await?;
        assert_eq!(rows.len(), 1950, "{c}");
    }
    no_errors(&[&a, &b])
}

/// Slow replication down so that a fault lands in the middle of a sync.
const SLOW: &str = "  page_rows: 1000\n  max_in_flight: 1\n";

async fn kill9_mid_sync(which: &str) -> Result<()> {
    let env = TestEnv::new(&format!("t_kill_{which}")).await?;
    let db = env.name.clone();
    let shape = Shape::Simple { dim: 32 };
    data::create(&env.primary, &db, "c", shape).await?;
    let total = 30_000;
    data::insert(
        &env.primary,
        &db,
        "c",
        shape,
        &(0..total).collect::<Vec<_>>(),
        1,
    )
    .await?;
    let since = now_ms();
    let (mut a, mut b) = start_pair(&env, SLOW, None).await?;
    let ctl = env.drctl(&a, &b);

    info!("phase: wait until the sync is under way, then kill -9 the {which}");
    let acked = wait_until(LONG, "a few batches applied", || async {
        let r = ctl.status("dc-b").await.ok()?.replication?;
        (r.acked_seq >= 4).then_some(r.rows_upserted)
    })
    .await?;
    if which == "source" {
        a.kill9();
    } else {
        b.kill9();
    }
    assert!(
        acked < total as u64,
        "the kill must land mid-sync ({acked} rows applied)"
    );

    info!("phase: restart; replication converges with no duplicates");
    if which == "source" {
        a.restart().await?;
    } else {
        b.restart().await?;
    }
    caught_up(&ctl, since).await?;
    // A second, changing pass after the restart must still be exact.
    data::upsert(
        &env.primary,
        &db,
        "c",
        shape,
        &(0..100).collect::<Vec<_>>(),
        2,
    )
    .await?;
    data::delete(
        &env.primary,
        &db,
        "c",
        shape,
        &(100..200).collect::<Vec<_>>(),
    )
    .await?;
    caught_up(&ctl, now_ms()).await?;
    let rows = assert_identical(&env, "c").await?;
    assert_eq!(rows.len(), total as usize - 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_source_mid_sync_converges() -> Result<()> {
    kill9_mid_sync("source").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_sink_mid_sync_converges() -> Result<()> {
    kill9_mid_sync("sink").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_resumes() -> Result<()> {
    let env = TestEnv::new("t_cut").await?;
    let db = env.name.clone();
    data::create(&env.primary, &db, "c", SIMPLE).await?;
    data::insert(
        &env.primary,
        &db,
        "c",
        SIMPLE,
        &(0..20_000).collect::<Vec<_>>(),
        1,
    )
    .await?;
    let since = now_ms();
    let proxy = Proxy::start().await?;
    let (a, b) = start_pair(&env, SLOW, Some(&proxy)).await?;
    let ctl = env.drctl(&a, &b);

    info!("phase: cut the stream three times during the sync");
    for round in 1..=3u64 {
        wait_until(LONG, "the stream to be (re)established", || async {
            let r = ctl.status("dc-b").await.ok()?.replication?;
            (r.connected && proxy.accepted() >= round).then_some(())
        })
        .await?;
        proxy.cut();
    }
    caught_up(&ctl, since).await?;
    assert!(
        proxy.accepted() >= 4,
        "the source reconnected after every cut"
    );
    let rows = assert_identical(&env, "c").await?;
    assert_eq!(rows.len(), 20_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_grows_while_the_standby_agent_is_stopped_and_falls_after() -> Result<()> {
    let env = TestEnv::new("t_lag").await?;
    let (a, mut b, ctl) = replicated(&env, 1000).await?;
    let lag_of = |s: dr_proto::pb::StatusReply| s.replication.map(|r| r.lag_ms).unwrap_or(-1);
    let healthy_lag = lag_of(ctl.status("dc-a").await?);
    info!(healthy_lag, "phase: lag while replicating");
    assert!((0..5_000).contains(&healthy_lag), "lag {healthy_lag} ms");

    info!("phase: stop the standby agent; lag must grow");
    b.stop()?;
    let t0 = now_ms();
    let grown = wait_until(LONG, "lag above 4 s", || async {
        let l = lag_of(ctl.status("dc-a").await.ok()?);
        (l > 4_000).then_some(l)
    })
    .await?;
    let later = wait_until(LONG, "lag to keep growing", || async {
        let l = lag_of(ctl.status("dc-a").await.ok()?);
        (l > grown + 1_000).then_some(l)
    })
    .await?;
    assert!(later >= now_ms() - t0, "lag covers at least the outage");
    let metrics = reqwest::get(format!("http://{}/metrics", a.metrics))
        .await?
        .text()
        .await?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("milvus_dr_replication_lag_seconds"))
        .context("lag metric")?;
    let v: f64 = line.rsplit(' ').next().unwrap().parse()?;
    assert!(v > 4.0, "metrics show the lag too: {line}");

    info!("phase: restart; lag falls");
    b.restart().await?;
    wait_until(LONG, "lag back under 3 s", || async {
        let l = lag_of(ctl.status("dc-a").await.ok()?);
        (0..3_000).contains(&l).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_row_changed_directly_on_the_standby() -> Result<()> {
    let env = TestEnv::new("t_verify").await?;
    let db = env.name.clone();
    let (a, b, _ctl) = replicated(&env, 5000).await?;

    let ctl_file = env.dir.path().join("drctl.yaml");
    std::fs::write(
        &ctl_file,
        format!(
            "agents:\n  dc-a: {{ address: \"https://{}\" }}\n  dc-b: {{ address: \"https://{}\" }}\ntls: {{ ca: \"{c}/ca.pem\", cert: \"{c}/operator.pem\", key: \"{c}/operator.key\" }}\n",
            a.grpc,
            b.grpc,
            c = env.certs.display()
        ),
    )?;
    let run = |args: &[&str]| {
        std::process::Command::new(dr_tests::bin("drctl"))
            .arg("--config")
            .arg(&ctl_file)
            .args(args)
            .output()
    };
    info!("phase: identical clusters verify with exit 0");
    let out = run(&["verify", "--json"])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    info!("phase: change one row and delete another directly on the standby");
    data::upsert(&env.standby, &db, "c", SIMPLE, &[42], 9).await?;
    data::delete(&env.standby, &db, "c", SIMPLE, &[43]).await?;
    let out = run(&["verify", "--json", "--settle", "10s"])?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: client::VerifyReport = serde_json::from_slice(&out.stdout)?;
    let c = &report.collections[0];
    assert!(!report.identical && !c.identical);
    assert_eq!(c.different, vec!["42".to_string()]);
    assert_eq!(c.missing_on_standby, vec!["43".to_string()]);
    assert!(c.extra_on_standby.is_empty());
    let text = run(&["verify", "--settle", "10s"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("different content: 42") && text.contains("missing on standby: 43"),
        "{text}"
    );

    info!("phase: verify that cannot reach an agent exits 2");
    std::fs::write(
        &ctl_file,
        format!(
            "agents:\n  dc-a: {{ address: \"https://127.0.0.1:1\" }}\n  dc-b: {{ address: \"https://{}\" }}\ntls: {{ ca: \"{c}/ca.pem\", cert: \"{c}/operator.pem\", key: \"{c}/operator.key\" }}\n",
            b.grpc,
            c = env.certs.display()
        ),
    )?;
    assert_eq!(run(&["verify"])?.status.code(), Some(2));
    Ok(())
}

/// Leaving a collection out of replication (here `exclude` on the primary's
/// agent) never drops the standby's copy: the standby stops managing it,
/// keeps every row, says so in its status, and drops it only when an
/// operator asks (`drctl drop-unmanaged`), which it refuses for a managed
/// collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_replication_keeps_the_standbys_copy_until_dropped_explicitly() -> Result<()> {
    let env = TestEnv::new("repl_narrow").await?;
    data::create(&env.primary, &env.name, "k", SIMPLE).await?;
    data::insert(
        &env.primary,
        &env.name,
        "k",
        SIMPLE,
        &(0..300).collect::<Vec<_>>(),
        1,
    )
    .await?;
    let (mut a, b, ctl) = replicated(&env, 500).await?;
    let kept = assert_identical(&env, "k").await?;
    ensure!(kept.len() == 300);

    info!("phase: the primary's agent excludes k");
    a.stop()?;
    let text = std::fs::read_to_string(&a.config)?;
    let narrowed = text.replace(
        "  poll_interval: 200ms",
        &format!("  poll_interval: 200ms\n  exclude: [\"{}.k\"]", env.name),
    );
    ensure!(narrowed != text, "the config was narrowed");
    std::fs::write(&a.config, narrowed)?;
    a.restart().await?;
    let key = format!("{}.k", env.name);
    wait_until(LONG, "the standby to report k unmanaged", || async {
        let s = ctl.status("dc-b").await.ok()?;
        s.replication?
            .collections
            .iter()
            .any(|c| c.collection == "k" && c.state.starts_with("unmanaged"))
            .then_some(())
    })
    .await?;
    // Passes go on (c keeps replicating), and k stays whole on the standby.
    data::upsert(&env.primary, &env.name, "c", SIMPLE, &[1, 2, 3], 2).await?;
    caught_up(&ctl, now_ms()).await?;
    assert_identical(&env, "c").await?;
    let still = data::read_all(&env.standby, &env.name, "k").await?;
    ensure!(
        still == kept,
        "the standby's copy of k changed: {} rows",
        still.len()
    );

    info!("phase: explicit drops");
    let refused = ctl
        .drop_unmanaged("dc-b", &format!("{}.c", env.name))
        .await
        .expect_err("a managed collection is not dropped");
    ensure!(
        refused
            .to_string()
            .contains("not a collection this standby keeps unmanaged"),
        "{refused:#}"
    );
    let msg = ctl.drop_unmanaged("dc-b", &key).await?;
    info!(%msg, "dropped");
    let left = env.standby.list_collections(&env.name).await?;
    ensure!(
        !left.iter().any(|n| n == "k"),
        "k is still on the standby: {left:?}"
    );
    ensure!(
        env.primary
            .list_collections(&env.name)
            .await?
            .iter()
            .any(|n| n == "k"),
        "the primary keeps k"
    );
    let s = ctl.status("dc-b").await?;
    ensure!(
        !s.replication
            .unwrap_or_default()
            .collections
            .iter()
            .any(|c| c.collection == "k"),
        "k no longer listed"
    );
    no_errors(&[&a, &b])?;
    Ok(())
}

/// A collection the standby refuses for a reason retrying will not cure
/// (here it already has a collection of that name with another schema) is
/// held alone: one ERROR on the standby however often it is retried, the
/// primary's status says held, every other collection keeps replicating;
/// once the conflict is removed, it resumes by itself and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_the_standby_refuses_is_held_alone_and_resumes_once_fixed() -> Result<()> {
    let env = TestEnv::new("repl_held").await?;
    data::create(&env.primary, &env.name, "x", SIMPLE).await?;
    data::insert(
        &env.primary,
        &env.name,
        "x",
        SIMPLE,
        &(0..150).collect::<Vec<_>>(),
        1,
    )
    .await?;
    env.standby.create_database(&env.name).await?;
    data::create(&env.standby, &env.name, "x", Shape::Simple { dim: 4 }).await?;
    let (a, b, ctl) = replicated(&env, 300).await?;
    assert_identical(&env, "c").await?;

    let held = |s: &pb::StatusReply| {
        s.replication
            .as_ref()
            .and_then(|r| r.collections.iter().find(|c| c.collection == "x"))
            .is_some_and(|c| c.state.starts_with("held"))
    };
    wait_until(LONG, "the primary to report x held", || async {
        held(&ctl.status("dc-a").await.ok()?).then_some(())
    })
    .await?;
    ensure!(
        held(&ctl.status("dc-b").await?),
        "the standby lists x as held"
    );
    // Retried (every 2 s in tests) and refused again, while c goes on.
    let warned = |a: &Agent| {
        std::fs::read_to_string(&a.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("the standby holds this collection") && l.contains(".x"))
            .count()
    };
    for round in 0..2 {
        data::upsert(
            &env.primary,
            &env.name,
            "c",
            SIMPLE,
            &[round, round + 10],
            3 + round as u32,
        )
        .await?;
        caught_up(&ctl, now_ms()).await?;
        assert_identical(&env, "c").await?;
    }
    wait_until(LONG, "x retried and refused again", || async {
        (warned(&a) >= 2).then_some(())
    })
    .await?;
    let errors = b.error_lines();
    ensure!(
        errors.len() == 1 && errors[0].contains(".x"),
        "one ERROR on the standby, naming x: {errors:#?}"
    );
    ensure!(a.error_lines().is_empty(), "{:#?}", a.error_lines());

    info!("phase: the conflict is removed on the standby; x resumes");
    env.standby.drop_collection(&env.name, "x").await?;
    wait_until(LONG, "x replicated", || async {
        assert_identical(&env, "x").await.ok()
    })
    .await?;
    ensure!(!held(&ctl.status("dc-a").await?), "x no longer held");
    Ok(())
}

async fn scrape(a: &Agent) -> Result<String> {
    Ok(reqwest::get(format!("http://{}/metrics", a.metrics))
        .await?
        .text()
        .await?)
}

/// The value of the first sample of `name` whose labels contain `label`.
fn sample(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Anti-entropy: rows inserted, changed and deleted straight in the
/// standby's Milvus (around milvus-dr) are found by the primary's agent,
/// resent from the primary until the standby equals it again, counted in
/// `/metrics` (each row once), and alerted (`anti_entropy_repair`), resolved
/// after the next run that repairs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_rows_written_straight_into_the_standby() -> Result<()> {
    let env = TestEnv::new("repl_ae").await?;
    let db = env.name.clone();
    data::create(&env.primary, &db, "c", SIMPLE).await?;
    data::insert(
        &env.primary,
        &db,
        "c",
        SIMPLE,
        &(0..1000).collect::<Vec<_>>(),
        1,
    )
    .await?;
    let hook = Receiver::start().await?;
    let repl = "  anti_entropy_interval: 2s\n";
    let b = Agent::start(
        &env,
        &AgentSpec {
            dc: "dc-b",
            peer_address: "https://127.0.0.1:1".into(),
            grpc_port: 0,
            extra_yaml: repl,
        },
    )
    .await?;
    let a = Agent::start_with_vars(
        &env,
        &AgentSpec {
            dc: "dc-a",
            peer_address: format!("https://{}", b.grpc),
            grpc_port: 0,
            extra_yaml: &format!(
                "{repl}alerts:\n  webhooks: [ {{ kind: generic, url_env: DR_TEST_WEBHOOK }} ]\n"
            ),
        },
        &[("DR_TEST_WEBHOOK", &hook.url)],
    )
    .await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl, now_ms()).await?;
    assert_identical(&env, "c").await?;
    let label = format!("collection=\"{db}.c\"");
    const RUNS: &str = "milvus_dr_anti_entropy_runs_total";
    const REPAIRS: &str = "milvus_dr_anti_entropy_repairs_total";

    info!("phase: a run over an identical standby repairs nothing");
    wait_until(LONG, "a first anti-entropy run", || async {
        let m = scrape(&a).await.ok()?;
        (sample(&m, RUNS, "")? >= 1.0).then_some(())
    })
    .await?;
    let m = scrape(&a).await?;
    ensure!(sample(&m, REPAIRS, &label) == Some(0.0), "{m}");
    ensure!(
        sample(&m, "milvus_dr_anti_entropy_last_run_timestamp_seconds", "")
            .is_some_and(|t| t * 1000.0 > (now_ms() - 60_000) as f64),
        "{m}"
    );

    info!("phase: insert, upsert and delete straight in the standby's Milvus");
    data::insert(&env.standby, &db, "c", SIMPLE, &[5000], 1).await?;
    data::upsert(&env.standby, &db, "c", SIMPLE, &[10], 9).await?;
    data::delete(&env.standby, &db, "c", SIMPLE, &[20]).await?;
    wait_until(LONG, "the standby to equal the primary again", || async {
        let a = data::read_all(&env.primary, &db, "c").await.ok()?;
        let b = data::read_all(&env.standby, &db, "c").await.ok()?;
        (a == b && !b.contains_key(&Pk::Int(5000))).then_some(())
    })
    .await?;
    let repaired = wait_until(LONG, "3 rows counted as repaired", || async {
        let v = sample(&scrape(&a).await.ok()?, REPAIRS, &label)?;
        (v >= 3.0).then_some(v)
    })
    .await?;
    assert_eq!(repaired, 3.0, "each row repaired once");

    info!("phase: alerted with its evidence, resolved by the next clean run");
    let is = |v: &serde_json::Value, status: &str| {
        v["event"] == "anti_entropy_repair" && v["status"] == status
    };
    let fired = hook
        .wait_for(LONG, "the anti_entropy_repair alert", |v| is(v, "firing"))
        .await?;
    assert_eq!(fired["source"], "dc-a");
    assert_eq!(fired["severity"], "warning");
    assert_eq!(
        fired["detail"]["collections"][0]["collection"],
        format!("{db}.c")
    );
    let rows = ["extra", "different", "missing"].map(|k| {
        fired["detail"][format!("rows_{k}_on_standby")]
            .as_u64()
            .unwrap_or(0)
    });
    ensure!(
        rows.iter().sum::<u64>() >= 1 && rows.iter().all(|n| *n <= 1),
        "{fired}"
    );
    ensure!(
        fired["detail"]["cause"]
            .as_str()
            .unwrap_or_default()
            .contains("around milvus-dr"),
        "{fired}"
    );
    hook.wait_for(LONG, "the anti_entropy_repair resolve", |v| {
        is(v, "resolved")
    })
    .await?;
    let events: Vec<String> = hook
        .bodies()
        .iter()
        .filter(|v| v["event"] == "anti_entropy_repair")
        .map(|v| v["status"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        events,
        ["firing", "resolved"],
        "one trigger, then its resolve"
    );
    let m = scrape(&a).await?;
    assert_eq!(sample(&m, REPAIRS, &label), Some(3.0), "{m}");
    assert_identical(&env, "c").await?;
    no_errors(&[&a, &b])
}

/// `anti_entropy_interval: 0s` turns anti-entropy off: passes go on, no run
/// happens, and a row changed straight in the standby stays changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_off_never_runs() -> Result<()> {
    let env = TestEnv::new("repl_ae_off").await?;
    let db = env.name.clone();
    data::create(&env.primary, &db, "c", SIMPLE).await?;
    data::insert(
        &env.primary,
        &db,
        "c",
        SIMPLE,
        &(0..200).collect::<Vec<_>>(),
        1,
    )
    .await?;
    let (a, b) = start_pair(&env, "  anti_entropy_interval: 0s\n", None).await?;
    let ctl = env.drctl(&a, &b);
    caught_up(&ctl, now_ms()).await?;
    data::upsert(&env.standby, &db, "c", SIMPLE, &[10], 9).await?;
    let passes = |m: &str| sample(m, "milvus_dr_replication_passes_total", "").unwrap_or(0.0);
    let first = passes(&scrape(&a).await?);
    wait_until(LONG, "15 more passes", || async {
        (passes(&scrape(&a).await.ok()?) >= first + 15.0).then_some(())
    })
    .await?;
    let m = scrape(&a).await?;
    assert_eq!(
        sample(&m, "milvus_dr_anti_entropy_runs_total", ""),
        Some(0.0),
        "{m}"
    );
    assert!(
        !m.contains("milvus_dr_anti_entropy_last_run_timestamp_seconds{"),
        "{m}"
    );
    let p = data::read_all(&env.primary, &db, "c").await?;
    let s = data::read_all(&env.standby, &db, "c").await?;
    assert_eq!(data::diff(&p, &s).2, vec![Pk::Int(10)], "left as changed");
    no_errors(&[&a, &b])
}
