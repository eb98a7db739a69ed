//! Rule-by-rule tests of the pure failover cores, through their public API.
//!
//! Each test sets up a state, feeds one input at a time and asserts the
//! exact actions and verdicts that come out (in the style of openraft's
//! engine tests). Every test pairs the case a rule forbids with the case it
//! allows, so removing the rule makes the test fail.
//!
//! Timing is [`Timing::default`]: heartbeat 1 s, lease 10 s, confirmation
//! 30 s, anti-flap 10 min, data-loss budget 10 s, drift 1 %. Three witnesses
//! (majority 2), datacenters `a` (initial primary) and `b`.

use dr_witness::decide::{
    Action, AgentHeartbeat, DcView, Decider, HeartbeatReply, Input, LeaseAnswer, Observation,
    Observer, OperatorRequest, Verdict,
};
use dr_witness::model::{Cluster, Command, Epoch, WitnessId};
use dr_witness::role::{self, AgentRole, FailsafeAnswer};
use dr_witness::timing::{Millis, Timing};

fn t() -> Timing {
    Timing::default()
}

// ---------------------------------------------------------------------------
// Replicated state fixtures
// ---------------------------------------------------------------------------

/// Epoch 1: `a` primary, `b` standby.
fn init() -> Cluster {
    let mut c = Cluster::default();
    c.apply(&Command::Init {
        primary: "a".into(),
        datacenters: vec!["a".into(), "b".into()],
        wall_ms: 1,
    })
    .unwrap();
    c
}

/// `c` with `cmd` applied (must be accepted).
fn then(c: &Cluster, cmd: &Command) -> Cluster {
    let mut c = c.clone();
    c.apply(cmd).unwrap();
    c
}

/// Epoch 2 after a failover to `b` at `wall_ms`: `a` awaits a resync.
fn failed_over_to_b(wall_ms: u64) -> Cluster {
    let c = then(
        &init(),
        &Command::Failover {
            from_epoch: 1,
            to: "b".into(),
            wall_ms,
            forced: false,
            evidence: "test".into(),
        },
    );
    assert_eq!((c.epoch, c.primary.as_str()), (2, "b"));
    assert!(c.needs_resync.contains("a"));
    c
}

/// Epoch 1, switching over from `a` to `b` since `started_wall_ms`.
fn switching_to_b(started_wall_ms: u64) -> Cluster {
    then(
        &init(),
        &Command::BeginSwitchover {
            from_epoch: 1,
            to: "b".into(),
            wall_ms: started_wall_ms,
            evidence: "test".into(),
        },
    )
}

// ---------------------------------------------------------------------------
// Decider fixtures
// ---------------------------------------------------------------------------

/// A leader since `since` that has applied `c`.
fn leader(c: &Cluster, since: Millis) -> Decider {
    let mut d = Decider::new(t(), 3);
    assert_eq!(d.step(since, Input::Applied(c.clone())), vec![]);
    assert_eq!(d.step(since, Input::BecameLeader), vec![]);
    assert!(d.is_leader());
    d
}

/// A plain heartbeat: healthy Milvus, not acting, not released.
fn hb(dc: &str, seq: u64, epoch: Epoch) -> AgentHeartbeat {
    AgentHeartbeat {
        dc: dc.into(),
        seq,
        epoch,
        acting_primary: false,
        released: false,
        milvus_healthy: true,
        wall_ms: 0,
        milvus_last_healthy_wall_ms: None,
        applied_snapshot_wall_ms: None,
        drained_snapshot_wall_ms: None,
        lag_ms: None,
    }
}

/// A ready standby that has applied up to `applied`.
fn standby(dc: &str, epoch: Epoch, applied: u64) -> AgentHeartbeat {
    AgentHeartbeat {
        applied_snapshot_wall_ms: Some(applied),
        ..hb(dc, 1, epoch)
    }
}

