//! The witness quorum under partitions that drop packets silently: the
//! proxies' silent mode keeps every connection open and passes nothing,
//! so nobody is told the path is gone. Real processes: three `dr-witness`
//! and two `dr-agent` on loopback with mutual TLS, real Milvus servers.
//!
//! Tests in this binary run one at a time (they measure timings); each
//! uses the fast profile: heartbeat 250 ms, lease 2 s, confirmation 5 s.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dr_proto::now_ms;
use dr_tests::deployment::{deploy_with, log_times, Deployment, Extra};
use dr_tests::wait_until;
use dr_tests::webhook::Receiver;
use dr_tests::witness::{wait_leader_status, WitnessProc};
use dr_witness::api::WitnessStatus;
use dr_witness::timing::Timing;
use tracing::info;

const FAST: &str = "{ profile: fast }";
const LONG: Duration = Duration::from_secs(60);
const HELD: &str = "automatic failover held";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn timing() -> Timing {
    Timing::fast()
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// One witness's status, through `drctl`'s client.
async fn witness(d: &Deployment, id: u64) -> Option<WitnessStatus> {
    let mut one = d.ctl.clone();
    one.witnesses.retain(|k, _| *k == id);
    one.witness_status().await.pop()?.1.ok()
}

fn proc(d: &Deployment, id: u64) -> &WitnessProc {
    &d.w.procs[(id - 1) as usize]
}

/// A series of a witness's `/metrics`, e.g. `milvus_dr_witness_is_leader`
/// or `milvus_dr_witness_datacenter_unhealthy_ms{datacenter="dc-b"}`.
async fn metric(p: &WitnessProc, series: &str) -> Option<f64> {
    let b = p.bound.as_ref()?;
    let text = reqwest::get(format!("http://{}/metrics", b.metrics))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok())?
    })
}

/// [`log_times`] in ms since the epoch.
fn log_ms(path: &Path, needles: &[&str]) -> Vec<i64> {
    log_times(path, needles)
        .into_iter()
        .map(|us| us / 1000)
        .collect()
}

/// The bound within which a leader cut off from its peers stops calling
/// itself leader: a lease without a quorum acknowledgement, plus one second
/// for Raft's metrics (every 1.5 Raft heartbeats) and the witness's rounds.
fn unconfirmed_within() -> Duration {
    ms(timing().lease_ms + 1_000)
}

/// A fast-profile deployment whose witnesses alert through the shared
/// sender to a local receiver (the literal Slack-compatible `webhook_url`).
async fn deploy_alerting(name: &str) -> Result<(Deployment, Receiver)> {
    let hook = Receiver::start().await?;
    let alerts = format!("alerts: {{ webhook_url: \"{}\" }}", hook.url);
    let d = deploy_with(
        name,
        FAST,
        None,
        Extra {
            witnesses: &alerts,
            ..Default::default()
        },
    )
    .await?;
    Ok((d, hook))
}

