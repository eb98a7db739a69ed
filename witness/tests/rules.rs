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
use dr_witness::role::{self, AgentRole};
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

/// Epoch 2 after a failover to `b` at `last`, `a` resynchronised since.
fn resynced_after_failover(last: u64) -> Cluster {
    then(
        &failed_over_to_b(last),
        &Command::MarkResynced {
            dc: "a".into(),
            wall_ms: last + 1,
            evidence: "test".into(),
        },
    )
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
        drill_outage_ms: None,
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

/// Witnesses 1 and 2 have seen `primary` down for exactly the
/// confirmation window, writable until `last_ok`.
fn confirmed_down(d: &mut Decider, now: Millis, primary: &str, last_ok: u64) {
    for w in [1, 2] {
        observe(d, now, w, primary, down(t().confirmation_ms, Some(last_ok)));
    }
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
    assert_eq!(
        lease(&mut d, now, standby("b", 1, seen)),
        LeaseAnswer::Denied
    );
    assert_eq!(tick(&mut d, now), vec![]);
    assert_eq!(d.verdict(), &Verdict::Stable("primary a healthy".into()));

    // One fresh, one stale: not a majority.
    observe(&mut mixed, now, 1, "a", down(40_000, Some(seen)));
    assert_eq!(
        lease(&mut mixed, now, standby("b", 1, seen)),
        LeaseAnswer::Denied
    );
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

/// Observations count for no longer than a lease either: with a lease of
/// 2.5 heartbeats, a peer's observation 2.5 s old is stale although it is
/// within four heartbeats.
#[test]
fn stale_peer_observations_do_not_make_a_majority() {
    let timing = Timing {
        heartbeat_ms: 1_000,
        lease_ms: 2_500,
        ..t()
    };
    timing.validate().unwrap();
    let seen = 50_000;
    let mut d = Decider::new(timing, 3);
    assert_eq!(d.step(0, Input::Applied(init())), vec![]);
    assert_eq!(d.step(0, Input::BecameLeader), vec![]);
    // Witness 2's observation arrived at `seen`; witness 1's own is fresh.
    observe(&mut d, seen, 2, "a", down(40_000, Some(seen - 1_000)));
    let mut at_limit = d.clone();

    let now = seen + timing.lease_ms + 1;
    assert!(now - seen < 4 * timing.heartbeat_ms);
    observe(&mut d, now, 1, "a", down(40_000, Some(seen - 1_000)));
    assert_eq!(
        lease(&mut d, now, standby("b", 1, now - 2_000)),
        LeaseAnswer::Denied
    );
    assert_eq!(tick(&mut d, now), vec![]);
    assert_eq!(
        d.verdict(),
        &Verdict::Waiting(
            "primary a unhealthy to 1 witness(es); 1 past the 30000 ms confirmation window, 2 needed"
                .into()
        )
    );

    // A lease old: still counts.
    let now = seen + timing.lease_ms;
    observe(&mut at_limit, now, 1, "a", down(40_000, Some(seen - 1_000)));
    assert_eq!(
        lease(&mut at_limit, now, standby("b", 1, now - 2_000)),
        LeaseAnswer::Denied
    );
    let (from, to, ..) = proposed_failover(&tick(&mut at_limit, now));
    assert_eq!((from, to.as_str()), (1, "b"));
}

/// Right after a failover to `b` commits, the views of `b` that the leader
/// holds were formed while `b` was the standby (sent before the commit, or
/// by a peer that had not heard `b`'s agent again yet). None of them may
/// make the new primary "down": `b` is judged on observations received
/// after the commit, for the time since the commit.
#[test]
fn a_new_primary_is_not_called_down_before_fresh_observations_of_it() {
    let mut d = leader(&init(), 0);
    let before = 100_000;
    for w in [1, 2] {
        observe(&mut d, before, w, "b", down(40_000, None));
    }
    let committed = before + 50;
    assert_eq!(
        d.step(committed, Input::Applied(failed_over_to_b(before))),
        vec![]
    );
    assert_eq!(tick(&mut d, committed + 60), vec![]);
    assert_eq!(
        d.verdict(),
        &Verdict::Waiting(
            "epoch 2 made b primary 60 ms ago; no observation of it received since".into()
        )
    );

    // Received after the commit, but b was unhealthy to them mostly before.
    for w in [1, 2] {
        observe(&mut d, committed + 100, w, "b", down(40_000, None));
    }
    assert_eq!(tick(&mut d, committed + 100), vec![]);
    assert!(
        verdict_text(&d).starts_with("primary b unhealthy to 2 witness(es); 0 past"),
        "{:?}",
        d.verdict()
    );

    // Unhealthy for a full confirmation window since the commit: now the
    // new primary is down (and no failback: the old one awaits a resync).
    let later = committed + t().confirmation_ms;
    for w in [1, 2] {
        observe(&mut d, later, w, "b", down(40_000, None));
    }
    assert_eq!(
        tick(&mut d, later),
        alert("primary b is down but the standby a was demoted earlier and is not resynchronised (no automatic failback)")
    );
}

/// A witness that Raft still calls leader but that no quorum acknowledged
/// within a lease is cut off: the others may have elected a new leader.
/// It neither proposes nor alerts nor grants, and confirmed again it starts
/// a new tenure.
#[test]
fn an_unconfirmed_leader_neither_proposes_nor_alerts() {
    let now = 50_000;
    let raft = |age: Option<Millis>| Input::Raft {
        leader: true,
        quorum_ack_age_ms: age,
    };
    let mut d = leader(&init(), 0);
    failover_due(&mut d, now);
    let mut confirmed = d.clone();
    let mut holding = leader(&init(), 0);
    for w in [1, 2] {
        observe(&mut holding, now, w, "a", down(30_000, Some(now - 1_000)));
    }
    let mut holding_confirmed = holding.clone();

    // Acknowledged a lease ago: still the leader; it proposes, or alerts.
    let lease_ms = t().lease_ms;
    assert_eq!(confirmed.step(now, raft(Some(lease_ms))), vec![]);
    assert!(confirmed.is_leader());
    proposed_failover(&tick(&mut confirmed, now));
    assert_eq!(holding_confirmed.step(now, raft(Some(lease_ms))), vec![]);
    assert_eq!(
        tick(&mut holding_confirmed, now),
        alert("primary a is down but no heartbeat from the standby agent b")
    );

    // One ms more, or never acknowledged in this term: nothing.
    for (x, age) in [(&mut d, Some(lease_ms + 1)), (&mut holding, None)] {
        assert_eq!(x.step(now, raft(age)), vec![]);
        assert!(!x.is_leader());
        assert_eq!(tick(x, now), vec![]);
        assert_eq!(x.verdict(), &Verdict::NotLeader);
        assert_eq!(lease(x, now, hb("a", 5, 1)), LeaseAnswer::NotLeader);
        let req = OperatorRequest::Switchover {
            to: "b".into(),
            by: "operator".into(),
        };
        assert_eq!(op(x, now, req), refused("not the leader; ask the leader"));
    }

    // Acknowledged again: a new tenure, which waits out a full lease.
    let back = now + 1_000;
    assert_eq!(d.step(back, raft(Some(0))), vec![]);
    assert!(d.is_leader());
    failover_due(&mut d, back);
    assert_eq!(tick(&mut d, back), vec![]);
    assert!(verdict_text(&d).starts_with("new leader waits out a full lease"));
    let may = t().leader_may_act_at(back);
    failover_due(&mut d, may);
    proposed_failover(&tick(&mut d, may));
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
    assert!(
        evidence.contains("; lease released by the primary;"),
        "{evidence}"
    );
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
    assert_eq!(
        lease(d, 46_500, released("a", 13, 1, None)),
        LeaseAnswer::Denied
    );
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

/// The anti-flap hold's text carries the age of the last failover, which
/// grows every tick; the operator is still alerted once (this found a bug:
/// alerts were de-duplicated by text).
#[test]
fn anti_flap_hold_alerts_once_not_every_tick() {
    let last = 1_000_000;
    let c = resynced_after_failover(last);
    let mut d = leader(&c, 0);
    failover_due_in(&mut d, 50_000, "b", "a", 2);
    assert_eq!(tick_wall(&mut d, 50_000, last + 1_000).len(), 1);
    assert_eq!(tick_wall(&mut d, 51_000, last + 2_000), vec![]);
}

/// Likewise, the silent-standby reason carries the silence in ms.
#[test]
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

// ---------------------------------------------------------------------------
// Decider: data-loss budget, forcing, switchover
// ---------------------------------------------------------------------------

#[test]
fn over_the_data_loss_budget_the_failover_is_held_until_an_operator_forces_it() {
    let now = 50_000;
    let mut d = leader(&init(), 0);
    confirmed_down(&mut d, now, "a", now - 1_000);
    assert_held_over_budget(&mut d, now, now - 20_000);
    assert!(matches!(d.verdict(), Verdict::Held(_)));
    // The operator's acknowledgement is audited, then the failover goes.
    let note = proposed_note(&op(&mut d, now, force("operator")));
    assert!(note
        .evidence()
        .contains("operator acknowledged possible data loss"));
    assert_eq!(d.step(now, Input::ProposalFailed), vec![]);
    let (from, to, _, forced, evidence) = proposed_failover(&tick(&mut d, now + 100));
    assert_eq!((from, to.as_str(), forced), (1, "b", true));
    assert!(evidence.contains("forced by an operator"), "{evidence}");
}

/// The forced-failover note promises the waiver holds "while the primary
/// stays confirmed unhealthy"; a primary that recovers ends the waiver, so a
/// later, separate outage over the budget is held again.
#[test]
fn a_force_ends_when_the_primary_recovers() {
    let now = 50_000;
    let mut d = leader(&init(), 0);
    confirmed_down(&mut d, now, "a", now - 1_000);
    assert_held_over_budget(&mut d, now, now - 20_000);
    let note = proposed_note(&op(&mut d, now + 100, force("operator")));
    assert_eq!(
        d.step(now + 200, Input::Applied(then(&init(), &note))),
        vec![]
    );
    // The primary recovers before the leader ticks again.
    for w in [1, 2] {
        observe(&mut d, now + 300, w, "a", up());
    }
    assert_eq!(tick(&mut d, now + 300), vec![]);
    assert_eq!(d.verdict(), &Verdict::Stable("primary a healthy".into()));
    // A new outage, still within 10 x confirmation_ms of the force and
    // again over the budget: held, not a forced failover.
    let later = now + 100_000;
    confirmed_down(&mut d, later, "a", later - 30_000);
    assert_held_over_budget(&mut d, later, now - 20_000);
}

/// The standby "b", which applied the primary's writes only up to
/// `applied_ms`, asks for a lease at `now`: denied, and the leader's next
/// tick holds the failover with an alert naming the data-loss budget.
fn assert_held_over_budget(d: &mut Decider, now: Millis, applied_ms: u64) {
    assert_eq!(
        lease(d, now, standby("b", 1, applied_ms)),
        LeaseAnswer::Denied
    );
    let held = tick(d, now);
    assert!(
        matches!(held.as_slice(), [Action::Alert { reason }] if reason.contains("over the 10000 ms budget")),
        "{held:?}"
    );
}

#[test]
fn a_switchover_keeps_granting_until_release_and_completes_only_when_the_standby_has_the_drain() {
    let mut d = leader(&init(), 0);
    assert_eq!(lease(&mut d, 100, standby("b", 1, 50)), LeaseAnswer::Denied);
    // Refused to a datacenter that is not the standby.
    assert_eq!(
        op(
            &mut d,
            100,
            OperatorRequest::Switchover {
                to: "a".into(),
                by: "op".into()
            }
        ),
        refused("a is not the standby")
    );
    let begin = op(
        &mut d,
        100,
        OperatorRequest::Switchover {
            to: "b".into(),
            by: "op".into(),
        },
    );
    assert!(
        matches!(
            begin.as_slice(),
            [Action::Propose(Command::BeginSwitchover {
                from_epoch: 1,
                ..
            })]
        ),
        "{begin:?}"
    );
    let c = switching_to_b(100);
    assert_eq!(d.step(200, Input::Applied(c)), vec![]);
    // The primary keeps its lease while it drains.
    assert_eq!(lease(&mut d, 300, hb("a", 10, 1)), LeaseAnswer::Granted);
    // Released with a drain at 5_000, but the standby has only 4_000.
    assert_eq!(
        lease(&mut d, 400, released("a", 11, 1, Some(5_000))),
        LeaseAnswer::Revoked
    );
    assert_eq!(
        lease(&mut d, 400, standby("b", 1, 4_000)),
        LeaseAnswer::Denied
    );
    let may_act = t().leader_may_act_at(0);
    assert_eq!(tick(&mut d, may_act + 1), vec![]);
    assert!(matches!(d.verdict(), Verdict::Waiting(_)));
    // Once the standby has applied the drained pass: complete, lossless.
    assert_eq!(
        lease(&mut d, may_act + 2, standby("b", 1, 5_000)),
        LeaseAnswer::Denied
    );
    match tick(&mut d, may_act + 3).as_slice() {
        [Action::Propose(Command::CompleteSwitchover {
            from_epoch: 1,
            to,
            evidence,
            ..
        })] => {
            assert_eq!(to, "b");
            assert!(evidence.contains("nothing lost"), "{evidence}");
        }
        other => panic!("expected the completion, got {other:?}"),
    }
}

#[test]
fn a_switchover_that_does_not_drain_in_time_is_aborted() {
    let mut d = leader(&switching_to_b(1_000), 0);
    let timeout = 2 * t().confirmation_ms;
    assert_eq!(tick_wall(&mut d, 20_000, 1_000 + timeout), vec![]);
    match tick_wall(&mut d, 20_100, 1_001 + timeout).as_slice() {
        [Action::Propose(Command::AbortSwitchover { from_epoch: 1, .. })] => {}
        other => panic!("expected an abort, got {other:?}"),
    }
}

#[test]
fn no_switchover_to_a_datacenter_awaiting_resync() {
    let mut d = leader(&failed_over_to_b(1), 0);
    assert_eq!(lease(&mut d, 100, standby("a", 2, 50)), LeaseAnswer::Denied);
    let r = op(
        &mut d,
        100,
        OperatorRequest::Switchover {
            to: "a".into(),
            by: "op".into(),
        },
    );
    assert!(
        matches!(r.as_slice(), [Action::OperatorReply(Err(why))] if why.contains("mark-resynced a")),
        "{r:?}"
    );
}

/// `mark-resynced` waits until the demoted datacenter's agent recorded
/// that it kept its divergent writes, unless the operator gives them up.
#[test]
fn mark_resynced_waits_for_the_divergent_writes_to_be_kept() {
    let mark = |discard_divergent| OperatorRequest::MarkResynced {
        dc: "a".into(),
        by: "op".into(),
        discard_divergent,
    };
    let mut d = leader(&failed_over_to_b(1), 0);
    let r = op(&mut d, 100, mark(false));
    assert!(
        matches!(r.as_slice(), [Action::OperatorReply(Err(why))] if why.contains("--discard-divergent")),
        "{r:?}"
    );
    let mut d = leader(&failed_over_to_b(1), 0);
    match op(&mut d, 100, mark(true)).as_slice() {
        [Action::Propose(Command::MarkResynced { evidence, .. })] => {
            assert!(evidence.contains("gave up"), "{evidence}")
        }
        other => panic!("expected a proposal, got {other:?}"),
    }
    let kept = then(
        &failed_over_to_b(1),
        &Command::DivergentKept {
            dc: "a".into(),
            wall_ms: 2,
            kept: dr_witness::model::Divergent {
                primary_epoch: 1,
                rows: 13,
                deleted_keys: 3,
                location: "s3://b/dr/divergent/a-epoch1/".into(),
            },
            evidence: "test".into(),
        },
    );
    let mut d = leader(&kept, 0);
    match op(&mut d, 100, mark(false)).as_slice() {
        [Action::Propose(Command::MarkResynced { evidence, .. })] => {
            assert!(
                evidence.contains("13 rows") && evidence.contains("s3://b/dr/divergent/a-epoch1/"),
                "{evidence}"
            )
        }
        other => panic!("expected a proposal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Observer
// ---------------------------------------------------------------------------

#[test]
fn observer_needs_both_the_milvus_probe_and_the_agent_heartbeat() {
    let dcs = ["a".to_string(), "b".to_string()];
    let mut o = Observer::new(t(), 0, &dcs);
    o.on_probe(1_000, 1_000, "a", true);
    // Probe ok but no heartbeat yet: unhealthy since the first evaluation.
    assert!(!o.observe(1_000)["a"].healthy);
    o.on_agent_heartbeat(2_000, "a", None);
    let v = o.observe(2_000)["a"];
    assert!(v.healthy && v.unhealthy_for_ms == 0);
    // The agent goes silent for longer than a lease: unhealthy, and the
    // time counts from then.
    let silent_from = 2_000 + t().lease_ms + 1;
    assert!(!o.observe(silent_from)["a"].healthy);
    assert_eq!(o.observe(silent_from + 5_000)["a"].unhealthy_for_ms, 5_000);
    // Heartbeats again but Milvus fails: still unhealthy; both ok: healthy.
    o.on_agent_heartbeat(silent_from + 6_000, "a", None);
    o.on_probe(silent_from + 6_000, 0, "a", false);
    assert!(!o.observe(silent_from + 6_000)["a"].healthy);
    o.on_probe(silent_from + 7_000, 0, "a", true);
    assert_eq!(o.observe(silent_from + 7_000)["a"].unhealthy_for_ms, 0);
}

#[test]
fn a_drilled_outage_looks_like_a_dead_milvus_until_it_ends() {
    let dcs = ["a".to_string(), "b".to_string()];
    let mut o = Observer::new(t(), 0, &dcs);
    o.on_probe(1_000, 1_000, "a", true);
    o.on_agent_heartbeat(1_000, "a", None);
    assert!(o.observe(1_000)["a"].healthy);
    // The agent says its datacenter is out for 10 s: unhealthy at once,
    // Milvus counted as down although the probe still answers, and the
    // last good probe time does not move (the data-loss estimate uses it).
    o.on_agent_heartbeat(2_000, "a", Some(10_000));
    o.on_probe(2_500, 2_500, "a", true);
    let v = o.observe(3_000)["a"];
    assert!(!v.healthy && !v.milvus_ok, "{v:?}");
    assert_eq!(v.last_ok_wall_ms, Some(1_000));
    assert_eq!(v.unhealthy_for_ms, 1_000);
    // Heartbeats keep coming during the drill: still down.
    o.on_agent_heartbeat(5_000, "a", Some(7_000));
    o.on_probe(5_000, 5_000, "a", true);
    assert!(!o.observe(6_000)["a"].healthy);
    // A heartbeat without the drill ends it; the next good probe heals.
    o.on_agent_heartbeat(7_000, "a", None);
    o.on_probe(7_100, 7_100, "a", true);
    let v = o.observe(7_100)["a"];
    assert!(v.healthy && v.milvus_ok, "{v:?}");
    assert_eq!(v.last_ok_wall_ms, Some(7_100));
    // An outage whose agent went quiet ends by itself at its deadline.
    o.on_agent_heartbeat(8_000, "a", Some(500));
    o.on_probe(8_100, 8_100, "a", true);
    assert!(!o.observe(8_200)["a"].milvus_ok);
    o.on_agent_heartbeat(8_400, "a", Some(100));
    o.on_probe(8_600, 8_600, "a", true);
    assert!(o.observe(8_600)["a"].milvus_ok);
}
// ---------------------------------------------------------------------------
// AgentRole
// ---------------------------------------------------------------------------

/// An agent whose local Milvus is healthy.
fn agent(me: &str, now: Millis) -> AgentRole {
    let mut a = AgentRole::new(t(), me.into(), now, Some(init()), 0);
    a.step(
        now,
        role::Input::MilvusHealth {
            healthy: true,
            last_ok_wall_ms: Some(now),
        },
    );
    a
}

/// Sends a heartbeat at `now` and returns its seq.
fn beat(a: &mut AgentRole, now: Millis) -> u64 {
    let acts = a.step(now, role::Input::HeartbeatDue { wall_ms: now });
    acts.iter()
        .find_map(|x| match x {
            role::Action::SendHeartbeat(h) => Some(h.seq),
            _ => None,
        })
        .expect("a heartbeat")
}

fn reply(seq: u64, c: &Cluster, lease: LeaseAnswer) -> role::Input {
    role::Input::Reply(HeartbeatReply {
        seq,
        cluster: Some(c.clone()),
        lease,
        leader: Some(1),
    })
}

#[test]
fn the_agent_acts_only_on_a_grant_counted_from_send_and_fences_when_it_runs_out() {
    let boot_wait = t().leader_may_act_at(0);
    let mut a = agent("a", 0);
    // A grant during the start-up wait does not make it act yet.
    let s = beat(&mut a, 100);
    a.step(200, reply(s, &init(), LeaseAnswer::Granted));
    assert!(!a.acting(200));
    let sent = boot_wait + 10;
    let s = beat(&mut a, sent);
    let acts = a.step(sent + 3_000, reply(s, &init(), LeaseAnswer::Granted));
    assert!(
        acts.contains(&role::Action::StartSource { epoch: 1 }),
        "{acts:?}"
    );
    assert!(
        acts.contains(&role::Action::SwitchDns { epoch: 1 }),
        "{acts:?}"
    );
    // The lease runs from the send time, shortened for drift.
    let until = t().agent_lease_until(sent);
    assert!(a.acting(until - 1));
    assert!(!a.acting(until));
    let acts = a.step(until, role::Input::Tick);
    assert!(
        matches!(acts.as_slice(), [role::Action::StopSource { .. }]),
        "{acts:?}"
    );
}

#[test]
fn an_agent_whose_milvus_is_unhealthy_neither_takes_nor_retakes_the_primary_role() {
    let mut a = agent("a", 0);
    let sent = t().leader_may_act_at(0) + 10;
    let sick = |healthy| role::Input::MilvusHealth {
        healthy,
        last_ok_wall_ms: Some(0),
    };
    // Granted, but its Milvus is down: it does not start acting.
    a.step(sent, sick(false));
    let s = beat(&mut a, sent);
    let acts = a.step(sent + 5, reply(s, &init(), LeaseAnswer::Granted));
    assert!(!a.acting(sent + 5), "{acts:?}");
    assert!(
        !acts.contains(&role::Action::StartSource { epoch: 1 }),
        "{acts:?}"
    );
    assert!(a.describe(sent + 5).contains("Milvus is unhealthy"));
    // Healthy again within the lease: it acts; the deadline is the lease's.
    let acts = a.step(sent + 6, sick(true));
    assert!(
        acts.contains(&role::Action::StartSource { epoch: 1 }),
        "{acts:?}"
    );
    let until = t().agent_lease_until(sent);
    assert_eq!(a.acting_until(sent + 6), Some(until));
    // Its Milvus dies while acting: it stops at once, lease or not.
    let acts = a.step(sent + 7, sick(false));
    assert!(
        matches!(acts.as_slice(), [role::Action::StopSource { .. }]),
        "{acts:?}"
    );
    assert_eq!(a.acting_until(sent + 7), None);
}

#[test]
fn a_revoked_primary_releases_and_ignores_grants_for_older_heartbeats() {
    let mut a = agent("a", 0);
    let now = t().leader_may_act_at(0) + 10;
    let old = beat(&mut a, now);
    let newer = beat(&mut a, now + 1);
    a.step(now + 2, reply(newer, &init(), LeaseAnswer::Revoked));
    assert!(!a.acting(now + 2));
    // A late grant for the heartbeat sent before the release is ignored.
    a.step(now + 3, reply(old, &init(), LeaseAnswer::Granted));
    assert!(!a.acting(now + 3));
}

fn answered(acts: &[role::Action]) -> Option<bool> {
    acts.iter().find_map(|x| match x {
        role::Action::AnswerFailsafe(ans) => Some(ans.ok),
        _ => None,
    })
}

#[test]
fn failsafe_is_asked_only_without_recent_grants_and_answered_only_without_a_newer_epoch() {
    let mut a = agent("a", 0);
    a.step(
        0,
        role::Input::MilvusHealth {
            healthy: true,
            last_ok_wall_ms: Some(0),
        },
    );
    let acts = a.step(10, role::Input::HeartbeatDue { wall_ms: 10 });
    assert!(
        acts.contains(&role::Action::AskFailsafe { epoch: 1 }),
        "{acts:?}"
    );
    // With an unhealthy Milvus, it does not ask.
    a.step(
        20,
        role::Input::MilvusHealth {
            healthy: false,
            last_ok_wall_ms: Some(0),
        },
    );
    let acts = a.step(30, role::Input::HeartbeatDue { wall_ms: 30 });
    assert!(
        !acts
            .iter()
            .any(|x| matches!(x, role::Action::AskFailsafe { .. })),
        "{acts:?}"
    );

    // The standby answers yes at its epoch, and then may not act before
    // the lengthened promise has run out.
    let mut b = agent("b", 0);
    let acts = b.step(50_000, role::Input::FailsafeAsked { epoch: 1 });
    assert_eq!(answered(&acts), Some(true), "{acts:?}");
    // Promoted at epoch 2 with a grant right away: still not acting until
    // the promise expires.
    let c2 = failed_over_to_b(2);
    b.step(50_001, role::Input::Learned(c2.clone()));
    let s = beat(&mut b, 50_001);
    b.step(50_002, reply(s, &c2, LeaseAnswer::Granted));
    let promise = t().witness_lease_until(50_000);
    // It holds a valid lease, but its promise to the old primary stands.
    assert!(b.lease_until().is_some_and(|u| u > 50_003));
    assert!(!b.acting(50_003));
    assert!(
        b.describe(50_003).contains("failsafe promise"),
        "{}",
        b.describe(50_003)
    );
    let s = beat(&mut b, promise);
    b.step(promise + 1, reply(s, &c2, LeaseAnswer::Granted));
    assert!(b.acting(promise + 1));
    // Knowing epoch 2, it refuses to confirm epoch 1 to the old primary.
    let acts = b.step(promise + 2, role::Input::FailsafeAsked { epoch: 1 });
    assert_eq!(answered(&acts), Some(false), "{acts:?}");
}

#[test]
fn a_newer_epoch_makes_the_old_primary_a_sink() {
    let mut a = agent("a", 0);
    let now = t().leader_may_act_at(0) + 10;
    let s = beat(&mut a, now);
    a.step(now + 1, reply(s, &init(), LeaseAnswer::Granted));
    assert!(a.acting(now + 1));
    let acts = a.step(now + 2, role::Input::Learned(failed_over_to_b(3)));
    assert!(
        acts.contains(&role::Action::BecomeSink { epoch: 2 }),
        "{acts:?}"
    );
    assert!(
        acts.iter()
            .any(|x| matches!(x, role::Action::StopSource { .. })),
        "{acts:?}"
    );
    assert!(!a.acting(now + 3));
    assert_eq!(a.epoch(), 2);
}

#[test]
fn anti_flap_holds_a_second_failover_within_the_window_unless_forced() {
    let last = 1_000_000;
    let c = resynced_after_failover(last);
    let mut d = leader(&c, 0);
    failover_due_in(&mut d, 50_000, "b", "a", 2);
    let held = tick_wall(&mut d, 50_000, last + 1_000);
    assert!(
        matches!(held.as_slice(), [Action::Alert { reason }] if reason.contains("anti-flap")),
        "{held:?}"
    );
    // Past the window, it proceeds.
    let (from, to, ..) = proposed_failover(&tick_wall(&mut d, 50_100, last + t().anti_flap_ms));
    assert_eq!((from, to.as_str()), (2, "a"));
}

#[test]
fn no_automatic_failback_to_a_datacenter_awaiting_resync() {
    // b is primary at epoch 2; a was demoted and is not resynchronised.
    let mut d = leader(&failed_over_to_b(1), 0);
    failover_due_in(&mut d, 2_000_000, "b", "a", 2);
    let held = tick(&mut d, 2_000_000);
    assert!(
        matches!(held.as_slice(), [Action::Alert { reason }] if reason.contains("no automatic failback")),
        "{held:?}"
    );
    // After the operator marks it resynced, the failover may go.
    let c = resynced_after_failover(1);
    assert_eq!(d.step(2_000_001, Input::Applied(c)), vec![]);
    let (from, to, ..) = proposed_failover(&tick(&mut d, 2_000_002));
    assert_eq!((from, to.as_str()), (2, "a"));
}

// ---------------------------------------------------------------------------
// AgentRole: drain, promotion at a newer epoch, failsafe confirmation
// ---------------------------------------------------------------------------

/// An agent of `a` acting on a grant for a heartbeat sent at `sent`.
fn acting_primary(sent: Millis) -> AgentRole {
    let mut a = agent("a", 0);
    let s = beat(&mut a, sent);
    assert_eq!(
        a.step(sent + 1, reply(s, &init(), LeaseAnswer::Granted)),
        vec![
            role::Action::StartSource { epoch: 1 },
            role::Action::SwitchDns { epoch: 1 }
        ]
    );
    a
}

#[test]
fn a_drained_primary_releases_its_lease() {
    let sent = t().leader_may_act_at(0) + 10;
    let mut a = acting_primary(sent);
    // Drained without a drain asked: ignored.
    let drained = role::Input::Drained {
        epoch: 1,
        snapshot_wall_ms: 7,
    };
    assert_eq!(a.step(sent + 2, drained), vec![]);
    assert!(a.acting(sent + 2));
    // The switchover is learned: drain, still acting meanwhile.
    let sw = switching_to_b(sent);
    assert_eq!(
        a.step(sent + 3, role::Input::Learned(sw.clone())),
        vec![role::Action::Persist(sw), role::Action::Drain { epoch: 1 }]
    );
    assert!(a.acting(sent + 3));
    // A drain report for another epoch is ignored.
    let other = role::Input::Drained {
        epoch: 2,
        snapshot_wall_ms: 8,
    };
    assert_eq!(a.step(sent + 4, other), vec![]);
    assert!(a.acting(sent + 4));
    let done = role::Input::Drained {
        epoch: 1,
        snapshot_wall_ms: 9,
    };
    assert_eq!(
        a.step(sent + 5, done),
        vec![role::Action::StopSource {
            reason: "primary at epoch 1 but not acting: lease released (drained or revoked)".into()
        }]
    );
    // The next heartbeat carries the release and the drained snapshot; a
    // grant for it does not make the agent act again.
    let acts = a.step(sent + 6, role::Input::HeartbeatDue { wall_ms: sent + 6 });
    let h = match acts.as_slice() {
        [role::Action::SendHeartbeat(h)] => h.clone(),
        other => panic!("{other:?}"),
    };
    assert!(h.released && !h.acting_primary);
    assert_eq!(h.drained_snapshot_wall_ms, Some(9));
    assert_eq!(
        a.step(
            sent + 7,
            reply(h.seq, &switching_to_b(sent), LeaseAnswer::Granted)
        ),
        vec![]
    );
    assert!(!a.acting(sent + 7));
}

#[test]
fn promoted_at_a_newer_epoch_the_agent_acts_and_switches_dns_only_once_granted() {
    let mut b = AgentRole::new(t(), "b".into(), 0, Some(init()), 0);
    assert_eq!(
        b.step(
            0,
            role::Input::MilvusHealth {
                healthy: true,
                last_ok_wall_ms: Some(0)
            }
        ),
        vec![role::Action::BecomeSink { epoch: 1 }]
    );
    let now = t().leader_may_act_at(0) + 10;
    let old = beat(&mut b, now);
    // The reply brings epoch 2 with b primary, granting a heartbeat sent
    // before b knew: ignored.
    let c2 = failed_over_to_b(3);
    assert_eq!(
        b.step(now + 1, reply(old, &c2, LeaseAnswer::Granted)),
        vec![role::Action::Persist(c2.clone())]
    );
    assert!(!b.acting(now + 1));
    let s = beat(&mut b, now + 2);
    assert_eq!(
        b.step(now + 3, reply(s, &c2, LeaseAnswer::Granted)),
        vec![
            role::Action::StartSource { epoch: 2 },
            role::Action::SwitchDns { epoch: 2 }
        ]
    );
    assert_eq!(b.describe(now + 3), "primary at epoch 2 via witness lease");
}

#[test]
fn a_failsafe_confirmation_keeps_the_primary_acting_for_a_shortened_lease() {
    let now = t().leader_may_act_at(0) + 10;
    let mut a = agent("a", 0);
    let answered = |ok: bool, epoch: Epoch| role::Input::FailsafeAnswered {
        sent_at: now,
        epoch,
        answer: role::FailsafeAnswer {
            ok,
            cluster: Some(init()),
        },
    };
    // Refused, or for another epoch: nothing.
    assert_eq!(a.step(now + 100, answered(false, 1)), vec![]);
    assert_eq!(a.step(now + 100, answered(true, 0)), vec![]);
    assert!(!a.acting(now + 100));
    assert_eq!(
        a.step(now + 100, answered(true, 1)),
        vec![
            role::Action::StartSource { epoch: 1 },
            role::Action::SwitchDns { epoch: 1 }
        ]
    );
    assert_eq!(a.lease_until(), None);
    let until = t().agent_lease_until(now);
    assert!(a.acting(until - 1));
    assert_eq!(
        a.step(until, role::Input::Tick),
        vec![role::Action::StopSource {
            reason: "primary at epoch 1 but not acting: no valid lease: fenced".into()
        }]
    );
}

#[test]
fn a_switchover_is_refused_by_a_witness_that_is_not_leader() {
    let mut d = Decider::new(t(), 3);
    assert_eq!(d.step(0, Input::Applied(init())), vec![]);
    assert_eq!(
        lease(&mut d, 50_000, standby("b", 1, 49_000)),
        LeaseAnswer::NotLeader
    );
    let req = OperatorRequest::Switchover {
        to: "b".into(),
        by: "operator".into(),
    };
    assert_eq!(
        op(&mut d, 50_000, req),
        refused("not the leader; ask the leader")
    );
}

#[test]
fn a_new_leader_keeps_the_heartbeats_it_received_as_a_follower() {
    // A follower hears the standby, then becomes the leader: a switchover
    // asked at once is judged on that heartbeat (still fresh), not refused
    // for "no heartbeat from the standby".
    let mut d = Decider::new(t(), 3);
    assert_eq!(d.step(0, Input::Applied(init())), vec![]);
    assert_eq!(
        lease(&mut d, 100, standby("b", 1, 50)),
        LeaseAnswer::NotLeader
    );
    assert_eq!(d.step(150, Input::BecameLeader), vec![]);
    let begin = op(
        &mut d,
        200,
        OperatorRequest::Switchover {
            to: "b".into(),
            by: "op".into(),
        },
    );
    assert!(
        matches!(
            begin.as_slice(),
            [Action::Propose(Command::BeginSwitchover { .. })]
        ),
        "{begin:?}"
    );
    // A heartbeat that is no longer fresh still does not count.
    let mut d = Decider::new(t(), 3);
    assert_eq!(d.step(0, Input::Applied(init())), vec![]);
    assert_eq!(
        lease(&mut d, 100, standby("b", 1, 50)),
        LeaseAnswer::NotLeader
    );
    assert_eq!(d.step(10_000, Input::BecameLeader), vec![]);
    let late = op(
        &mut d,
        10_000,
        OperatorRequest::Switchover {
            to: "b".into(),
            by: "op".into(),
        },
    );
    assert!(
        !matches!(late.as_slice(), [Action::Propose(_)]),
        "a stale heartbeat must not make the standby ready: {late:?}"
    );
}