/// A primary heartbeat that gives up the lease.
fn released(dc: &str, seq: u64, epoch: Epoch, drained: Option<u64>) -> AgentHeartbeat {
    AgentHeartbeat {
        released: true,
        drained_snapshot_wall_ms: drained,
        ..hb(dc, seq, epoch)
    }
}

fn up() -> DcView {
    DcView {
        healthy: true,
        unhealthy_for_ms: 0,
        milvus_ok: true,
        last_ok_wall_ms: None,
        agent_silent_ms: Some(0),
    }
}

fn down(for_ms: u64, last_ok: Option<u64>) -> DcView {
    DcView {
        healthy: false,
        unhealthy_for_ms: for_ms,
        milvus_ok: false,
        last_ok_wall_ms: last_ok,
        agent_silent_ms: None,
    }
}

/// One witness's observation: `primary` as `v`, the other dc healthy.
fn obs(primary: &str, v: DcView) -> Observation {
    ["a", "b"]
        .into_iter()
        .map(|dc| (dc.to_string(), if dc == primary { v } else { up() }))
        .collect()
}

fn observe(d: &mut Decider, now: Millis, from: WitnessId, primary: &str, v: DcView) {
    let input = Input::Observation {
        from,
        obs: obs(primary, v),
    };
    assert_eq!(d.step(now, input), vec![]);
}

fn answer(d: &mut Decider, now: Millis, hb: AgentHeartbeat) -> HeartbeatReply {
    match d.step(now, Input::Heartbeat(hb)).as_slice() {
        [Action::Reply(r)] => r.clone(),
        other => panic!("expected exactly one reply, got {other:?}"),
    }
}

fn lease(d: &mut Decider, now: Millis, hb: AgentHeartbeat) -> LeaseAnswer {
    answer(d, now, hb).lease
}

/// A tick whose wall clock reads the same as the local clock.
fn tick(d: &mut Decider, now: Millis) -> Vec<Action> {
    d.step(now, Input::Tick { wall_ms: now })
}

fn tick_wall(d: &mut Decider, now: Millis, wall_ms: u64) -> Vec<Action> {
    d.step(now, Input::Tick { wall_ms })
}

fn op(d: &mut Decider, now: Millis, req: OperatorRequest) -> Vec<Action> {
    d.step(now, Input::Operator { req, wall_ms: now })
}

fn force(by: &str) -> OperatorRequest {
    OperatorRequest::ForceFailover { by: by.into() }
}

fn refused(why: &str) -> Vec<Action> {
    vec![Action::OperatorReply(Err(why.into()))]
}

/// Everything a failover from `primary` to `standby_dc` at `epoch` needs,
/// fresh at `now`: witnesses 1 and 2 have seen the primary down for exactly
/// the confirmation window (last ok 1 s ago), and the standby is healthy and
/// has applied up to 2 s ago (about 1 s of loss).
fn failover_due_in(d: &mut Decider, now: Millis, primary: &str, standby_dc: &str, epoch: Epoch) {
    for w in [1, 2] {
        observe(
            d,
            now,
            w,
            primary,
            down(t().confirmation_ms, Some(now - 1_000)),
        );
    }
    let standby_hb = standby(standby_dc, epoch, now - 2_000);
    assert_eq!(lease(d, now, standby_hb), LeaseAnswer::Denied);
}

fn failover_due(d: &mut Decider, now: Millis) {
    failover_due_in(d, now, "a", "b", 1);
}

/// The single proposed failover: (from_epoch, to, wall_ms, forced, evidence).
fn proposed_failover(actions: &[Action]) -> (Epoch, String, u64, bool, String) {
    match actions {
        [Action::Propose(Command::Failover {
            from_epoch,
            to,
            wall_ms,
            forced,
            evidence,
        })] => (*from_epoch, to.clone(), *wall_ms, *forced, evidence.clone()),
        other => panic!("expected exactly one failover proposal, got {other:?}"),
    }
}

