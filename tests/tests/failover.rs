//! The witness quorum and failover with real processes: three `dr-witness`
//! and two `dr-agent` processes on loopback with mutual TLS, real Milvus
//! servers, and TCP proxies that cut links.
//!
//! Tests in this binary run one at a time (they kill processes and measure
//! timings); each uses the fast profile unless it says otherwise.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dr_tests::client::{ClientSpec, NameClient};
use dr_tests::data::{self, Shape};
use dr_tests::deployment::{
    deploy, deploy_with, log_time, stopped_acting_after, Deployment, Extra,
};
use dr_tests::dns::Bind;
use dr_tests::witness::wait_leader_status;
use dr_tests::{wait_until, MilvusServer};
use dr_witness::decide::OperatorRequest;
use dr_witness::model::Outcome;
use tracing::info;

const FAST: &str = "{ profile: fast }";
/// The fast profile with a data-loss budget wide enough for tests that cut
/// the primary's replication stream and measure fencing, not the budget:
/// the witnesses still see the primary's Milvus writable, so the estimated
/// loss grows from the cut and would hold the failover after 10 s.
const FAST_WIDE_BUDGET: &str = "{ profile: fast, data_loss_budget_ms: 120000 }";

/// The profile the measuring tests run with: fast unless
/// `DR_FAILOVER_PROFILE=default` (slower: minutes).
fn measured_profile() -> (String, dr_witness::timing::Timing) {
    let name = std::env::var("DR_FAILOVER_PROFILE").unwrap_or_else(|_| "fast".into());
    let timing = if name == "default" {
        dr_witness::timing::Timing::default()
    } else {
        dr_witness::timing::Timing::fast()
    };
    (format!("{{ profile: {name} }}"), timing)
}
const SIMPLE: Shape = Shape::Simple { dim: 8 };
const LONG: Duration = Duration::from_secs(120);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_switchover_commits_and_all_witnesses_restart_with_the_epoch() -> Result<()> {
    let _g = SERIAL.lock().await;
    let mut d = deploy("fo_leader", FAST, None).await?;
    let first = wait_leader_status(&d.ctl, LONG, "a witness leader", |_| true).await?;
    let old = first.id;
    info!(leader = old, "killing the witness leader");
    d.w.procs[(old - 1) as usize].kill9();
    let second = wait_leader_status(&d.ctl, LONG, "a new witness leader", |s| s.id != old).await?;
    ensure!(second.cluster.epoch == 1 && second.cluster.primary == "dc-a");
    // The primary keeps acting through the change of leader.
    wait_until(LONG, "dc-a still the source", || async {
        let s = d.status("dc-a").await?;
        (s.role == "source" && s.failover.contains("witness lease")).then_some(())
    })
    .await?;
    // A new leader refuses a switchover until it has heard from the
    // standby itself ("no heartbeat from the standby agent").
    wait_leader_status(&d.ctl, LONG, "the new leader to hear from dc-b", |s| {
        s.id != old
            && s.agents
                .get("dc-b")
                .is_some_and(|a| a.heartbeat.milvus_healthy && a.heartbeat.epoch == 1)
    })
    .await?;

    // Decisions are still made: a planned switchover to dc-b.
    let started = Instant::now();
    let msg = d
        .ctl
        .witness_command(&OperatorRequest::Switchover {
            to: "dc-b".into(),
            by: String::new(),
        })
        .await?;
    info!(%msg, "switchover requested");
    let after = wait_leader_status(&d.ctl, LONG, "the switchover to commit", |s| {
        s.cluster.epoch == 2 && s.cluster.primary == "dc-b"
    })
    .await
    .with_context(|| d.logs())?;
    let rto = started.elapsed();
    let done = after
        .audit
        .iter()
        .find(|a| a.outcome == Some(Outcome::SwitchoverComplete { to: "dc-b".into() }))
        .context("the completion is audited")?;
    ensure!(
        done.evidence.contains("nothing lost"),
        "evidence: {}",
        done.evidence
    );
    ensure!(
        after.cluster.needs_resync.is_empty(),
        "a planned switchover demotes nobody"
    );
    wait_until(
        LONG,
        "dc-b the source at epoch 2 and dc-a its sink",
        || async {
            let b = d.status("dc-b").await?;
            let a = d.status("dc-a").await?;
            (b.role == "source" && b.epoch == 2 && a.role == "sink" && a.epoch == 2).then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;
    println!(
        "switchover committed {:.2}s after the request (RPO 0: {})",
        rto.as_secs_f64(),
        done.evidence
    );

    // Every witness restarts: the epoch and the primary survive.
    d.w.spawn((old - 1) as usize).await?;
    for i in 0..3 {
        d.w.procs[i].kill9();
    }
    for i in 0..3 {
        d.w.spawn(i).await?;
    }
    let back = wait_leader_status(
        &d.ctl,
        LONG,
        "a leader after restarting every witness",
        |_| true,
    )
    .await?;
    ensure!(
        back.cluster.epoch == 2 && back.cluster.primary == "dc-b",
        "after restart: epoch {} primary {}",
        back.cluster.epoch,
        back.cluster.primary
    );
    ensure!(back
        .audit
        .iter()
        .any(|a| a.outcome == Some(Outcome::SwitchoverComplete { to: "dc-b".into() })));
    // And dc-b goes on as primary, renewing its lease with the new leader.
    wait_until(
        LONG,
        "dc-b renewing with the restarted witnesses",
        || async {
            let b = d.status("dc-b").await?;
            (b.role == "source" && b.failover.contains("witness lease")).then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_witness_majority_nobody_is_promoted_and_the_primary_keeps_its_role_only_by_failsafe(
) -> Result<()> {
    let _g = SERIAL.lock().await;
    let (profile, timing) = measured_profile();
    // dc-a probes its Milvus with the shipped defaults (every 5 s, three
    // failures), which the failover profile shortens to its heartbeat.
    let monitoring = "monitoring: { health_interval: 5s, failure_threshold: 3 }";
    let mut d = deploy_with(
        "fo_quorum",
        &profile,
        None,
        Extra {
            a: monitoring,
            ..Default::default()
        },
    )
    .await?;
    d.w.procs[0].kill9();
    d.w.procs[1].kill9();
    // The primary cannot renew through a majority: it keeps acting only on
    // the standby's failsafe confirmations.
    wait_until(LONG, "dc-a acting by failsafe", || async {
        let s = d.status("dc-a").await?;
        (s.role == "source" && s.failover.contains("failsafe")).then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    // Its Milvus looks dead (refuses, as a killed process does) for longer
    // than confirmation + leases: still no promotion (one witness cannot
    // decide), and dc-a stops acting as soon as its own probes call its
    // Milvus dead: an agent never acts over a dead Milvus.
    let dead_us = dr_proto::now_ms() * 1000;
    d.health_a.block(true);
    wait_until(LONG, "dc-a to fence", || async {
        let s = d.status("dc-a").await?;
        (s.role == "fenced").then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    let fenced = stopped_acting_after(&d.a.log, dead_us).context("dc-a logged its fencing")?;
    let probing = dr_agent::health::Probing::new(
        Duration::from_secs(5),
        3,
        Some(Duration::from_millis(timing.heartbeat_ms)),
    );
    let detected = Duration::from_micros((fenced - dead_us).max(0) as u64);
    println!(
        "{profile}: quorum unreachable, Milvus dead: dc-a stopped acting {:.2}s later (detection bound {:.2}s)",
        detected.as_secs_f64(),
        probing.detection_bound().as_secs_f64()
    );
    // One loop tick (at most 200 ms) of slack past the prober's bound.
    ensure!(
        detected <= probing.detection_bound() + Duration::from_millis(250),
        "dc-a acted {detected:?} over a dead Milvus"
    );
    d.assert_no_failover_for(Duration::from_millis(
        timing.confirmation_ms + 3 * timing.lease_ms + 1_000,
    ))
    .await?;
    d.health_a.block(false);
    wait_until(LONG, "dc-a to act again by failsafe", || async {
        let s = d.status("dc-a").await?;
        (s.role == "source").then_some(())
    })
    .await?;
    // Without the standby's confirmation, it fences.
    d.b.stop()?;
    wait_until(LONG, "dc-a to fence without its peer", || async {
        let s = d.status("dc-a").await?;
        (s.role == "fenced").then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_the_witnesses_fences_before_the_standby_is_promoted() -> Result<()>
{
    let _g = SERIAL.lock().await;
    let d = deploy("fo_cut", FAST_WIDE_BUDGET, None).await?;
    // The routing health check: 200 on the lease holder only.
    ensure!(dr_primary(&d.a).await == Some(200), "dc-a holds the lease");
    ensure!(dr_primary(&d.b).await == Some(503), "dc-b is the standby");
    let cut = Instant::now();
    d.w.isolate_a(true);
    wait_source(&d, "dc-b", 2).await?;
    let promoted_after = cut.elapsed();
    let fenced = log_time(&d.a.log, &["fenced: no longer acting as primary"])
        .context("dc-a logged its fencing")?;
    let promoted = log_time(
        &d.b.log,
        &[
            "acting as primary: starting the replication source",
            "epoch=2",
        ],
    )
    .context("dc-b logged its promotion")?;
    println!(
        "cut at 0; dc-b promoted {:.2}s later; dc-a fenced {:.3}s before dc-b started acting",
        promoted_after.as_secs_f64(),
        (promoted - fenced) as f64 / 1e6
    );
    ensure!(
        fenced < promoted,
        "dc-a fenced at {fenced} µs, dc-b acted at {promoted} µs"
    );
    // Cut off and fenced, dc-a no longer answers 200; dc-b does.
    ensure!(dr_primary(&d.a).await == Some(503), "fenced dc-a");
    wait_until(LONG, "dc-b's /dr/primary to answer 200", || async {
        (dr_primary(&d.b).await == Some(200)).then_some(())
    })
    .await?;
    // dc-a learns the new epoch from its peer and follows it as the sink.
    wait_until(LONG, "dc-a the sink at epoch 2", || async {
        let s = d.status("dc-a").await?;
        (s.role == "sink" && s.epoch == 2).then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    let st = wait_leader_status(&d.ctl, LONG, "the failover audited", |s| {
        s.cluster.epoch == 2
    })
    .await?;
    ensure!(
        st.cluster.needs_resync.contains("dc-a"),
        "the old primary must be resynced before it may be chosen again"
    );
    d.w.isolate_a(false);
    Ok(())
}

/// Waits until `dc` acts as the source at `epoch`.
async fn wait_source(d: &Deployment, dc: &str, epoch: u64) -> Result<()> {
    wait_until(
        LONG,
        &format!("{dc} the source at epoch {epoch}"),
        || async {
            let s = d.status(dc).await?;
            (s.role == "source" && s.epoch == epoch).then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;
    Ok(())
}

/// `GET /dr/primary` on an agent's metrics listener: the status code.
async fn dr_primary(a: &dr_tests::Agent) -> Option<u16> {
    let url = format!("http://{}/dr/primary", a.metrics);
    let r = reqwest::get(&url).await.ok()?;
    Some(r.status().as_u16())
}

/// A promotion hook that never returns does not keep a primary acting
/// past its lease: dc-a, whose hook hangs, is cut off (silently) from the
/// witnesses and from its peer (so no failsafe confirmation can extend its
/// role), and must stop its source at the lease deadline, before dc-b acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_promotion_hook_does_not_keep_a_cut_off_primary_acting() -> Result<()> {
    let _g = SERIAL.lock().await;
    let marker = tempfile::tempdir()?;
    let started = marker.path().join("hook-started");
    let hook = format!(
        "hooks: {{ on_promote: \"touch {} && sleep 3600\" }}",
        started.display()
    );
    let d = deploy_with(
        "fo_hook",
        FAST_WIDE_BUDGET,
        None,
        Extra {
            a: &hook,
            ..Default::default()
        },
    )
    .await?;
    wait_until(LONG, "dc-a's promotion hook running", || async {
        started.exists().then_some(())
    })
    .await?;
    let cut_wall = dr_proto::now_ms();
    d.w.isolate_a(true);
    d.pb.silence(true);
    wait_source(&d, "dc-b", 2).await?;
    // Whichever stopped it first: the lease guard at the deadline, or the
    // runtime loop on its next tick (the hook no longer blocks it).
    let stopped =
        stopped_acting_after(&d.a.log, cut_wall * 1000).context("dc-a stopped its source")?;
    let promoted = log_time(
        &d.b.log,
        &[
            "acting as primary: starting the replication source",
            "epoch=2",
        ],
    )
    .context("dc-b logged its promotion")?;
    let line = std::fs::read_to_string(&d.a.log)?
        .lines()
        .find(|l| l.contains("lease deadline reached"))
        .map(str::to_string)
        .unwrap_or_default();
    println!(
        "hook hanging; cut at 0: dc-a's source stopped {:.3}s after the cut ({}), dc-b acted {:.3}s after the cut",
        (stopped / 1000 - cut_wall) as f64 / 1e3,
        line.split_whitespace()
            .find(|w| w.starts_with("late_ms="))
            .unwrap_or("late_ms=?"),
        (promoted / 1000 - cut_wall) as f64 / 1e3
    );
    ensure!(
        stopped < promoted,
        "dc-a stopped at {stopped} µs, dc-b acted at {promoted} µs"
    );
    // The lease is 2 s (fast profile), counted from a heartbeat sent
    // before the cut: the source may not run past cut + lease (plus one
    // heartbeat of slack for scheduling on a loaded machine).
    ensure!(
        stopped / 1000 <= cut_wall + 2_000 + 250,
        "dc-a's source stopped {} ms after the cut, past its 2 s lease",
        stopped / 1000 - cut_wall
    );
    d.pb.silence(false);
    d.w.isolate_a(false);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_shorter_than_the_confirmation_window_does_not_fail_over() -> Result<()> {
    let _g = SERIAL.lock().await;
    let d = deploy("fo_blip", FAST, None).await?;
    let cut = Instant::now();
    d.w.isolate_a(true);
    // The partition is real: the witnesses stop hearing from dc-a's agent.
    // (four heartbeats missed; the witnesses' status is read through
    // paths that stay open)
    wait_until(
        Duration::from_millis(2_500),
        "the witnesses to notice dc-a's agent gone silent",
        || async {
            d.ctl.witness_status().await.into_iter().find_map(|(_, r)| {
                let s = r.ok()?;
                let v = s.observation.get("dc-a")?;
                v.agent_silent_ms
                    .is_some_and(|ms| ms >= 1_000)
                    .then_some(())
            })
        },
    )
    .await
    .with_context(|| d.logs())?;
    d.assert_no_failover_for(Duration::from_millis(3_000).saturating_sub(cut.elapsed()))
        .await?;
    d.w.isolate_a(false);
    // Past the confirmation window and a lease: still epoch 1.
    d.assert_no_failover_for(Duration::from_millis(5_000 + 2_000))
        .await?;
    wait_until(LONG, "dc-a renewing from the witnesses again", || async {
        let s = d.status("dc-a").await?;
        (s.role == "source" && s.epoch == 1 && s.failover.contains("witness lease")).then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    Ok(())
}

/// Kills dc-a's Milvus (a server of this test's own) and measures the time
/// to the committed failover. `DR_FAILOVER_PROFILE=default` measures the
/// default profile (30 s confirmation window) instead of the fast one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_milvus_killed_fails_over_to_the_standby() -> Result<()> {
    let _g = SERIAL.lock().await;
    let profile = std::env::var("DR_FAILOVER_PROFILE").unwrap_or_else(|_| "fast".into());
    let failover = format!("{{ profile: {profile} }}");
    let dir = tempfile::tempdir()?;
    let mut own = MilvusServer::start_private(&dir.path().join("milvus-a"))?;
    // The service name, switched by RFC 2136 on a real BIND 9: each
    // datacenter has its own loopback address; each agent proves the
    // service through the name (its Milvus port behind that address).
    let bind = Bind::start(&dir.path().join("bind"), "").await?;
    let dns = bind.two_datacenters_yaml("svc");
    let d = deploy_with(
        "fo_kill",
        &failover,
        Some(&own),
        Extra {
            agents: &dns,
            ..Default::default()
        },
    )
    .await?;
    let ask = |v: &'static str| {
        let addr = bind.addr;
        move || async move {
            let ans = dr_tests::dns::answer(addr, "svc").await.ok()?;
            (ans == [v]).then_some(())
        }
    };
    wait_until(
        LONG,
        "the name to answer dc-a at epoch 1",
        ask("127.0.0.11"),
    )
    .await
    .with_context(|| d.logs())?;
    // A client that finds Milvus through the name writes continuously.
    let db = d.env.name.clone();
    data::create(&d.env.primary, &db, "w", SIMPLE).await?;
    let ports = [
        ("127.0.0.11".to_string(), own.grpc_port),
        (
            "127.0.0.12".to_string(),
            dr_tests::port_of(&d.env.endpoints[1].0),
        ),
    ];
    let client = NameClient::start(
        ClientSpec {
            dns: bind.addr,
            label: "svc".into(),
            ports: ports.into(),
            database: db.clone(),
            collection: "w".into(),
            shape: SIMPLE,
            rate: 20,
            resolve_every: Duration::ZERO,
        },
        1_000_000,
    );
    wait_until(LONG, "the client's writes to reach dc-a", || async {
        (client.acked_at("127.0.0.11") >= 20).then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    // Let the standby be fully caught up so the data-loss budget holds.
    wait_until(LONG, "the standby caught up", || async {
        let s = d.status("dc-a").await?;
        (s.replication?.lag_ms < 2_000).then_some(())
    })
    .await?;
    // Some of the client's writes have reached the standby: those must
    // survive everything below (the rest are the failover's data loss).
    let replicated = wait_until(LONG, "the client's writes on the standby", || async {
        let rows = data::read_all(&d.env.standby, &db, "w").await.ok()?;
        (rows.len() >= 10).then_some(rows)
    })
    .await
    .with_context(|| d.logs())?;
    let killed_wall = dr_proto::now_ms() as u64;
    let killed = Instant::now();
    own.kill();
    let st = wait_leader_status(
        &d.ctl,
        Duration::from_secs(300),
        "the failover to commit",
        |s| s.cluster.epoch == 2,
    )
    .await
    .with_context(|| d.logs())?;
    let observed = killed.elapsed();
    let entry = st
        .audit
        .iter()
        .find(|a| {
            matches!(&a.outcome, Some(Outcome::FailoverCommitted { to, forced: false }) if to == "dc-b")
        })
        .context("the failover is audited")?;
    let committed_after = entry.wall_ms.saturating_sub(killed_wall);
    println!(
        "profile {profile}: failover committed {:.2}s after the primary Milvus was killed (seen by the test after {:.2}s); evidence: {}",
        committed_after as f64 / 1000.0,
        observed.as_secs_f64(),
        entry.evidence
    );
    wait_source(&d, "dc-b", 2).await?;
    // Clients are moved: the name answers dc-b, switched by dc-b's agent
    // at epoch 2, and dc-b proved the service through it.
    wait_until(LONG, "the name to answer dc-b", ask("127.0.0.12"))
        .await
        .with_context(|| d.logs())?;
    let moved_after = dr_proto::now_ms() as u64 - killed_wall;
    // The proof through the name follows the authoritative answer.
    wait_until(
        LONG,
        "dc-b to verify the service through the name",
        || async {
            let b_log = std::fs::read_to_string(&d.b.log).ok()?;
            (b_log.contains("DNS: switched") && b_log.contains("service verified through the name"))
                .then_some(())
        },
    )
    .await
    .with_context(|| d.b.log_tail())?;
    // The switch and its proof are in the witnesses' audit.
    let st = wait_leader_status(&d.ctl, LONG, "the DNS switch audited", |s| {
        s.audit
            .iter()
            .any(|a| a.what == "dc-b at epoch 2: DNS switched")
    })
    .await
    .with_context(|| d.logs())?;
    let audited = st
        .audit
        .iter()
        .find(|a| a.what == "dc-b at epoch 2: DNS switched")
        .context("audit entry")?;
    ensure!(
        audited
            .evidence
            .contains("service verified through the name"),
        "{}",
        audited.evidence
    );
    println!(
        "profile {profile}: the name answered the new primary {:.2}s after the primary Milvus was killed; audit: {}",
        moved_after as f64 / 1000.0,
        audited.evidence
    );
    // Rows written before the kill are on the new primary.
    let n = data::read_all(&d.env.standby, &d.env.name, "c")
        .await?
        .len();
    ensure!(n == 200, "the new primary has {n} of 200 rows");
    // The client's writes succeed again, now on dc-b, through the name.
    wait_until(LONG, "the client's writes to succeed on dc-b", || async {
        (client.acked_at("127.0.0.12") >= 20).then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    let st = wait_leader_status(&d.ctl, LONG, "the witness status", |_| true).await?;
    let decisions = st
        .audit
        .iter()
        .filter(|a| matches!(a.outcome, Some(Outcome::FailoverCommitted { .. })))
        .count();
    let switches = st
        .audit
        .iter()
        .filter(|a| a.what.contains("at epoch 2: DNS"))
        .count();
    ensure!(
        decisions == 1 && switches == 1,
        "one failover decision and one DNS switch for it: {:?}",
        st.audit
    );
    info!(
        failed_writes = client.failed(),
        "the client's writes failed only while the name pointed at the dead Milvus"
    );

    info!("phase: dc-a's Milvus comes back on its data; dc-a resynchronises as the standby");
    drop(own);
    let own = MilvusServer::start_private(&dir.path().join("milvus-a"))?;
    ensure!(
        own.grpc_port == ports_a(&client),
        "dc-a's Milvus is back on its own port"
    );
    wait_until(
        Duration::from_secs(300),
        "dc-a the standby at epoch 2, caught up",
        || async {
            let s = d.status("dc-a").await?;
            let lag = d.status("dc-b").await?.replication?.lag_ms;
            (s.role == "sink" && s.epoch == 2 && s.milvus_healthy && (0..2_000).contains(&lag))
                .then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;
    // Writers stop before a planned switchover (the old primary's Milvus
    // would still take writes after the drain: see "Known limits").
    let acked = client.stop().await;
    for coll in ["c", "w"] {
        wait_until(
            LONG,
            &format!("{coll} identical after the resync"),
            || async {
                let a = data::read_all(&d.env.primary, &db, coll).await.ok()?;
                let b = data::read_all(&d.env.standby, &db, coll).await.ok()?;
                (a == b).then_some(())
            },
        )
        .await
        .with_context(|| d.logs())?;
    }
    d.ctl
        .witness_command(&OperatorRequest::MarkResynced {
            dc: "dc-a".into(),
            by: String::new(),
            discard_divergent: false,
        })
        .await?;
    switch_to(&d, "dc-a", 3).await?;
    wait_until(LONG, "the name to answer dc-a again", ask("127.0.0.11"))
        .await
        .with_context(|| d.logs())?;
    // Both identical, count(*) = distinct keys (read_all checks), and every
    // write the new primary acknowledged is on both.
    let mut w = None;
    for coll in ["c", "w"] {
        let rows = wait_until(
            LONG,
            &format!("{coll} identical after failing back"),
            || async {
                let a = data::read_all(&d.env.primary, &db, coll).await.ok()?;
                let b = data::read_all(&d.env.standby, &db, coll).await.ok()?;
                (a == b).then_some(a)
            },
        )
        .await
        .with_context(|| d.logs())?;
        if coll == "w" {
            w = Some(rows);
        }
    }
    let w = w.context("w read")?;
    let on_b: Vec<i64> = acked
        .iter()
        .filter(|(_, at)| at == "127.0.0.12")
        .map(|(k, _)| *k)
        .collect();
    let missing: Vec<&i64> = on_b
        .iter()
        .filter(|k| !w.contains_key(&dr_agent::milvus::Pk::Int(**k)))
        .collect();
    ensure!(
        missing.is_empty(),
        "writes acknowledged by the new primary are on both clusters: missing {missing:?}"
    );
    let lost: Vec<_> = replicated.keys().filter(|k| !w.contains_key(*k)).collect();
    ensure!(
        lost.is_empty(),
        "writes replicated before the kill survive failover and failback: lost {lost:?}"
    );
    info!(
        acked = acked.len(),
        acked_by_dc_b = on_b.len(),
        replicated_before_kill = replicated.len(),
        rows = w.len(),
        "failover, resync and failback exact for a client that follows the name"
    );
    drop(own);
    Ok(())
}

fn ports_a(c: &NameClient) -> u16 {
    c.spec.ports["127.0.0.11"]
}

const STR_KEYS: Shape = Shape::AllTypes {
    pk: dr_agent::milvus::PkType::Str,
    binary: false,
};

/// The Milvus of a datacenter.
fn milvus_of<'a>(d: &'a Deployment, dc: &str) -> &'a dr_agent::milvus::Milvus {
    if dc == "dc-a" {
        &d.env.primary
    } else {
        &d.env.standby
    }
}

/// Where the writes of an epoch go: straight into the primary's Milvus, or
/// through the primary's front door.
#[derive(Clone, Copy, PartialEq)]
enum Writes {
    Direct,
    FrontDoor,
}

/// A client of `dc`'s front door.
fn door_of(d: &Deployment, dc: &str) -> Result<dr_agent::milvus::Milvus> {
    let agent = if dc == "dc-a" { &d.a } else { &d.b };
    let addr = agent.frontdoor.context("the agent has no front door")?;
    Ok(dr_agent::milvus::Milvus::connect(
        dr_agent::milvus::Connection {
            endpoint: format!("http://{addr}"),
            health_url: None,
            authorization: None,
            request_timeout: Duration::from_secs(60),
        },
    )?)
}

/// Inserts new keys, upserts and deletes existing ones, in both
/// collections of the exactness test, on the Milvus of `dc` (directly or
/// through its front door). Epoch `e` owns keys `1000 e ..`: rows 0..20
/// of that range are inserted, the previous epoch's first 10 keys (and 5
/// initial ones) upserted, its next 5 deleted, and one initial row
/// deleted.
async fn write_epoch(d: &Deployment, dc: &str, e: i64, writes: Writes) -> Result<()> {
    let door;
    let m = match writes {
        Writes::Direct => milvus_of(d, dc),
        Writes::FrontDoor => {
            door = door_of(d, dc)?;
            &door
        }
    };
    let db = &d.env.name;
    let new: Vec<i64> = (1000 * e..1000 * e + 20).collect();
    let prev = 1000 * (e - 1);
    let up: Vec<i64> = (prev..prev + 10).chain(30..35).collect();
    let del: Vec<i64> = (prev + 10..prev + 15).chain([20 + e]).collect();
    for (coll, shape) in [("c", SIMPLE), ("s", STR_KEYS)] {
        data::insert(m, db, coll, shape, &new, 1).await?;
        data::upsert(m, db, coll, shape, &up, 10 + e as u32).await?;
        data::delete(m, db, coll, shape, &del).await?;
    }
    info!(
        dc,
        epoch = e,
        "wrote 20 inserts, 15 upserts and 6 deletes per collection"
    );
    Ok(())
}

/// The front door of `dc`, not the primary at this epoch, refuses an
/// insert (the row must then be on neither cluster: the row counts of
/// [`assert_identical`] would show it).
async fn door_refuses(d: &Deployment, dc: &str, e: i64) -> Result<()> {
    let m = door_of(d, dc)?;
    let r = data::insert(&m, &d.env.name, "c", SIMPLE, &[900_000 + e], 1).await;
    let err = match r {
        Ok(()) => anyhow::bail!("{dc}'s front door accepted a write at epoch {e}, as standby"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("is not the primary") || err.contains("PermissionDenied"),
        "{dc}'s front door refused a write for another reason: {err}"
    );
    Ok(())
}

/// Waits until both clusters hold the same rows in both collections, then
/// checks that `count(*)` equals the number of distinct keys on each
/// (`read_all` fails on duplicates). Returns (rows of c, rows of s).
async fn assert_identical(d: &Deployment, step: &str, writes: Writes) -> Result<(usize, usize)> {
    let db = d.env.name.clone();
    let mut sizes = (0, 0);
    for (i, coll) in ["c", "s"].into_iter().enumerate() {
        let why = std::sync::Mutex::new(String::new());
        let (a, b) = wait_until(
            LONG,
            &format!("{step}: {coll} identical on both"),
            || async {
                let read = |m, dc| {
                    let (why, db) = (&why, &db);
                    async move {
                        data::read_all(m, db, coll)
                            .await
                            .map_err(|e| *why.lock().unwrap() = format!("{dc}: {e:#}"))
                            .ok()
                    }
                };
                let a = read(&d.env.primary, "dc-a").await?;
                let b = read(&d.env.standby, "dc-b").await?;
                if let Some(d) = data::describe_diff(&a, &b) {
                    *why.lock().unwrap() = format!("dc-b: {d}");
                }
                (a == b).then_some((a, b))
            },
        )
        .await
        .with_context(|| format!("last difference: {}", why.lock().unwrap()))
        .with_context(|| d.logs())?;
        // Settle: one more pass (scan capture), or an empty change log
        // (front door), must not change anything (no late inserts).
        let s = d.status("dc-a").await.and_then(|s| s.replication);
        let t = s.map_or(0, |r| r.last_pass_snapshot_ms);
        wait_until(
            LONG,
            "one more pass, or every logged write applied",
            || async {
                let p = [d.status("dc-a").await?, d.status("dc-b").await?]
                    .into_iter()
                    .find(|s| s.role == "source")?;
                match writes {
                    Writes::Direct => p.replication?.applied_snapshot_ms > t.max(1),
                    Writes::FrontDoor => p.frontdoor?.log_entries == 0,
                }
                .then_some(())
            },
        )
        .await?;
        for (dc, m, before) in [("dc-a", &d.env.primary, &a), ("dc-b", &d.env.standby, &b)] {
            let now = data::read_all(m, &db, coll)
                .await
                .with_context(|| format!("{step}: {dc} {coll}"))?;
            ensure!(
                &now == before,
                "{step}: {dc} {coll} changed after converging"
            );
        }
        if i == 0 {
            sizes.0 = a.len();
        } else {
            sizes.1 = a.len();
        }
    }
    info!(
        step,
        rows_c = sizes.0,
        rows_s = sizes.1,
        "both clusters identical; count(*) = distinct keys on both"
    );
    Ok(sizes)
}

/// A planned switchover to `to`, followed until `to` is the source at the
/// new epoch and the other its sink.
async fn switch_to(d: &Deployment, to: &str, epoch: u64) -> Result<()> {
    let other = if to == "dc-a" { "dc-b" } else { "dc-a" };
    wait_leader_status(&d.ctl, LONG, "the leader to hear from the standby", |s| {
        s.cluster.epoch == epoch - 1
            && s.agents
                .get(to)
                .is_some_and(|a| a.heartbeat.milvus_healthy && a.heartbeat.epoch == epoch - 1)
    })
    .await
    .with_context(|| d.logs())?;
    d.ctl
        .witness_command(&OperatorRequest::Switchover {
            to: to.into(),
            by: String::new(),
        })
        .await?;
    dr_agent::client::await_switchover(&d.ctl, epoch - 1, to).await?;
    wait_until(
        LONG,
        &format!("{to} the source at epoch {epoch}"),
        || async {
            let p = d.status(to).await?;
            let s = d.status(other).await?;
            (p.role == "source" && p.epoch == epoch && s.role == "sink" && s.epoch == epoch)
                .then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;
    Ok(())
}

/// Every role change is exact: A→B→A→B switchovers with inserts, upserts
/// and deletes on each primary, then a failover to dc-a's standby, a
/// resync, and a switchover back. After each step both clusters hold the
/// same rows and `count(*)` equals the number of distinct keys on both, for
/// Int64 and VarChar keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_are_exact_across_switchovers_failover_and_failback() -> Result<()> {
    role_changes_are_exact("fo_exact", Writes::Direct).await
}

/// The same sequence of epochs with every write made through the primary's
/// front door, replicated from the change log (the scan runs only at each
/// start), and the other datacenter's front door refusing a write at every
/// epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_are_exact_through_the_front_doors() -> Result<()> {
    role_changes_are_exact("fo_exact_door", Writes::FrontDoor).await
}

async fn role_changes_are_exact(name: &str, writes: Writes) -> Result<()> {
    let _g = SERIAL.lock().await;
    let agents = match writes {
        Writes::Direct => "",
        Writes::FrontDoor => "frontdoor: { listen: \"127.0.0.1:0\", scan_interval: 10m }",
    };
    let d = deploy_with(
        name,
        FAST,
        None,
        Extra {
            agents,
            ..Default::default()
        },
    )
    .await?;
    let other = |dc: &str| if dc == "dc-a" { "dc-b" } else { "dc-a" };
    let db = d.env.name.clone();
    // The second collection is created after the agents started: through
    // the front door when there is one (its DDL and rows are logged).
    let door;
    let first = match writes {
        Writes::Direct => &d.env.primary,
        Writes::FrontDoor => {
            door = door_of(&d, "dc-a")?;
            &door
        }
    };
    data::create(first, &db, "s", STR_KEYS).await?;
    data::insert(first, &db, "s", STR_KEYS, &(0..200).collect::<Vec<_>>(), 1).await?;
    write_epoch(&d, "dc-a", 1, writes).await?;
    if writes == Writes::FrontDoor {
        door_refuses(&d, "dc-b", 1).await?;
    }
    assert_identical(&d, "epoch 1, dc-a primary", writes).await?;

    info!("phase: A -> B -> A -> B, writes on each primary");
    let mut epoch = 1;
    for to in ["dc-b", "dc-a", "dc-b", "dc-a"] {
        epoch += 1;
        switch_to(&d, to, epoch).await?;
        write_epoch(&d, to, epoch as i64, writes).await?;
        if writes == Writes::FrontDoor {
            door_refuses(&d, other(to), epoch as i64).await?;
        }
        assert_identical(&d, &format!("epoch {epoch}, {to} primary"), writes).await?;
    }

    info!("phase: failover from dc-a (its Milvus unreachable to everyone) to dc-b");
    d.health_a.block(true);
    epoch += 1;
    wait_leader_status(&d.ctl, LONG, "the failover to dc-b", |s| {
        s.cluster.epoch == epoch && s.cluster.primary == "dc-b"
    })
    .await
    .with_context(|| d.logs())?;
    wait_until(LONG, "dc-b the source", || async {
        let b = d.status("dc-b").await?;
        (b.role == "source" && b.epoch == epoch).then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    write_epoch(&d, "dc-b", epoch as i64, writes).await?;
    if writes == Writes::FrontDoor {
        door_refuses(&d, "dc-a", epoch as i64).await?;
    }
    d.health_a.block(false);
    assert_identical(
        &d,
        &format!("epoch {epoch} after a failover, dc-b primary"),
        writes,
    )
    .await?;

    info!("phase: dc-a resynchronised, then a switchover back to it");
    d.ctl
        .witness_command(&OperatorRequest::MarkResynced {
            dc: "dc-a".into(),
            by: String::new(),
            discard_divergent: false,
        })
        .await?;
    wait_leader_status(&d.ctl, LONG, "dc-a resynced", |s| {
        s.cluster.needs_resync.is_empty()
    })
    .await?;
    epoch += 1;
    switch_to(&d, "dc-a", epoch).await?;
    write_epoch(&d, "dc-a", epoch as i64, writes).await?;
    if writes == Writes::FrontDoor {
        door_refuses(&d, "dc-b", epoch as i64).await?;
    }
    let (c, s) = assert_identical(
        &d,
        &format!("epoch {epoch} after the failback, dc-a primary"),
        writes,
    )
    .await?;
    // 200 initial rows, 20 new keys per epoch, 6 deletes per epoch of
    // keys that existed (the first epoch's deletes hit initial rows).
    let expected = 200 + 14 * epoch as usize;
    ensure!(
        c == expected && s == expected,
        "rows: c {c}, s {s}, expected {expected}"
    );
    println!("after {epoch} epochs: {c} rows in c and {s} in s on both clusters, count(*) = distinct keys");
    Ok(())
}

/// After two witnesses were cut off silently (packets dropped, connections
/// left open) for 30 s, every witness hears from both datacenters again
/// within a bound derived from the profile: a dead connection is dropped
/// by its HTTP/2 keep-alive within half a lease, a new one connects within
/// half a lease, and the next heartbeat goes through. Bound: one lease and
/// four heartbeats (3 s in the fast profile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_silent_partition_heals_every_witness_hears_both_datacenters_within_a_lease(
) -> Result<()> {
    let _g = SERIAL.lock().await;
    let (profile, timing) = measured_profile();
    let d = deploy("fo_heal", &profile, None).await?;
    let bound = Duration::from_millis(timing.lease_ms + 4 * timing.heartbeat_ms);
    let healthy_everywhere = |all: &[(u64, anyhow::Result<dr_witness::api::WitnessStatus>)]| {
        all.len() == 3
            && all.iter().all(|(_, r)| {
                r.as_ref().is_ok_and(|s| {
                    ["dc-a", "dc-b"]
                        .iter()
                        .all(|dc| s.observation.get(*dc).is_some_and(|v| v.healthy))
                })
            })
    };
    wait_until(
        LONG,
        "every witness sees both datacenters healthy",
        || async {
            let all = d.ctl.witness_status().await;
            healthy_everywhere(&all).then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;

    let mut via_a = d.ctl.clone();
    via_a.witnesses =
        d.w.for_a
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, format!("https://{}", p.addr)))
            .collect();
    info!("phase: witnesses 2 and 3 silently cut off from everyone but dc-a's agent for 30 s");
    d.w.front[1].silence(true);
    d.w.front[2].silence(true);
    // The partition is real: witness 2 stops hearing from dc-b's agent.
    wait_until(LONG, "witness 2 to miss dc-b's agent", || async {
        // Witness 2 is unreachable to drctl too: read it through dc-a's path.
        let st = via_a
            .witness_status()
            .await
            .into_iter()
            .find(|(id, _)| *id == 2)?
            .1
            .ok()?;
        st.observation
            .get("dc-b")
            .is_some_and(|v| !v.healthy && v.agent_silent_ms.is_some_and(|ms| ms > timing.lease_ms))
            .then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    let cut = Instant::now();
    while cut.elapsed() < Duration::from_secs(30) {
        // Still epoch 1 everywhere we can see: a partition of witnesses
        // alone moves no primary.
        if let Some(s) = d.status("dc-a").await {
            ensure!(s.epoch == 1, "dc-a at epoch {}", s.epoch);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    info!("phase: heal");
    d.w.front[1].silence(false);
    d.w.front[2].silence(false);
    let healed = Instant::now();
    wait_until(
        LONG,
        "every witness to see both datacenters healthy again",
        || async {
            let all = d.ctl.witness_status().await;
            healthy_everywhere(&all).then_some(())
        },
    )
    .await
    .with_context(|| d.logs())?;
    let took = healed.elapsed();
    println!(
        "{profile}: after a 30 s silent partition of two witnesses, every witness saw both datacenters healthy {:.2}s after the heal (bound {:.2}s)",
        took.as_secs_f64(),
        bound.as_secs_f64()
    );
    ensure!(
        took <= bound,
        "recovery took {took:?}, over the bound {bound:?}\n{}",
        d.logs()
    );
    Ok(())
}

/// `drctl drill`, as an operator runs it, on a deployment whose agents
/// switch the service name on a real BIND 9: refused while the standby is
/// down; a failover drill measures every step from the outage start to the
/// service verified through the name, with RPO from marker rows, kept and
/// noted in the audit; after the resync, a switchover drill back loses
/// nothing. Both clusters are identical after each drill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_measure_every_step_and_leave_both_clusters_identical() -> Result<()> {
    use dr_agent::drill::run::{Kind, Report};
    use dr_agent::drill::{MARKERS_COLLECTION, MARKERS_DB};
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir()?;
    let bind = Bind::start(&dir.path().join("bind"), "").await?;
    let dns = bind.two_datacenters_yaml("svc");
    let mut d = deploy_with(
        "fo_drill",
        FAST,
        None,
        Extra {
            agents: &dns,
            ..Default::default()
        },
    )
    .await?;
    let answers = |v: &'static str| {
        let addr = bind.addr;
        move || async move {
            let ans = dr_tests::dns::answer(addr, "svc").await.ok()?;
            (ans == [v]).then_some(())
        }
    };
    wait_until(LONG, "the name to answer dc-a", answers("127.0.0.11"))
        .await
        .with_context(|| d.logs())?;
    let drill = |d: &Deployment, args: &[&str]| -> Result<(Option<i32>, String, String)> {
        let out = d.drctl(args)?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };

    info!("phase: refused while the standby's agent is down");
    d.b.stop()?;
    wait_leader_status(&d.ctl, LONG, "the leader to see dc-b down", |s| {
        s.observation.get("dc-b").is_some_and(|v| !v.healthy)
    })
    .await?;
    let (code, _, err) = drill(&d, &["drill", "failover", "--json"])?;
    ensure!(code == Some(3), "refused with exit 3, got {code:?}: {err}");
    ensure!(
        err.contains("standby dc-b") && err.contains("--force"),
        "the refusal says why and how to override: {err}"
    );
    let (_, listed, _) = drill(&d, &["drill", "list", "--json"])?;
    ensure!(
        serde_json::from_str::<Vec<Report>>(&listed)?.is_empty(),
        "a refused drill keeps no report: {listed}"
    );
    d.b.restart().await?;
    wait_leader_status(&d.ctl, LONG, "dc-b healthy and caught up", |s| {
        s.observation.get("dc-b").is_some_and(|v| v.healthy)
            && s.agents
                .get("dc-b")
                .is_some_and(|a| a.heartbeat.lag_ms.is_some_and(|l| l < 2_000))
    })
    .await
    .with_context(|| d.logs())?;

    info!("phase: failover drill");
    let (code, out, err) = drill(
        &d,
        &[
            "drill",
            "failover",
            "--json",
            "--rto-target",
            "60s",
            "--rpo-target",
            "10s",
        ],
    )?;
    let r: Report =
        serde_json::from_str(&out).with_context(|| format!("{out}\n{err}\n{}", d.logs()))?;
    info!(report = %out, "failover drill");
    ensure!(
        code == Some(0) && r.passed,
        "the drill passed: {:?}\n{}",
        r.problems,
        d.logs()
    );
    ensure!(
        r.kind == Kind::Failover && r.from == "dc-a" && r.to == "dc-b" && r.to_epoch == Some(2)
    );
    let at = |name: &str| -> Result<u64> {
        r.steps
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.wall_ms)
            .with_context(|| format!("step {name} measured: {:?}", r.steps))
    };
    // The steps happen in order; the old primary stops acting before the
    // new one starts (same clock: one machine).
    let order = [
        "outage start",
        "first unhealthy observation",
        "majority confirmed",
        "epoch committed",
        "new primary acting",
        "DNS changed",
        "all authoritative servers answering",
        "service verified through the name",
    ];
    for w in order.windows(2) {
        ensure!(
            at(w[0])? <= at(w[1])?,
            "{} before {}: {:?}",
            w[0],
            w[1],
            r.steps
        );
    }
    ensure!(
        at("old primary fenced")? <= at("new primary acting")?,
        "fenced before the new primary acted: {:?}",
        r.steps
    );
    ensure!(
        r.rto_step == "service verified through the name"
            && r.rto_ms == Some(at("service verified through the name")? - at("outage start")?),
        "RTO runs from the outage to the service proven through the name: {r:?}"
    );
    let (acked, present) = (
        r.markers.newest_acked.context("markers acknowledged")?,
        r.markers
            .newest_present
            .context("markers on the new primary")?,
    );
    ensure!(
        r.markers.written >= 10 && present.0 <= acked.0,
        "{:?}",
        r.markers
    );
    ensure!(
        r.rpo_ms == Some(acked.1 - present.1),
        "RPO from the markers: {r:?}"
    );
    ensure!(
        acked.1 <= at("outage start")?,
        "no marker acknowledged after the outage began"
    );
    wait_until(LONG, "the name to answer dc-b", answers("127.0.0.12"))
        .await
        .with_context(|| d.logs())?;
    // Noted in the audit around the failover itself.
    let st = wait_leader_status(&d.ctl, LONG, "the drill's result in the audit", |s| {
        s.audit.iter().any(|a| {
            a.what
                .starts_with(&format!("drill {}: failover dc-a -> dc-b: PASS", r.id))
        })
    })
    .await?;
    let pos = |p: &dyn Fn(&dr_witness::model::AuditEntry) -> bool| st.audit.iter().position(p);
    let begins = pos(&|a| a.what == format!("drill {}: failover of dc-a begins", r.id));
    let failover =
        pos(&|a| matches!(&a.outcome, Some(Outcome::FailoverCommitted { to, .. }) if to == "dc-b"));
    let result = pos(&|a| {
        a.what.starts_with(&format!("drill {}: failover", r.id)) && a.what.ends_with("PASS")
    });
    ensure!(
        begins.is_some() && begins < failover && failover < result && r.in_audit,
        "audit order: {:?}",
        st.audit
    );
    // Kept: listed and shown as run.
    let (_, listed, _) = drill(&d, &["drill", "list", "--json"])?;
    ensure!(serde_json::from_str::<Vec<Report>>(&listed)? == vec![r.clone()]);
    let (code, shown, _) = drill(&d, &["drill", "show", &r.id, "--json"])?;
    ensure!(code == Some(0) && serde_json::from_str::<Report>(&shown)? == r);
    let (_, text, _) = drill(&d, &["drill", "show", &r.id])?;
    ensure!(
        text.contains("RESULT: PASS") && text.contains("service verified through the name"),
        "{text}"
    );

    info!("phase: both clusters identical after the drill, then resynchronised");
    let same = |step: &'static str| {
        let d = &d;
        async move {
            for (db, coll) in [(d.env.name.as_str(), "c"), (MARKERS_DB, MARKERS_COLLECTION)] {
                wait_until(LONG, &format!("{step}: {db}.{coll} identical"), || async {
                    let a = data::read_all(&d.env.primary, db, coll).await.ok()?;
                    let b = data::read_all(&d.env.standby, db, coll).await.ok()?;
                    (a == b && !a.is_empty()).then_some(())
                })
                .await
                .with_context(|| d.logs())?;
            }
            anyhow::Ok(())
        }
    };
    same("after the failover drill").await?;
    d.ctl
        .witness_command(&OperatorRequest::MarkResynced {
            dc: "dc-a".into(),
            by: String::new(),
            discard_divergent: false,
        })
        .await?;
    wait_leader_status(&d.ctl, LONG, "dc-a ready as the standby", |s| {
        s.cluster.needs_resync.is_empty()
            && s.agents.get("dc-a").is_some_and(|a| {
                a.heartbeat.epoch == 2 && a.heartbeat.lag_ms.is_some_and(|l| l < 2_000)
            })
    })
    .await
    .with_context(|| d.logs())?;

    info!("phase: switchover drill back to dc-a");
    let (code, out, err) = drill(
        &d,
        &["drill", "switchover", "--json", "--rto-target", "60s"],
    )?;
    let s: Report =
        serde_json::from_str(&out).with_context(|| format!("{out}\n{err}\n{}", d.logs()))?;
    info!(report = %out, "switchover drill");
    ensure!(
        code == Some(0) && s.passed,
        "{:?}\n{}",
        s.problems,
        d.logs()
    );
    ensure!(s.kind == Kind::Switchover && s.to == "dc-a" && s.to_epoch == Some(3));
    ensure!(
        s.rpo_ms == Some(0) && s.markers.lost == 0 && s.markers.written >= 10,
        "a switchover loses nothing: {:?}",
        s.markers
    );
    wait_until(LONG, "the name to answer dc-a again", answers("127.0.0.11"))
        .await
        .with_context(|| d.logs())?;
    same("after the switchover drill").await?;
    // Other tests share these Milvus servers.
    for m in [&d.env.primary, &d.env.standby] {
        let _ = m.drop_collection(MARKERS_DB, MARKERS_COLLECTION).await;
    }
    Ok(())
}

/// Each row of a SIMPLE collection as `id|vector bytes (hex, little
/// endian f32)|tag|n`, as the test data writes it.
/// What the witnesses recorded of dc-a's kept divergent writes, once
/// they have.
async fn kept_by_dc_a(d: &Deployment) -> Result<dr_witness::model::Divergent> {
    let st = wait_leader_status(&d.ctl, LONG, "dc-a's divergent writes recorded", |s| {
        s.cluster.divergent.contains_key("dc-a")
    })
    .await
    .with_context(|| d.logs())?;
    Ok(st.cluster.divergent["dc-a"].clone())
}

type Rows = std::collections::BTreeMap<dr_agent::milvus::Pk, u64>;

/// Both clusters' rows of collection `c`, once identical.
async fn c_identical(d: &Deployment) -> Result<(Rows, Rows)> {
    let db = &d.env.name;
    wait_until(LONG, "c identical on both", || async {
        let a = data::read_all(&d.env.primary, db, "c").await.ok()?;
        let b = data::read_all(&d.env.standby, db, "c").await.ok()?;
        (a == b).then_some((a, b))
    })
    .await
    .with_context(|| d.logs())
}

fn simple_lines(ids: &[i64], version: u32) -> Vec<String> {
    use milvus::proto::schema::{
        field_data::Field, scalar_field::Data as S, vector_field::Data as V,
    };
    let cols = data::rows(SIMPLE, ids, version);
    let by = |name: &str| cols.iter().find(|f| f.field_name == name).cloned();
    let (Some(v), Some(tag), Some(n)) = (by("v"), by("tag"), by("n")) else {
        panic!("SIMPLE rows have v, tag and n")
    };
    let floats = match v.field {
        Some(Field::Vectors(vf)) => match vf.data {
            Some(V::FloatVector(a)) => a.data,
            _ => panic!("v is a float vector"),
        },
        _ => panic!("v is a vector"),
    };
    let dim = floats.len() / ids.len();
    let tags = match tag.field {
        Some(Field::Scalars(s)) => match s.data {
            Some(S::StringData(a)) => a.data,
            _ => panic!("tag is a string"),
        },
        _ => panic!("tag is a scalar"),
    };
    let ns = match n.field {
        Some(Field::Scalars(s)) => match s.data {
            Some(S::LongData(a)) => a.data,
            _ => panic!("n is an int64"),
        },
        _ => panic!("n is a scalar"),
    };
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let bytes: Vec<u8> = floats[i * dim..(i + 1) * dim]
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect();
            format!("{id}|{}|{}|{}", hex::encode(bytes), tags[i], ns[i])
        })
        .collect()
}

/// Writes a primary accepted after it was cut off (its agent fenced, the
/// standby promoted) are kept before the resync removes them: when it
/// comes back, its agent writes every row that differs from what it had
/// replicated to S3 as Parquet with a manifest, reports it to the
/// witnesses, and only then lets the new primary's stream in. The export
/// holds exactly those rows, byte for byte (read by pyarrow); afterwards
/// both clusters are identical and the rows are gone from the old primary;
/// `mark-resynced` is refused before the export and accepted after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_cut_off_primary_accepted_are_kept_before_the_resync_removes_them() -> Result<()> {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir()?;
    let s3 = dr_tests::s3::S3Server::start(dir.path()).await?;
    let agents = format!("backup:\n  s3: {}\n", s3.s3_yaml(dir.path(), "dr/")?);
    let d = deploy_with(
        "fo_divergent",
        FAST_WIDE_BUDGET,
        None,
        Extra {
            agents: &agents,
            ..Default::default()
        },
    )
    .await?;
    let db = d.env.name.clone();

    info!("cut dc-a off: from the witnesses (silently) and from dc-b's agent, both ways");
    d.w.isolate_a(true);
    d.pa.block(true);
    d.pb.block(true);
    wait_source(&d, "dc-b", 2).await?;
    wait_until(LONG, "dc-a fenced", || async {
        let s = d.status("dc-a").await?;
        (s.role != "source").then_some(())
    })
    .await
    .with_context(|| d.logs())?;

    info!("writes its clients still make to dc-a's Milvus: 10 new keys, 3 changed, 3 deleted");
    let extra: Vec<i64> = (5000..5010).collect();
    let changed: Vec<i64> = (0..3).collect();
    data::insert(&d.env.primary, &db, "c", SIMPLE, &extra, 5).await?;
    data::upsert(&d.env.primary, &db, "c", SIMPLE, &changed, 7).await?;
    data::delete(&d.env.primary, &db, "c", SIMPLE, &[10, 11, 12]).await?;
    // And the new primary's own writes.
    data::insert(
        &d.env.standby,
        &db,
        "c",
        SIMPLE,
        &(6000..6005).collect::<Vec<_>>(),
        1,
    )
    .await?;

    let refused = d
        .ctl
        .witness_command(&OperatorRequest::MarkResynced {
            dc: "dc-a".into(),
            by: String::new(),
            discard_divergent: false,
        })
        .await
        .expect_err("mark-resynced before dc-a kept its divergent writes");
    ensure!(
        format!("{refused:#}").contains("--discard-divergent"),
        "{refused:#}"
    );

    info!("heal: dc-a comes back as the standby");
    d.w.isolate_a(false);
    d.pa.block(false);
    d.pb.block(false);
    let kept = kept_by_dc_a(&d).await?;
    ensure!(
        kept.primary_epoch == 1 && kept.rows == 13 && kept.deleted_keys == 3,
        "{kept:?}"
    );
    ensure!(
        kept.location.starts_with("s3://") && kept.location.contains("divergent/dc-a-epoch1"),
        "{kept:?}"
    );

    info!("the export, byte for byte, by pyarrow");
    let manifest_path = s3.object_path(&format!(
        "dr/{}",
        dr_agent::replication::divergent::manifest_key("dc-a-epoch1")
    ));
    let manifest: dr_agent::replication::divergent::Manifest =
        serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
    ensure!(
        manifest.total_rows == 13 && manifest.demoted_at_epoch == 2,
        "{manifest:?}"
    );
    let c = manifest
        .collections
        .iter()
        .find(|c| c.collection.name == "c")
        .context("collection c in the manifest")?;
    ensure!(
        (c.extra_rows, c.changed_rows, c.deleted_count) == (10, 3, 3),
        "{c:?}"
    );
    ensure!(
        c.deleted_keys
            == vec![
                serde_json::json!(10),
                serde_json::json!(11),
                serde_json::json!(12)
            ],
        "{:?}",
        c.deleted_keys
    );
    let script = r#"
import sys, json, pathlib, struct, pyarrow.parquet as pq
m = pathlib.Path(sys.argv[1])
man = json.loads(m.read_text())
for c in man["collections"]:
    for o in c["collection"]["objects"]:
        t = pq.read_table(m.parent / o["key"])
        for i, v, tag, n in zip(*(t.column(x).to_pylist() for x in ("id", "v", "tag", "n"))):
            print(f"{i}|{struct.pack('<%df' % len(v), *v).hex()}|{tag}|{n}")
"#;
    let out = std::process::Command::new(dr_tests::venv_python()?)
        .arg("-c")
        .arg(script)
        .arg(&manifest_path)
        .output()?;
    ensure!(
        out.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    let mut want = simple_lines(&changed, 7);
    want.extend(simple_lines(&extra, 5));
    want.sort();
    ensure!(
        got == want,
        "export:\n{}\nwritten:\n{}",
        got.join("\n"),
        want.join("\n")
    );

    info!("then the resync: both identical, the divergent rows gone from dc-a");
    let (a, b) = c_identical(&d).await?;
    let pks = |ids: &[i64]| data::pks(SIMPLE, ids);
    ensure!(
        pks(&extra).iter().all(|k| !a.contains_key(k)),
        "the extra keys are gone from dc-a"
    );
    ensure!(
        pks(&[10, 11, 12, 6000]).iter().all(|k| a.contains_key(k)),
        "dc-a holds what dc-b holds"
    );
    ensure!(
        a.len() == 205 && b.len() == 205,
        "rows: {} {}",
        a.len(),
        b.len()
    );

    let status = d.drctl(&["witness", "status"])?;
    let text = String::from_utf8_lossy(&status.stdout);
    ensure!(
        text.contains("dc-a: divergent writes from epoch 1 kept: 13 rows, 3 deleted keys"),
        "{text}"
    );
    d.ctl
        .witness_command(&OperatorRequest::MarkResynced {
            dc: "dc-a".into(),
            by: String::new(),
            discard_divergent: false,
        })
        .await?;
    let st = wait_leader_status(&d.ctl, LONG, "dc-a resynced", |s| {
        s.cluster.needs_resync.is_empty()
    })
    .await?;
    ensure!(
        st.cluster.divergent.is_empty(),
        "{:?}",
        st.cluster.divergent
    );
    ensure!(
        st.audit
            .iter()
            .any(|a| a.evidence.contains("kept at s3://")),
        "the audit names where they are"
    );
    Ok(())
}

/// One write a client made through a front door, as the client saw it.
struct Sent {
    key: i64,
    acked: bool,
    /// When the client had the answer (µs since the epoch).
    answered_us: i64,
    error: String,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A client writing one new key at a time through `door`, 50 writes a
/// second, until `stop` turns true.
async fn door_writer(
    door: dr_agent::milvus::Milvus,
    db: String,
    first: i64,
    stop: tokio::sync::watch::Receiver<bool>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Sent>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for key in first.. {
        tick.tick().await;
        if *stop.borrow() {
            break;
        }
        let r = data::insert(&door, &db, "c", SIMPLE, &[key], 1).await;
        sent.lock().unwrap().push(Sent {
            key,
            acked: r.is_ok(),
            answered_us: now_us(),
            error: r.err().map(|e| format!("{e:#}")).unwrap_or_default(),
        });
    }
}

/// A primary cut off silently (packets to the witnesses and to its peer
/// dropped) while a client that still reaches it writes through its front
/// door, 50 writes a second, before and after the standby takes over. The
/// door refuses the client once its lease has run out, and acknowledges no
/// write after the new primary acts (the issue measured 904–914 such
/// writes per run going straight into the old primary's Milvus). In sync
/// mode every write it acknowledged is on the new primary when it takes
/// over; in async mode those that are not are the replication lag's loss,
/// counted. After the heal, both clusters are identical and hold every
/// acknowledged write; the old primary kept the rows dc-b lacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_primarys_front_door_acknowledges_nothing_the_new_primary_lacks_in_sync_mode(
) -> Result<()> {
    cut_off_door("fo_door_cut_sync", true).await
}

/// The same cut in async mode: no write acknowledged after the new
/// primary acts; the writes acknowledged before the cut that had not
/// reached the standby are counted (and kept by the old primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_primarys_front_door_refuses_its_clients_once_fenced() -> Result<()> {
    cut_off_door("fo_door_cut_async", false).await
}

async fn cut_off_door(name: &str, sync: bool) -> Result<()> {
    let _g = SERIAL.lock().await;
    let replication = if sync {
        "  mode: sync\n  sync_timeout: 3s\n  sync_on_timeout: refuse\n"
    } else {
        ""
    };
    let d = deploy_with(
        name,
        FAST_WIDE_BUDGET,
        None,
        Extra {
            agents: "frontdoor: { listen: \"127.0.0.1:0\", scan_interval: 10m }",
            replication,
            ..Default::default()
        },
    )
    .await?;
    let db = d.env.name.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = tokio::spawn(door_writer(
        door_of(&d, "dc-a")?,
        db.clone(),
        100_000,
        stopped,
        sent.clone(),
    ));
    // (count(*): the rows keep coming, so no key-by-key read matches it.)
    wait_until(LONG, "the client's writes replicating", || async {
        let m = &d.env.standby;
        let n = m.count(&m.describe(&db, "c").await.ok()?).await.ok()?;
        (n >= 250).then_some(())
    })
    .await
    .with_context(|| {
        let s = sent.lock().unwrap();
        let last = s.iter().rev().find(|s| !s.acked).map(|s| s.error.clone());
        format!("{} writes sent, last error: {last:?}", s.len())
    })
    .with_context(|| d.logs())?;

    info!("cut dc-a off silently: from the witnesses and from dc-b's agent, both ways");
    let cut_us = now_us();
    d.w.isolate_a(true);
    d.pa.silence(true);
    d.pb.silence(true);
    wait_source(&d, "dc-b", 2).await?;
    let promoted = log_time(
        &d.b.log,
        &[
            "acting as primary: starting the replication source",
            "epoch=2",
        ],
    )
    .context("dc-b logged its promotion")?;
    // The client keeps reaching dc-a's door for a while after the takeover.
    wait_until(LONG, "two seconds of writes after the takeover", || async {
        (now_us() > promoted + 2_000_000).then_some(())
    })
    .await?;
    stop.send_replace(true);
    writer.await?;
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let fenced = stopped_acting_after(&d.a.log, cut_us).context("dc-a stopped acting")?;
    let on_b = data::read_all(&d.env.standby, &db, "c").await?;
    let on_a = data::read_all(&d.env.primary, &db, "c").await?;

    let acked: Vec<&Sent> = sent.iter().filter(|s| s.acked).collect();
    let late: Vec<i64> = acked
        .iter()
        .filter(|s| s.answered_us >= promoted)
        .map(|s| s.key)
        .collect();
    let after_fence = acked.iter().filter(|s| s.answered_us > fenced).count();
    let refused = sent
        .iter()
        .filter(|s| s.error.contains("is not the primary"))
        .count();
    let missing: Vec<i64> = acked
        .iter()
        .filter(|s| !on_b.contains_key(&data::pks(SIMPLE, &[s.key])[0]))
        .map(|s| s.key)
        .collect();
    let others: Vec<&str> = sent
        .iter()
        .filter(|s| !s.acked && !s.error.contains("is not the primary"))
        .map(|s| s.error.as_str())
        .collect();
    println!(
        "{}: {} writes, {} acknowledged; dc-a stopped acting {:.2}s after the cut, dc-b acted {:.2}s after it; \
         acknowledged after dc-a stopped acting: {after_fence}, after dc-b acted: {}; \
         refused as not the primary: {refused}; otherwise not acknowledged: {}; \
         acknowledged and not on dc-b when it took over: {}",
        if sync { "sync" } else { "async" },
        sent.len(),
        acked.len(),
        (fenced - cut_us) as f64 / 1e6,
        (promoted - cut_us) as f64 / 1e6,
        late.len(),
        others.len(),
        missing.len(),
    );
    if let Some(e) = others.first() {
        info!(error = %e, "a write that was not acknowledged");
    }
    ensure!(
        late.is_empty(),
        "dc-a's door acknowledged {} write(s) after dc-b acted as primary: {late:?}",
        late.len()
    );
    ensure!(
        refused > 0,
        "the client reached dc-a's door after the takeover and was never refused"
    );
    if sync {
        ensure!(
            missing.is_empty(),
            "sync mode: {} acknowledged write(s) are not on the new primary: {missing:?}",
            missing.len()
        );
    }
    // What dc-a holds that dc-b lacks: acknowledged writes that had not
    // replicated (async), and writes its Milvus applied that were not
    // acknowledged (the sync timeout, or the lease running out meanwhile).
    let divergent = on_a.keys().filter(|k| !on_b.contains_key(k)).count() as u64;
    ensure!(
        divergent >= missing.len() as u64,
        "{divergent} keys on dc-a only, {} acknowledged ones missing on dc-b",
        missing.len()
    );

    info!("heal: dc-a comes back as the standby, keeps its divergent rows, resyncs");
    d.w.isolate_a(false);
    d.pa.silence(false);
    d.pb.silence(false);
    let kept = kept_by_dc_a(&d).await?;
    // It keeps what it cannot show its standby acknowledged: those rows,
    // and any sent just before the cut whose acknowledgement was dropped
    // (dc-b has them), at most a second of writes.
    ensure!(
        kept.primary_epoch == 1
            && (divergent..=divergent + 50).contains(&kept.rows)
            && kept.deleted_keys == 0,
        "kept {kept:?}, {divergent} rows on dc-a only"
    );
    let (a, b) = c_identical(&d).await?;
    let lost: Vec<i64> = acked
        .iter()
        .filter(|s| !missing.contains(&s.key))
        .filter(|s| !a.contains_key(&data::pks(SIMPLE, &[s.key])[0]))
        .map(|s| s.key)
        .collect();
    ensure!(
        lost.is_empty(),
        "acknowledged writes on dc-b at the takeover are gone after the heal: {lost:?}"
    );
    ensure!(
        a.len() == b.len() && a.len() == on_b.len(),
        "rows: dc-a {}, dc-b {}, dc-b at the takeover {}",
        a.len(),
        b.len(),
        on_b.len()
    );
    Ok(())
}