/// A Slack-format alert's text.
fn text(b: &serde_json::Value) -> String {
    b["text"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_peers_stops_leading_and_decides_nothing() -> Result<()> {
    let _g = SERIAL.lock().await;
    let t = timing();
    let (d, hook) = deploy_alerting("pt_leader").await?;

    info!("phase 1: a confirmed leader is cut off from both peers, silently");
    let first = wait_leader_status(&d.ctl, LONG, "a confirmed witness leader", |_| true).await?;
    let old = first.id;
    let i = (old - 1) as usize;
    ensure!(metric(proc(&d, old), "milvus_dr_witness_is_leader").await == Some(1.0));
    let cut_wall = now_ms();
    let cut = Instant::now();
    d.w.silence_peers(i, true);

    info!("phase 2: it stops naming itself leader within a lease and a second");
    let gone = wait_until(
        unconfirmed_within() + ms(1_000),
        "the cut-off leader to stop naming itself leader",
        || async {
            let s = witness(&d, old).await?;
            (s.leader != Some(old) && !s.leader_confirmed).then_some(s)
        },
    )
    .await
    .with_context(|| d.logs())?;
    let seen_after = cut.elapsed();
    // Raft itself still calls it leader: exactly the stale state at issue.
    ensure!(
        gone.raft_state == "Leader",
        "expected Raft to still call witness {old} leader, got {}",
        gone.raft_state
    );
    let logged = log_ms(
        &proc(&d, old).log,
        &["Raft leader without a quorum acknowledgement"],
    )
    .into_iter()
    .find(|ts| *ts >= cut_wall)
    .context("the cut-off leader logged that it is unconfirmed")?;
    let stopped_after = ms((logged - cut_wall).max(0) as u64);
    ensure!(
        stopped_after <= unconfirmed_within(),
        "unconfirmed only {stopped_after:?} after the cut (bound {:?})",
        unconfirmed_within()
    );
    ensure!(metric(proc(&d, old), "milvus_dr_witness_is_leader").await == Some(0.0));
    ensure!(metric(proc(&d, old), "milvus_dr_witness_leader_unconfirmed").await == Some(1.0));

    // It says so: no confirmed leader for over a lease.
    let lost = hook
        .wait_for(LONG, "the quorum-lost alert of the cut-off witness", |b| {
            text(b).contains(&format!("milvus-dr witness-{old}:"))
                && text(b).contains("knows no confirmed leader")
        })
        .await?;
    ensure!(!text(&lost).contains("resolved"), "{lost}");

    info!("phase 3: the other two elect a confirmed leader in a newer term");
    let new = wait_leader_status(&d.ctl, LONG, "a new leader among the other two", |s| {
        s.id != old && s.term > first.term
    })
    .await
    .with_context(|| d.logs())?;
    let elected_after = cut.elapsed();

    info!("phase 4: dc-a's Milvus fails; the majority fails over, the cut-off one decides nothing");
    d.health_a.block(true);
    let done = wait_leader_status(&d.ctl, LONG, "the failover to dc-b", |s| {
        s.cluster.epoch == 2 && s.cluster.primary == "dc-b"
    })
    .await
    .with_context(|| d.logs())?;
    ensure!(done.id != old);
    // The new leader pages about the committed failover and what is left
    // to do (dc-a must be resynchronised).
    let committed = hook
        .wait_for(LONG, "the failover-committed alert", |b| {
            text(b).contains("failover committed: dc-b is primary at epoch 2")
        })
        .await?;
    ensure!(
        text(&committed).contains(&format!("milvus-dr witness-{}:", done.id))
            && text(&committed).contains("resynchronise dc-a"),
        "{committed}"
    );
    let iso = witness(&d, old)
        .await
        .context("the cut-off witness answers drctl")?;
    ensure!(
        iso.cluster.epoch == 1
            && iso.raft_state == "Leader"
            && !iso.leader_confirmed
            && iso.observation.get("dc-a").is_some_and(|v| !v.healthy),
        "the cut-off witness should still be an unconfirmed leader at epoch 1 seeing dc-a down: {iso:?}"
    );

    info!("phase 5: healed, it follows the new leader without a word about failover");
    d.w.silence_peers(i, false);
    let healed = Instant::now();
    wait_until(LONG, "the old leader to follow at epoch 2", || async {
        let s = witness(&d, old).await?;
        (s.raft_state == "Follower" && s.cluster.epoch == 2 && s.leader.is_some_and(|l| l != old))
            .then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    let followed_after = healed.elapsed();
    hook.wait_for(LONG, "the quorum-lost alert resolved", |b| {
        text(b).contains(&format!("milvus-dr witness-{old}: resolved:"))
    })
    .await?;
    // Stale views may arrive for a while after the heal: watch a lease more.
    let until = Instant::now() + ms(t.lease_ms);
    wait_until(LONG, "a lease to pass after the heal", || async {
        (Instant::now() >= until).then_some(())
    })
    .await?;
    let log = proc(&d, old).log_text();
    for bad in [HELD, "could not commit", "commit timed out"] {
        ensure!(
            !log.contains(bad),
            "the cut-off leader logged \"{bad}\":\n{}",
            d.logs()
        );
    }
    ensure!(metric(proc(&d, old), "milvus_dr_witness_alerts_total").await == Some(0.0));
    println!(
        "witness {old} cut off: unconfirmed {:.2}s later by its log (status showed it after {:.2}s; bound {:.1}s); witness {} elected in term {} > {} after {:.2}s; after the heal it followed within {:.2}s",
        stopped_after.as_secs_f64(),
        seen_after.as_secs_f64(),
        unconfirmed_within().as_secs_f64(),
        new.id,
        new.term,
        first.term,
        elected_after.as_secs_f64(),
        followed_after.as_secs_f64(),
    );
    Ok(())
}

/// Both agents cut off from the witnesses (silently), dc-a's Milvus still
/// fine: the witnesses see both datacenters down, and the failover to
/// dc-b is held because its agent is silent. dc-b's path to the leader
/// heals first, and the failover commits at once, while the other two
/// witnesses, not yet healed, still see dc-b's agent silent for longer than
/// the confirmation window and say so in every observation they push.
/// Their paths heal a moment later. Nobody may raise "primary dc-b is
/// down" about the primary the leader has just found fit to take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_alert_about_the_new_primary_right_after_a_failover_to_it() -> Result<()> {
    let _g = SERIAL.lock().await;
    let t = timing();
    let (d, hook) = deploy_alerting("pt_commit").await?;
    let leader = wait_leader_status(&d.ctl, LONG, "a confirmed witness leader", |_| true).await?;
    let l = (leader.id - 1) as usize;
    let lp = proc(&d, leader.id);

    info!("phase 1: both agents lose the witnesses, silently");
    for p in d.w.for_a.iter().chain(&d.w.front) {
        p.silence(true);
    }
    // `drctl` goes through the same (silent) proxies: watch the logs and
    // the metrics, which the witnesses serve directly.
    wait_until(LONG, "the failover held for the silent standby", || async {
        let held = log_ms(&lp.log, &[HELD, "standby agent dc-b"]);
        (!held.is_empty()).then_some(())
    })
    .await
    .with_context(|| d.logs())?;
    // The leader's alert reaches the webhook, with its evidence.
    let trigger = hook
        .wait_for(LONG, "the held-failover alert at the webhook", |b| {
            text(b).contains("automatic failover held") && text(b).contains("standby agent dc-b")
        })
        .await?;
    ensure!(
        text(&trigger).contains(&format!("milvus-dr witness-{}:", leader.id)),
        "raised by the leader, witness {}: {trigger}",
        leader.id
    );
    wait_until(
        LONG,
        "every witness to see dc-b down past the window",
        || async {
            for p in &d.w.procs {
                let v = metric(
                    p,
                    "milvus_dr_witness_datacenter_unhealthy_ms{datacenter=\"dc-b\"}",
                )
                .await?;
                if v < t.confirmation_ms as f64 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .with_context(|| d.logs())?;

    info!("phase 2: dc-b's agent reaches the leader again; the failover commits");
    let healed = now_ms();
    d.w.front[l].silence(false);
    let committed = wait_until(LONG, "the failover to dc-b to commit", || async {
        log_ms(&lp.log, &["committed", "failover to dc-b"])
            .first()
            .copied()
    })
    .await
    .with_context(|| d.logs())?;
    // Held only for want of fresh heartbeats from the standby: it commits
    // within a lease and four heartbeats of the heal (the stalled
    // connection is dropped and a new one carries the next heartbeat).
    let commit_after_heal = committed - healed;
    let bound = (t.lease_ms + 4 * t.heartbeat_ms) as i64;
    ensure!(
        commit_after_heal <= bound,
        "committed {commit_after_heal} ms after the heal, over the {bound} ms bound"
    );
    // The leader has applied the new epoch and judged dc-b once.
    let judged = wait_until(LONG, "the leader to judge the new primary", || async {
        log_ms(&lp.log, &["leader decision state"])
            .into_iter()
            .find(|ts| *ts >= committed)
    })
    .await
    .with_context(|| d.logs())?;
    // Meanwhile the other two could not hear dc-b's agent: their views,
    // pushed to the leader every heartbeat, said down.
    for p in &d.w.procs {
        if p.id != leader.id {
            let v = metric(
                p,
                "milvus_dr_witness_datacenter_unhealthy_ms{datacenter=\"dc-b\"}",
            )
            .await
            .context("a peer's metrics")?;
            ensure!(
                v >= t.confirmation_ms as f64,
                "witness {} sees dc-b down only {v} ms at the commit",
                p.id
            );
        }
    }
    for p in &d.w.front {
        p.silence(false);
    }
    let peers_healed = now_ms() - committed;
    let judged = judged - committed;

    info!("phase 3: for a lease after the commit, no witness calls dc-b down");
    wait_until(LONG, "a lease after the commit", || async {
        (now_ms() >= committed + t.lease_ms as i64).then_some(())
    })
    .await?;
    for p in &d.w.procs {
        let late: Vec<i64> = log_ms(&p.log, &[HELD])
            .into_iter()
            .filter(|ts| *ts >= committed)
            .collect();
        ensure!(
            late.is_empty() && log_ms(&p.log, &["primary dc-b is down"]).is_empty(),
            "witness {} alerted {:?} ms after the commit:\n{}",
            p.id,
            late.iter().map(|ts| ts - committed).collect::<Vec<_>>(),
            d.logs()
        );
    }
    // dc-b's agent heartbeats every witness normally meanwhile.
    for (id, r) in d.ctl.witness_status().await {
        let s = r.map_err(|e| e.context(format!("witness {id}")))?;
        let seen = s.agents.get("dc-b").context("dc-b's agent seen")?;
        ensure!(
            s.cluster.epoch == 2 && seen.ago_ms <= t.lease_ms,
            "witness {id}: epoch {}, dc-b heard {} ms ago",
            s.cluster.epoch,
            seen.ago_ms
        );
    }
    // The hold is over: the alert is resolved, and nothing else was raised.
    hook.wait_for(LONG, "the held-failover alert resolved", |b| {
        text(b).contains("resolved: automatic failover held")
    })
    .await?;
    let bodies = hook.bodies();
    let resolved_at = bodies
        .iter()
        .position(|b| text(b).contains("resolved:"))
        .context("resolve")?;
    // After it, only the committed failover is news (dc-a to resync).
    ensure!(
        bodies[resolved_at + 1..]
            .iter()
            .all(|b| text(b).contains("failover committed: dc-b is primary at epoch 2"))
            && bodies
                .iter()
                .all(|b| !text(b).contains("primary dc-b is down")),
        "alerts after the resolve or about dc-b: {bodies:?}"
    );
    for p in &d.w.for_a {
        p.silence(false);
    }
    println!(
        "failover held for want of the standby's heartbeats committed {commit_after_heal} ms after its path healed (bound {bound} ms), while 2 of 3 witnesses saw dc-b down past the window; the leader judged dc-b {judged} ms after the commit, their paths healed {peers_healed} ms after it; no alert within {} ms of it",
        t.lease_ms
    );
    Ok(())
}