/// The single proposed note (for a forced failover request).
fn proposed_note(actions: &[Action]) -> Command {
    match actions {
        [Action::Propose(cmd @ Command::Note { .. })] => cmd.clone(),
        other => panic!("expected exactly one note proposal, got {other:?}"),
    }
}

fn verdict_text(d: &Decider) -> String {
    match d.verdict() {
        Verdict::Stable(s) | Verdict::Waiting(s) | Verdict::Held(s) | Verdict::Proposed(s) => {
            s.clone()
        }
        Verdict::NotLeader => "not leader".into(),
    }
}

fn alert(reason: &str) -> Vec<Action> {
    vec![Action::Alert {
        reason: reason.into(),
    }]
}

// ---------------------------------------------------------------------------
// Decider: the lease
// ---------------------------------------------------------------------------

#[test]
fn leader_grants_the_lease_to_the_primary_at_the_committed_epoch() {
    let c = init();
    let mut d = leader(&c, 0);
    assert_eq!(
        answer(&mut d, 5_000, hb("a", 7, 1)),
        HeartbeatReply {
            seq: 7,
            cluster: Some(c.clone()),
            lease: LeaseAnswer::Granted,
            leader: None,
        }
    );
    // Counted from the receive time, lengthened for drift.
    let until = t().witness_lease_until(5_000);
    assert_eq!(d.lease_valid_until(5_000), Some(until));
    assert_eq!(d.lease_valid_until(until), None);
}

#[test]
fn leader_denies_the_lease_to_the_standby() {
    let c = init();
    let mut d = leader(&c, 0);
    assert_eq!(
        answer(&mut d, 15_000, hb("b", 8, 1)),
        HeartbeatReply {
            seq: 8,
            cluster: Some(c),
            lease: LeaseAnswer::Denied,
            leader: None,
        }
    );
    // No grant was recorded: only the tenure wait remains, and it is over.
    assert_eq!(d.lease_valid_until(15_000), None);
}

#[test]
fn leader_denies_the_lease_to_a_primary_at_an_older_epoch() {
    // `b` is primary at epoch 2: its agent still at epoch 1 is not granted.
    let c = failed_over_to_b(1_000);
    let mut d = leader(&c, 0);
    assert_eq!(lease(&mut d, 15_000, hb("b", 9, 1)), LeaseAnswer::Denied);
    assert_eq!(d.lease_valid_until(15_000), None);
    // The old primary at the old epoch neither.
    assert_eq!(lease(&mut d, 15_000, hb("a", 9, 1)), LeaseAnswer::Denied);
    // At the committed epoch, b is granted.
    assert_eq!(lease(&mut d, 15_000, hb("b", 10, 2)), LeaseAnswer::Granted);
    assert_eq!(
        d.lease_valid_until(15_000),
        Some(t().witness_lease_until(15_000))
    );
}

#[test]
fn leader_denies_a_released_primary_while_stable() {
    let mut d = leader(&init(), 0);
    assert_eq!(
        lease(&mut d, 15_000, released("a", 3, 1, None)),
        LeaseAnswer::Denied
    );
    assert_eq!(d.lease_valid_until(15_000), None);
}

#[test]
fn a_witness_that_is_not_leader_answers_not_leader() {
    let c = init();
    let mut d = Decider::new(t(), 3);
    assert_eq!(d.step(0, Input::Applied(c.clone())), vec![]);
    assert_eq!(
        answer(&mut d, 5_000, hb("a", 1, 1)),
        HeartbeatReply {
            seq: 1,
            cluster: Some(c.clone()),
            lease: LeaseAnswer::NotLeader,
            leader: None,
        }
    );
    assert_eq!(d.lease_valid_until(5_000), None);
    assert_eq!(tick(&mut d, 5_000), vec![]);
    assert_eq!(d.verdict(), &Verdict::NotLeader);

    // Leadership lost: no answers any more, and nothing decided.
    let mut d = leader(&c, 0);
    assert_eq!(lease(&mut d, 5_000, hb("a", 2, 1)), LeaseAnswer::Granted);
    assert_eq!(d.step(6_000, Input::LostLeadership), vec![]);
    assert!(!d.is_leader());
    assert_eq!(lease(&mut d, 6_000, hb("a", 3, 1)), LeaseAnswer::NotLeader);
    assert_eq!(d.lease_valid_until(6_000), None);
    for w in [1, 2] {
        observe(&mut d, 50_000, w, "a", down(t().confirmation_ms, None));
    }
    assert_eq!(tick(&mut d, 50_000), vec![]);
    assert_eq!(d.verdict(), &Verdict::NotLeader);
}

// ---------------------------------------------------------------------------
// Decider: confirmation by a witness majority
// ---------------------------------------------------------------------------

#[test]
fn one_witness_is_not_a_majority() {
    let now = 50_000;
    let mut d = leader(&init(), 0);
    failover_due(&mut d, now);
    // Witness 2 sees the primary healthy: only witness 1 confirms.
    observe(&mut d, now, 2, "a", up());
    assert_eq!(tick(&mut d, now), vec![]);
    assert_eq!(
        d.verdict(),
        &Verdict::Waiting(
            "primary a unhealthy to 1 witness(es); 1 past the 30000 ms confirmation window, 2 needed"
                .into()
        )
    );
    // A second witness confirms: failover.
    observe(&mut d, now, 2, "a", down(30_000, Some(now - 1_000)));
    let (from, to, wall, forced, evidence) = proposed_failover(&tick(&mut d, now));
    assert_eq!((from, to.as_str(), wall, forced), (1, "b", now, false));
    assert!(evidence.starts_with("2 of 2 witnesses saw a unhealthy for >= 30000 ms"));
    assert!(matches!(d.verdict(), Verdict::Proposed(s) if s == "failover to b (epoch 1 -> 2)"));
}

#[test]
fn no_failover_before_the_confirmation_window_is_full() {
    let now = 50_000;
    let conf = t().confirmation_ms;
    let mut d = leader(&init(), 0);
    failover_due(&mut d, now);
    for w in [1, 2] {
        observe(&mut d, now, w, "a", down(conf - 1, Some(now - 1_000)));
    }
    assert_eq!(tick(&mut d, now), vec![]);
    assert_eq!(
        d.verdict(),
        &Verdict::Waiting(
            "primary a unhealthy to 2 witness(es); 0 past the 30000 ms confirmation window, 2 needed"
                .into()
        )
    );
    for w in [1, 2] {
        observe(&mut d, now, w, "a", down(conf, Some(now - 1_000)));
    }
    let (from, to, ..) = proposed_failover(&tick(&mut d, now));
    assert_eq!((from, to.as_str()), (1, "b"));
}

#[test]
fn observations_older_than_four_heartbeats_are_ignored() {
    let seen = 50_000;
    let stale_after = 4 * t().heartbeat_ms;
    let mut d = leader(&init(), 0);
    failover_due(&mut d, seen);
    let mut at_limit = d.clone();
    let mut mixed = d.clone();

    // Both observations are one ms too old: as if nobody saw anything.
    let now = seen + stale_after + 1;
    assert_eq!(lease(&mut d, now, standby("b", 1, seen)), LeaseAnswer::Denied);
    assert_eq!(tick(&mut d, now), vec![]);
    assert_eq!(d.verdict(), &Verdict::Stable("primary a healthy".into()));

    // One fresh, one stale: not a majority.
    observe(&mut mixed, now, 1, "a", down(40_000, Some(seen)));
    assert_eq!(lease(&mut mixed, now, standby("b", 1, seen)), LeaseAnswer::Denied);
    assert_eq!(tick(&mut mixed, now), vec![]);
    assert!(
        verdict_text(&mixed).starts_with("primary a unhealthy to 1 witness(es); 1 past"),
        "{:?}",
        mixed.verdict()
    );

    // Exactly four heartbeats old still counts.
    let now = seen + stale_after;
    assert_eq!(
        lease(&mut at_limit, now, standby("b", 1, seen)),
        LeaseAnswer::Denied
    );
    let (from, to, ..) = proposed_failover(&tick(&mut at_limit, now));
    assert_eq!((from, to.as_str()), (1, "b"));
}

// ---------------------------------------------------------------------------
// Decider: a new leader waits a lease; a granted lease must run out
// ---------------------------------------------------------------------------

#[test]
fn a_new_leader_waits_a_full_lease_before_proposing() {
    let since = 100_000;
    let may = t().leader_may_act_at(since);
    let mut d = leader(&init(), since);
    assert_eq!(d.lease_valid_until(since), Some(may));
    failover_due(&mut d, may - 1);
    assert_eq!(tick(&mut d, may - 1), vec![]);
    assert_eq!(
        d.verdict(),
        &Verdict::Waiting("new leader waits out a full lease (1 ms more) before deciding".into())
    );
    let (from, to, wall, ..) = proposed_failover(&tick(&mut d, may));
    assert_eq!((from, to.as_str(), wall), (1, "b", may));
}

#[test]
fn a_re_elected_leader_waits_again() {
    let mut d = leader(&init(), 0);
    assert_eq!(d.step(40_000, Input::LostLeadership), vec![]);
    assert_eq!(d.step(50_000, Input::BecameLeader), vec![]);
    let may = t().leader_may_act_at(50_000);
    failover_due(&mut d, 55_000);
    assert_eq!(tick(&mut d, 55_000), vec![]);
    assert!(verdict_text(&d).starts_with("new leader waits out a full lease"));
    failover_due(&mut d, may);
    proposed_failover(&tick(&mut d, may));
}

#[test]
fn once_failover_is_due_grants_stop_and_the_last_grant_runs_out_first() {
    let mut d = leader(&init(), 0);
    assert_eq!(lease(&mut d, 40_000, hb("a", 10, 1)), LeaseAnswer::Granted);
    let until = t().witness_lease_until(40_000);

    failover_due(&mut d, 45_000);
    assert_eq!(tick(&mut d, 45_000), vec![]);
    assert_eq!(
        d.verdict(),
        &Verdict::Waiting(format!(
            "renewals stopped; the primary's lease may be valid {} ms more",
            until - 45_000
        ))
    );
    // The primary is no longer renewed but told to stop.
    assert_eq!(lease(&mut d, 45_500, hb("a", 11, 1)), LeaseAnswer::Revoked);
    assert_eq!(d.lease_valid_until(45_500), Some(until));

    failover_due(&mut d, until - 1);
    assert_eq!(tick(&mut d, until - 1), vec![]);
    assert_eq!(
        d.verdict(),
        &Verdict::Waiting("renewals stopped; the primary's lease may be valid 1 ms more".into())
    );
    failover_due(&mut d, until);
    let (from, to, wall, forced, evidence) = proposed_failover(&tick(&mut d, until));
    assert_eq!((from, to.as_str(), wall, forced), (1, "b", until, false));
    assert!(evidence.contains("; lease expired;"), "{evidence}");
}

#[test]
fn a_primary_that_released_its_lease_lets_failover_proceed_at_once() {
    let mut d = leader(&init(), 0);
    assert_eq!(lease(&mut d, 40_000, hb("a", 10, 1)), LeaseAnswer::Granted);
    // Released before failover is due: only a request to be renewed later,
    // not a release the leader may act on.
    assert_eq!(
        lease(&mut d, 41_000, released("a", 11, 1, None)),
        LeaseAnswer::Denied
    );

    failover_due(&mut d, 45_000);
    assert_eq!(tick(&mut d, 45_000), vec![]);
    assert!(verdict_text(&d).starts_with("renewals stopped"));

    // A release not newer than every granted heartbeat does not count:
    // the grant may still reach the agent after it.
    assert_eq!(
        lease(&mut d, 45_100, released("a", 10, 1, None)),
        LeaseAnswer::Revoked
    );
    assert_eq!(tick(&mut d, 45_100), vec![]);
    assert!(verdict_text(&d).starts_with("renewals stopped"));

    assert_eq!(
        lease(&mut d, 45_200, released("a", 12, 1, None)),
        LeaseAnswer::Revoked
    );
    let (from, to, wall, forced, evidence) = proposed_failover(&tick(&mut d, 45_200));
    assert_eq!((from, to.as_str(), wall, forced), (1, "b", 45_200, false));
    assert!(evidence.contains("; lease released by the primary;"), "{evidence}");
    assert!(45_200 < t().witness_lease_until(40_000));
}

#[test]
fn a_primary_that_recovers_before_the_failover_is_renewed_again() {
    let mut d = leader(&init(), 0);
    assert_eq!(lease(&mut d, 40_000, hb("a", 10, 1)), LeaseAnswer::Granted);
    failover_due(&mut d, 45_000);
    assert_eq!(tick(&mut d, 45_000), vec![]);
    assert_eq!(lease(&mut d, 45_500, hb("a", 11, 1)), LeaseAnswer::Revoked);
    let mut released_first = d.clone();

    for w in [1, 2] {
        observe(&mut d, 46_000, w, "a", up());
    }
    assert_eq!(tick(&mut d, 46_000), vec![]);
    assert_eq!(d.verdict(), &Verdict::Stable("primary a healthy".into()));
    assert_eq!(lease(&mut d, 46_500, hb("a", 12, 1)), LeaseAnswer::Granted);
    assert_eq!(
        d.lease_valid_until(46_500),
        Some(t().witness_lease_until(46_500))
    );

    // The primary had released after the revocation: once recovered it is
    // told `Denied` (ask again), not `Revoked`, and then renewed.
    let d = &mut released_first;
    assert_eq!(
        lease(d, 45_600, released("a", 12, 1, None)),
        LeaseAnswer::Revoked
    );
    for w in [1, 2] {
        observe(d, 46_000, w, "a", up());
    }
    assert_eq!(tick(d, 46_000), vec![]);
    assert_eq!(lease(d, 46_500, released("a", 13, 1, None)), LeaseAnswer::Denied);
    assert_eq!(lease(d, 47_500, hb("a", 14, 1)), LeaseAnswer::Granted);
}

// ---------------------------------------------------------------------------
// Decider: the standby must be ready; alerts once per reason
// ---------------------------------------------------------------------------

#[test]
fn failover_is_held_until_the_standby_is_ready_with_one_alert_per_reason() {
    let now = 50_000;
    let mut d = leader(&init(), 0);
    for w in [1, 2] {
        observe(&mut d, now, w, "a", down(30_000, Some(now - 1_000)));
    }
    let reason = "primary a is down but no heartbeat from the standby agent b";
    assert_eq!(tick(&mut d, now), alert(reason));
    assert_eq!(d.verdict(), &Verdict::Held(reason.into()));
    // Same reason on the next tick: still held, no second alert.
    assert_eq!(tick(&mut d, now + 100), vec![]);
    assert_eq!(d.verdict(), &Verdict::Held(reason.into()));

    let ready = standby("b", 1, now - 2_000);
    let cases = [
        (
            AgentHeartbeat {
                milvus_healthy: false,
                ..ready.clone()
            },
            "the standby's Milvus (b) is unhealthy",
        ),
        (
            AgentHeartbeat {
                epoch: 0,
                ..ready.clone()
            },
            "the standby agent b is at epoch 0 not 1",
        ),
        (
            AgentHeartbeat {
                acting_primary: true,
                ..ready.clone()
            },
            "the standby agent b claims to act as primary",
        ),
    ];
    for (standby_hb, why) in cases {
        let reason = format!("primary a is down but {why}");
        assert_eq!(lease(&mut d, now, standby_hb), LeaseAnswer::Denied);
        assert_eq!(tick(&mut d, now), alert(&reason), "{why}");
        assert_eq!(d.verdict(), &Verdict::Held(reason.clone()));
        assert_eq!(tick(&mut d, now + 100), vec![], "{why}");
        assert_eq!(d.verdict(), &Verdict::Held(reason));
    }

    assert_eq!(lease(&mut d, now, ready), LeaseAnswer::Denied);
    let (from, to, ..) = proposed_failover(&tick(&mut d, now + 200));
    assert_eq!((from, to.as_str()), (1, "b"));
}

#[test]
fn failover_is_held_while_the_standby_agent_is_silent() {
    let now = 50_000;
    let fresh = 4 * t().heartbeat_ms;
    let mut d = leader(&init(), 0);
    for w in [1, 2] {
        observe(&mut d, now, w, "a", down(30_000, Some(now - 1_000)));
    }
    let mut just_fresh = d.clone();
    assert_eq!(
        lease(&mut d, now - fresh - 1, standby("b", 1, now - 2_000)),
        LeaseAnswer::Denied
    );
    assert_eq!(
        tick(&mut d, now),
        alert("primary a is down but the standby agent b has been silent for 4001 ms")
    );
    assert!(matches!(d.verdict(), Verdict::Held(_)));

    assert_eq!(
        lease(&mut just_fresh, now - fresh, standby("b", 1, now - 2_000)),
        LeaseAnswer::Denied
    );
    proposed_failover(&tick(&mut just_fresh, now));
}

#[test]
fn an_alert_is_repeated_after_the_condition_cleared_and_came_back() {
    let now = 50_000;
    let mut d = leader(&init(), 0);
    for w in [1, 2] {
        observe(&mut d, now, w, "a", down(30_000, Some(now - 1_000)));
    }
    let reason = "primary a is down but no heartbeat from the standby agent b";
    assert_eq!(tick(&mut d, now), alert(reason));
    for w in [1, 2] {
        observe(&mut d, now + 1_000, w, "a", up());
    }
    assert_eq!(tick(&mut d, now + 1_000), vec![]);
    assert_eq!(d.verdict(), &Verdict::Stable("primary a healthy".into()));
    for w in [1, 2] {
        observe(&mut d, now + 2_000, w, "a", down(30_000, Some(now)));
    }
    assert_eq!(tick(&mut d, now + 2_000), alert(reason));
}

/// The alert text of the anti-flap hold contains the age of the last
/// failover, which grows every tick: each tick is a "distinct reason", so
/// an operator is alerted every tick for the whole window.
#[test]
#[ignore = "BUG: the anti-flap hold alerts on every tick (its reason embeds a growing age)"]
fn anti_flap_hold_alerts_once_not_every_tick() {
    let last = 1_000_000;
    let c = then(
        &failed_over_to_b(last),
        &Command::MarkResynced {
            dc: "a".into(),
            wall_ms: last + 1,
            evidence: "test".into(),
        },
    );
    let mut d = leader(&c, 0);
    failover_due_in(&mut d, 50_000, "b", "a", 2);
    assert_eq!(tick_wall(&mut d, 50_000, last + 1_000).len(), 1);
    assert_eq!(tick_wall(&mut d, 51_000, last + 2_000), vec![]);
}

/// Likewise, the silent-standby reason embeds the silence in ms.
#[test]
#[ignore = "BUG: a silent standby makes the held failover alert on every tick (reason embeds the silence)"]
fn silent_standby_hold_alerts_once_not_every_tick() {
    let mut d = leader(&init(), 0);
    assert_eq!(
        lease(&mut d, 40_000, standby("b", 1, 39_000)),
        LeaseAnswer::Denied
    );
    for w in [1, 2] {
        observe(&mut d, 50_000, w, "a", down(30_000, Some(49_000)));
    }
    assert_eq!(tick(&mut d, 50_000).len(), 1);
    assert_eq!(tick(&mut d, 51_000), vec![]);
}
