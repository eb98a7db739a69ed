//! Seeded randomized simulation of the failover protocol.
//!
//! The real decision cores ([`Decider`], [`Observer`], [`AgentRole`]) run
//! against a simulated world: three witnesses, two agents, two Milvus
//! servers, clocks whose rates drift within the configured bound, a network
//! that delays, drops and partitions any pair, and crashes and restarts of
//! everything. Raft is abstracted to what it guarantees: at most one leader
//! per term, a leader commits only with a majority reachable, committed
//! entries survive crashes, and leadership is confirmed with a majority
//! before a lease is granted.
//!
//! Invariants are checked at every step; see [`World::check`]. A failing
//! seed prints the command that replays it with a full trace.

// Indices name the nodes of the simulated network.
#![allow(clippy::needless_range_loop)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use dr_witness::decide::{
    self, Action as WAction, Decider, HeartbeatReply, Input as WInput, LeaseAnswer, Observer,
    OperatorRequest,
};
use dr_witness::model::{Cluster, Command, Epoch};
use dr_witness::role::{Action as AAction, AgentRole, FailsafeAnswer, Input as AInput};
use dr_witness::timing::{Millis, Timing};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const W: usize = 3;
const DCS: [&str; 2] = ["a", "b"];
/// Simulated step.
const DT: u64 = 25;
/// Faults are injected until this time; afterwards everything heals.
const FAULT_UNTIL: u64 = 60_000;

/// Network nodes: witnesses 0..3, agents 3..5, Milvus servers 5..7.
fn wnode(i: usize) -> usize {
    i
}
fn anode(i: usize) -> usize {
    3 + i
}
fn mnode(i: usize) -> usize {
    5 + i
}
const NODES: usize = 7;

#[derive(Clone, Copy)]
struct Clock {
    offset: f64,
    rate: f64,
}

impl Clock {
    fn local(&self, real: u64) -> Millis {
        (self.offset + real as f64 * self.rate).floor() as Millis
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Heartbeat(decide::AgentHeartbeat),
    Reply(HeartbeatReply),
    Observation {
        from: usize,
        obs: decide::Observation,
    },
    AskFailsafe {
        epoch: Epoch,
        sent_at: Millis,
    },
    Answer {
        epoch: Epoch,
        sent_at: Millis,
        answer: FailsafeAnswer,
    },
}

struct Witness {
    up: bool,
    clock: Clock,
    term: u64,
    leader: bool,
    applied: usize,
    decider: Decider,
    observer: Observer,
    next_beat: Millis,
}

struct Agent {
    up: bool,
    clock: Clock,
    role: AgentRole,
    persisted: Option<Cluster>,
    next_beat: Millis,
    /// A drain finishes at this real time (final pass acked).
    drain_done_at: Option<(u64, Epoch)>,
    restarts: u64,
}

enum Undo {
    Witness(usize),
    Agent(usize),
    Restart(usize),
    Milvus(usize),
    Links([[bool; NODES]; NODES]),
}

struct World {
    undo: Vec<(u64, Undo)>,
    seed: u64,
    rng: StdRng,
    t: u64,
    timing: Timing,
    witnesses: Vec<Witness>,
    agents: Vec<Agent>,
    milvus_up: [bool; 2],
    blocked: [[bool; NODES]; NODES],
    loss: f64,
    max_delay: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    msgs: BTreeMap<u64, (usize, usize, Msg)>,
    next_msg: u64,
    /// Committed log and the state after each entry.
    log: Vec<Command>,
    states: Vec<Cluster>,
    epoch_owner: BTreeMap<Epoch, String>,
    max_known_epoch: Vec<Epoch>,
    trace: Vec<String>,
    verbose: bool,
    failovers: u64,
    switchovers: u64,
}

fn wall(clock: &Clock, real: u64) -> u64 {
    // Wall clocks are NTP-disciplined: real time plus a small offset.
    1_700_000_000_000 + real + (clock.offset as u64 % 50)
}

impl World {
    fn new(seed: u64, verbose: bool) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut timing = Timing::fast();
        timing.anti_flap_ms = [5_000, 20_000, 60_000][rng.gen_range(0..3)];
        timing.data_loss_budget_ms = [1_000, 10_000][rng.gen_range(0..2)];
        let d = timing.max_drift;
        let clock = |rng: &mut StdRng| Clock {
            offset: rng.gen_range(0.0..1_000_000.0),
            // Clock rates at the edges of the bound are the dangerous ones.
            rate: [1.0 - d, 1.0 + d, 1.0 + rng.gen_range(-d..=d)][rng.gen_range(0..3)],
        };
        let now0 = 0;
        let witnesses = (0..W)
            .map(|_| {
                let c = clock(&mut rng);
                Witness {
                    up: true,
                    clock: c,
                    term: 0,
                    leader: false,
                    applied: 0,
                    decider: Decider::new(timing, W),
                    observer: Observer::new(timing, c.local(now0), &DCS.map(String::from)),
                    next_beat: 0,
                }
            })
            .collect();
        let agents = (0..2)
            .map(|i| {
                let c = clock(&mut rng);
                Agent {
                    up: true,
                    clock: c,
                    role: AgentRole::new(timing, DCS[i].into(), c.local(now0), None, 0),
                    persisted: None,
                    next_beat: 0,
                    drain_done_at: None,
                    restarts: 0,
                }
            })
            .collect();
        let init = Command::Init {
            primary: "a".into(),
            datacenters: DCS.map(String::from).to_vec(),
            wall_ms: 0,
        };
        let mut s0 = Cluster::default();
        s0.apply(&init).unwrap();
        let mut w = World {
            undo: vec![],
            seed,
            loss: [0.0, 0.01, 0.1][rng.gen_range(0..3)],
            max_delay: [5, 50, 400, 1_200][rng.gen_range(0..4)],
            rng,
            t: 0,
            timing,
            witnesses,
            agents,
            milvus_up: [true, true],
            blocked: [[false; NODES]; NODES],
            queue: BinaryHeap::new(),
            msgs: BTreeMap::new(),
            next_msg: 0,
            log: vec![init],
            states: vec![s0],
            epoch_owner: BTreeMap::from([(1, "a".to_string())]),
            max_known_epoch: vec![0; W + 2],
            trace: vec![],
            verbose,
            failovers: 0,
            switchovers: 0,
        };
        w.note(format!(
            "seed {seed}: loss {} max_delay {} anti_flap {} budget {}",
            w.loss, w.max_delay, timing.anti_flap_ms, timing.data_loss_budget_ms
        ));
        w
    }

    fn note(&mut self, s: String) {
        let line = format!("{:>7} {s}", self.t);
        if self.verbose {
            println!("{line}");
        }
        self.trace.push(line);
        if self.trace.len() > 400 && !self.verbose {
            self.trace.drain(..200);
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.blocked[from][to] || self.rng.gen_bool(self.loss) {
            return;
        }
        let at = self.t + self.rng.gen_range(0..=self.max_delay);
        let id = self.next_msg;
        self.next_msg += 1;
        self.msgs.insert(id, (from, to, msg));
        self.queue.push(Reverse((at, id, to)));
    }

    fn committed(&self) -> &Cluster {
        self.states.last().unwrap()
    }

    /// Raft's leadership confirmation: a majority (with `w`) up, reachable
    /// and still in `w`'s term.
    fn confirmed(&self, w: usize) -> bool {
        let me = &self.witnesses[w];
        me.up
            && me.leader
            && (0..W)
                .filter(|&o| {
                    self.witnesses[o].up
                        && self.witnesses[o].term == me.term
                        && (o == w || !self.blocked[wnode(w)][wnode(o)])
                })
                .count()
                > W / 2
    }

    fn step_down(&mut self, w: usize) {
        if self.witnesses[w].leader {
            self.witnesses[w].leader = false;
            let now = self.witnesses[w].clock.local(self.t);
            self.witnesses[w].decider.step(now, WInput::LostLeadership);
            self.note(format!("w{w} steps down"));
        }
    }

    fn apply_to(&mut self, w: usize, idx: usize) {
        if self.witnesses[w].applied < idx {
            self.witnesses[w].applied = idx;
            let state = self.states[idx - 1].clone();
            let now = self.witnesses[w].clock.local(self.t);
            self.witnesses[w].decider.step(now, WInput::Applied(state));
        }
    }

    fn elect(&mut self) {
        let has_leader = (0..W).any(|w| self.confirmed(w));
        if has_leader {
            return;
        }
        // Election timeouts fire at random.
        if !self.rng.gen_bool(0.08) {
            return;
        }
        let c = self.rng.gen_range(0..W);
        if !self.witnesses[c].up {
            return;
        }
        let term = self.witnesses.iter().map(|w| w.term).max().unwrap() + 1;
        let voters: Vec<usize> = (0..W)
            .filter(|&o| self.witnesses[o].up && (o == c || !self.blocked[wnode(c)][wnode(o)]))
            .collect();
        if voters.len() <= W / 2 {
            return;
        }
        for &o in &voters {
            self.witnesses[o].term = term;
            self.step_down(o);
        }
        self.witnesses[c].leader = true;
        let len = self.log.len();
        self.apply_to(c, len);
        let now = self.witnesses[c].clock.local(self.t);
        self.witnesses[c].decider.step(now, WInput::BecameLeader);
        self.note(format!("w{c} leader at term {term}"));
    }

    fn commit(&mut self, w: usize, cmd: Command) {
        let now = self.witnesses[w].clock.local(self.t);
        if !self.confirmed(w) {
            self.witnesses[w].decider.step(now, WInput::ProposalFailed);
            self.step_down(w);
            return;
        }
        let old = self.committed().clone();
        let mut next = old.clone();
        let res = next.apply(&cmd);
        self.note(format!("w{w} commits {} -> {res:?}", cmd.describe()));
        if res.is_ok() && next.epoch != old.epoch {
            // No promotion while the old primary's lease may be valid.
            let oi = DCS.iter().position(|d| *d == old.primary).unwrap();
            let a = &self.agents[oi];
            let local = a.clock.local(self.t);
            if a.up {
                if let Some(u) = a.role.lease_until() {
                    assert!(
                        u <= local,
                        "epoch {} committed while {}'s witness lease runs {} ms more",
                        next.epoch,
                        old.primary,
                        u - local
                    );
                }
            }
            // An epoch is never granted twice.
            assert!(
                self.epoch_owner
                    .insert(next.epoch, next.primary.clone())
                    .is_none(),
                "epoch {} granted twice",
                next.epoch
            );
            match cmd {
                Command::Failover { .. } => self.failovers += 1,
                _ => self.switchovers += 1,
            }
        }
        self.log.push(cmd);
        self.states.push(next);
        let len = self.log.len();
        for o in 0..W {
            if self.witnesses[o].up && (o == w || !self.blocked[wnode(w)][wnode(o)]) {
                self.apply_to(o, len);
            }
        }
    }

    fn run_witness_actions(&mut self, w: usize, actions: Vec<WAction>, reply_to: Option<usize>) {
        for a in actions {
            match a {
                WAction::Reply(mut r) => {
                    if r.lease == LeaseAnswer::Granted && !self.confirmed(w) {
                        r.lease = LeaseAnswer::NotLeader;
                        self.step_down(w);
                    }
                    let applied = self.witnesses[w].applied;
                    r.cluster = (applied > 0).then(|| self.states[applied - 1].clone());
                    if let Some(to) = reply_to {
                        self.send(wnode(w), anode(to), Msg::Reply(r));
                    }
                }
                WAction::Propose(cmd) => self.commit(w, cmd),
                WAction::Alert { reason } => self.note(format!("w{w} ALERT {reason}")),
                WAction::OperatorReply(r) => self.note(format!("w{w} operator: {r:?}")),
            }
        }
    }

    fn run_agent_actions(&mut self, i: usize, actions: Vec<AAction>) {
        let local = self.agents[i].clock.local(self.t);
        for a in actions {
            match a {
                AAction::SendHeartbeat(hb) => {
                    for w in 0..W {
                        self.send(anode(i), wnode(w), Msg::Heartbeat(hb.clone()));
                    }
                }
                AAction::AskFailsafe { epoch } => self.send(
                    anode(i),
                    anode(1 - i),
                    Msg::AskFailsafe {
                        epoch,
                        sent_at: local,
                    },
                ),
                AAction::AnswerFailsafe(_) => unreachable!("answered inline"),
                AAction::StartSource { epoch } => self.note(format!(
                    "{} STARTS acting as primary at epoch {epoch}",
                    DCS[i]
                )),
                AAction::StopSource { reason } => {
                    self.note(format!("{} stops acting: {reason}", DCS[i]))
                }
                AAction::Drain { epoch } => {
                    let at = self.t + self.rng.gen_range(100..1_500);
                    self.agents[i].drain_done_at = Some((at, epoch));
                }
                AAction::BecomeSink { .. } | AAction::SwitchDns { .. } => {}
                AAction::Persist(c) => {
                    let promoted = c.primary == DCS[i]
                        && self.agents[i]
                            .persisted
                            .as_ref()
                            .is_some_and(|p| p.epoch < c.epoch);
                    self.agents[i].persisted = Some(c);
                    if promoted && self.t < FAULT_UNTIL && self.rng.gen_bool(0.3) {
                        // Crash at the worst moment: just promoted, with
                        // failsafe promises to the peer possibly pending.
                        self.undo.push((self.t, Undo::Restart(i)));
                    }
                }
            }
        }
    }

    fn deliver(&mut self, to: usize, from: usize, msg: Msg) {
        if to < 3 {
            let w = to;
            if !self.witnesses[w].up {
                return;
            }
            let now = self.witnesses[w].clock.local(self.t);
            match msg {
                Msg::Heartbeat(hb) => {
                    let ai = from - 3;
                    self.witnesses[w]
                        .observer
                        .on_agent_heartbeat(now, &hb.dc, hb.drill_outage_ms);
                    let acts = self.witnesses[w].decider.step(now, WInput::Heartbeat(hb));
                    self.run_witness_actions(w, acts, Some(ai));
                }
                Msg::Observation { from, obs } => {
                    self.witnesses[w].decider.step(
                        now,
                        WInput::Observation {
                            from: from as u64,
                            obs,
                        },
                    );
                }
                _ => unreachable!(),
            }
        } else {
            let i = to - 3;
            if !self.agents[i].up {
                return;
            }
            let now = self.agents[i].clock.local(self.t);
            let acts = match msg {
                Msg::Reply(r) => self.agents[i].role.step(now, AInput::Reply(r)),
                Msg::AskFailsafe { epoch, sent_at } => {
                    let acts = self.agents[i]
                        .role
                        .step(now, AInput::FailsafeAsked { epoch });
                    let mut rest = vec![];
                    for a in acts {
                        if let AAction::AnswerFailsafe(answer) = a {
                            self.send(
                                anode(i),
                                anode(1 - i),
                                Msg::Answer {
                                    epoch,
                                    sent_at,
                                    answer,
                                },
                            );
                        } else {
                            rest.push(a);
                        }
                    }
                    rest
                }
                Msg::Answer {
                    epoch,
                    sent_at,
                    answer,
                } => self.agents[i].role.step(
                    now,
                    AInput::FailsafeAnswered {
                        sent_at,
                        epoch,
                        answer,
                    },
                ),
                _ => unreachable!(),
            };
            self.run_agent_actions(i, acts);
        }
    }

    fn leader(&self) -> Option<usize> {
        (0..W).find(|&w| self.witnesses[w].up && self.witnesses[w].leader)
    }

    fn primary_index(&self) -> usize {
        let p = self.committed().primary.clone();
        DCS.iter().position(|d| *d == p).unwrap()
    }

    /// One fault; targeted ones undo themselves after a random time.
    fn inject_fault(&mut self) {
        let r = self.rng.gen_range(0..100);
        let later = self.t + self.rng.gen_range(0..12_000);
        let p = self.primary_index();
        match r {
            0..=9 => {
                // The witness leader crashes and comes back.
                if let Some(l) = self.leader() {
                    self.set_witness(l, false);
                    self.undo
                        .push((self.t + self.rng.gen_range(0..4_000), Undo::Witness(l)));
                }
            }
            10..=14 => {
                let w = self.rng.gen_range(0..W);
                let up = !self.witnesses[w].up;
                self.set_witness(w, up);
            }
            15..=24 => {
                // Either agent crashes and restarts (the standby's restart
                // forgets failsafe promises it gave).
                let i = self.rng.gen_range(0..2);
                self.set_agent(i, false);
                self.undo
                    .push((self.t + self.rng.gen_range(0..3_000), Undo::Agent(i)));
            }
            25..=34 => {
                self.milvus_up[p] = false;
                self.note(format!("milvus {} down", DCS[p]));
                self.undo.push((later, Undo::Milvus(p)));
            }
            35..=39 => {
                let i = self.rng.gen_range(0..2);
                self.milvus_up[i] = !self.milvus_up[i];
                self.note(format!("milvus {} up={}", DCS[i], self.milvus_up[i]));
            }
            40..=49 => {
                // Cut the primary agent off from every witness.
                let saved = self.blocked;
                for w in 0..W {
                    self.blocked[anode(p)][wnode(w)] = true;
                    self.blocked[wnode(w)][anode(p)] = true;
                }
                self.note(format!("agent {} cut off from the witnesses", DCS[p]));
                self.undo.push((later, Undo::Links(saved)));
                if self.rng.gen_bool(0.5) {
                    // The standby restarts during the cut, forgetting the
                    // failsafe promises it gave.
                    let at = self.rng.gen_range(self.t..later.max(self.t + 1));
                    self.undo.push((at, Undo::Restart(1 - p)));
                }
            }
            50..=54 => {
                // Isolate one witness.
                let saved = self.blocked;
                let w = self.rng.gen_range(0..W);
                for o in 0..NODES {
                    if o != w {
                        self.blocked[w][o] = true;
                        self.blocked[o][w] = true;
                    }
                }
                self.note(format!("w{w} isolated"));
                self.undo.push((later, Undo::Links(saved)));
            }
            55..=69 => {
                let a = self.rng.gen_range(0..NODES);
                let b = self.rng.gen_range(0..NODES);
                if a != b {
                    let v = !self.blocked[a][b];
                    self.blocked[a][b] = v;
                    if self.rng.gen_bool(0.8) {
                        self.blocked[b][a] = v;
                    }
                    self.note(format!("link {a}<->{b} blocked={v}"));
                }
            }
            70..=74 => {
                self.blocked = [[false; NODES]; NODES];
                self.note("network healed".into());
            }
            75..=86 => self.operator(OperatorRequest::Switchover {
                to: self.committed().standby().cloned().unwrap(),
                by: "sim".into(),
            }),
            87..=92 => self.operator(OperatorRequest::ForceFailover { by: "sim".into() }),
            _ => {
                if let Some(dc) = self.committed().needs_resync.iter().next().cloned() {
                    // The simulated agents export nothing: the operator
                    // gives divergent writes up.
                    self.operator(OperatorRequest::MarkResynced {
                        dc,
                        by: "sim".into(),
                        discard_divergent: true,
                    });
                }
            }
        }
    }

    fn run_undos(&mut self) {
        let due: Vec<Undo> = {
            let t = self.t;
            let (due, keep): (Vec<_>, Vec<_>) = self.undo.drain(..).partition(|(at, _)| *at <= t);
            self.undo = keep;
            due.into_iter().map(|(_, u)| u).collect()
        };
        for u in due {
            match u {
                Undo::Witness(w) => self.set_witness(w, true),
                Undo::Agent(i) => self.set_agent(i, true),
                Undo::Restart(i) => {
                    self.set_agent(i, false);
                    self.set_agent(i, true);
                }
                Undo::Milvus(i) => {
                    self.milvus_up[i] = true;
                    self.note(format!("milvus {} up", DCS[i]));
                }
                Undo::Links(saved) => {
                    self.blocked = saved;
                    self.note("links restored".into());
                }
            }
        }
    }

    fn operator(&mut self, req: OperatorRequest) {
        if let Some(w) = self.leader() {
            let now = self.witnesses[w].clock.local(self.t);
            let wall_ms = wall(&self.witnesses[w].clock, self.t);
            self.note(format!("operator -> w{w}: {req:?}"));
            let acts = self.witnesses[w]
                .decider
                .step(now, WInput::Operator { req, wall_ms });
            self.run_witness_actions(w, acts, None);
        }
    }

    fn set_witness(&mut self, w: usize, up: bool) {
        if self.witnesses[w].up == up {
            return;
        }
        self.note(format!("w{w} up={up}"));
        if up {
            // Restart: persistent term and log, fresh volatile state.
            let now = self.witnesses[w].clock.local(self.t);
            let wi = &mut self.witnesses[w];
            wi.up = true;
            wi.leader = false;
            wi.decider = Decider::new(self.timing, W);
            wi.observer = Observer::new(self.timing, now, &DCS.map(String::from));
            let applied = wi.applied;
            wi.applied = 0;
            self.apply_to(w, applied);
        } else {
            self.witnesses[w].up = false;
            self.witnesses[w].leader = false;
        }
    }

    fn set_agent(&mut self, i: usize, up: bool) {
        if self.agents[i].up == up {
            return;
        }
        self.note(format!("agent {} up={up}", DCS[i]));
        if up {
            let now = self.agents[i].clock.local(self.t);
            let persisted = self.agents[i].persisted.clone();
            self.agents[i].restarts += 1;
            let seq_base = self.agents[i].restarts * 1_000_000_000;
            self.agents[i].role =
                AgentRole::new(self.timing, DCS[i].into(), now, persisted, seq_base);
            self.agents[i].up = true;
            self.agents[i].drain_done_at = None;
        } else {
            self.agents[i].up = false;
        }
    }

    fn heal(&mut self) {
        self.undo.clear();
        self.blocked = [[false; NODES]; NODES];
        self.milvus_up = [true, true];
        for w in 0..W {
            self.set_witness(w, true);
        }
        for i in 0..2 {
            self.set_agent(i, true);
        }
        self.loss = 0.0;
        self.note("everything healed".into());
    }

    fn tick(&mut self) {
        self.elect();
        // Deliver due messages.
        while let Some(Reverse((at, id, to))) = self.queue.peek().copied() {
            if at > self.t {
                break;
            }
            self.queue.pop();
            let (from, _, msg) = self.msgs.remove(&id).unwrap();
            self.deliver(to, from, msg);
        }
        // Followers catch up with the log when reachable from a leader.
        if let Some(l) = (0..W).find(|&w| self.confirmed(w)) {
            let len = self.log.len();
            for o in 0..W {
                if self.witnesses[o].up && !self.blocked[wnode(l)][wnode(o)] {
                    self.apply_to(o, len);
                }
            }
        }
        // Witnesses: probes, observations, decisions.
        for w in 0..W {
            if !self.witnesses[w].up {
                continue;
            }
            let now = self.witnesses[w].clock.local(self.t);
            let wall_ms = wall(&self.witnesses[w].clock, self.t);
            if now >= self.witnesses[w].next_beat {
                self.witnesses[w].next_beat = now + self.timing.heartbeat_ms;
                for (i, dc) in DCS.iter().enumerate() {
                    let ok = self.milvus_up[i] && !self.blocked[wnode(w)][mnode(i)];
                    self.witnesses[w].observer.on_probe(now, wall_ms, dc, ok);
                }
                let obs = self.witnesses[w].observer.observe(now);
                for o in 0..W {
                    if o == w {
                        self.witnesses[w].decider.step(
                            now,
                            WInput::Observation {
                                from: w as u64,
                                obs: obs.clone(),
                            },
                        );
                    } else {
                        self.send(
                            wnode(w),
                            wnode(o),
                            Msg::Observation {
                                from: w,
                                obs: obs.clone(),
                            },
                        );
                    }
                }
            }
            let acts = self.witnesses[w]
                .decider
                .step(now, WInput::Tick { wall_ms });
            self.run_witness_actions(w, acts, None);
        }
        // Agents: health, replication, drains, heartbeats.
        for i in 0..2 {
            if !self.agents[i].up {
                continue;
            }
            let now = self.agents[i].clock.local(self.t);
            let wall_ms = wall(&self.agents[i].clock, self.t);
            let mut acts = self.agents[i].role.step(
                now,
                AInput::MilvusHealth {
                    healthy: self.milvus_up[i],
                    last_ok_wall_ms: self.milvus_up[i].then_some(wall_ms),
                },
            );
            let peer = 1 - i;
            let replicating = self.agents[i].role.acting(now)
                && self.agents[peer].up
                && self.milvus_up[i]
                && self.milvus_up[peer]
                && !self.blocked[anode(i)][anode(peer)];
            if replicating {
                let pnow = self.agents[peer].clock.local(self.t);
                let snap = wall_ms.saturating_sub(300);
                let a = self.agents[peer].role.step(
                    pnow,
                    AInput::Applied {
                        snapshot_wall_ms: snap,
                        lag_ms: Some(300),
                    },
                );
                self.run_agent_actions(peer, a);
            }
            if let Some((at, epoch)) = self.agents[i].drain_done_at {
                if self.t >= at {
                    self.agents[i].drain_done_at = None;
                    if replicating {
                        let pnow = self.agents[peer].clock.local(self.t);
                        let a = self.agents[peer].role.step(
                            pnow,
                            AInput::Applied {
                                snapshot_wall_ms: wall_ms,
                                lag_ms: Some(0),
                            },
                        );
                        self.run_agent_actions(peer, a);
                        acts.extend(self.agents[i].role.step(
                            now,
                            AInput::Drained {
                                epoch,
                                snapshot_wall_ms: wall_ms,
                            },
                        ));
                    } else {
                        // The final pass failed: drain again.
                        self.agents[i].drain_done_at = Some((self.t + 500, epoch));
                    }
                }
            }
            if now >= self.agents[i].next_beat {
                self.agents[i].next_beat = now + self.timing.heartbeat_ms;
                acts.extend(
                    self.agents[i]
                        .role
                        .step(now, AInput::HeartbeatDue { wall_ms }),
                );
            }
            self.run_agent_actions(i, acts);
        }
        self.check();
    }

    fn acting(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| {
                self.agents[i].up
                    && self.agents[i]
                        .role
                        .acting(self.agents[i].clock.local(self.t))
            })
            .collect()
    }

    /// The invariants, at every step.
    fn check(&mut self) {
        // At most one datacenter acts as primary at any instant.
        let acting = self.acting();
        assert!(acting.len() <= 1, "both datacenters act as primary");
        // Once a newer epoch is committed, no witness lease of an older
        // epoch is valid (the commit waited for it, or it was released).
        let committed = self.committed().epoch;
        for i in 0..2 {
            let a = &self.agents[i];
            let now = a.clock.local(self.t);
            if a.up && a.role.epoch() < committed && a.role.lease_until().is_some_and(|u| u > now) {
                panic!(
                    "{} holds a witness lease of epoch {} after epoch {committed} was committed",
                    DCS[i],
                    a.role.epoch()
                );
            }
        }
        // Epochs only grow, for every agent and witness, across restarts;
        // and every view agrees with the committed epoch -> primary.
        for i in 0..2 {
            if let Some(c) = self.agents[i].role.cluster() {
                let k = &mut self.max_known_epoch[W + i];
                assert!(
                    c.epoch >= *k,
                    "agent {} epoch went back {} -> {}",
                    DCS[i],
                    k,
                    c.epoch
                );
                *k = c.epoch;
                assert_eq!(
                    self.epoch_owner.get(&c.epoch),
                    Some(&c.primary),
                    "agent view disagrees"
                );
            }
        }
        for w in 0..W {
            let a = self.witnesses[w].applied;
            if a > 0 {
                let e = self.states[a - 1].epoch;
                let k = &mut self.max_known_epoch[w];
                assert!(e >= *k, "witness {w} epoch went back");
                *k = e;
            }
        }
        let mut last = 0;
        for s in &self.states {
            assert!(s.epoch >= last, "committed epoch went back");
            last = s.epoch;
        }
    }

    fn run(&mut self) {
        let end = FAULT_UNTIL + 2 * self.timing.confirmation_ms + 6 * self.timing.lease_ms + 5_000;
        let mut next_fault = self.rng.gen_range(0..3_000);
        while self.t < end {
            if self.t < FAULT_UNTIL && self.t >= next_fault {
                self.inject_fault();
                next_fault = self.t + self.rng.gen_range(0..4_000);
            }
            if self.t < FAULT_UNTIL {
                self.run_undos();
            }
            if self.t == FAULT_UNTIL {
                self.heal();
            }
            self.tick();
            self.t += DT;
        }
        // Once faults heal, exactly one primary, the committed one.
        let acting = self.acting();
        let primary = self.committed().primary.clone();
        assert_eq!(
            acting.iter().map(|&i| DCS[i]).collect::<Vec<_>>(),
            vec![primary.as_str()],
            "after healing, exactly the committed primary acts"
        );
    }
}

fn run_seed(seed: u64, verbose: bool) -> Result<(u64, u64), String> {
    let mut w = World::new(seed, verbose);
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run()));
    match res {
        Ok(()) => Ok((w.failovers, w.switchovers)),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let tail = w.trace[w.trace.len().saturating_sub(40)..].join("\n");
            Err(format!(
                "seed {} failed at t={} ms: {msg}\n{tail}\nreplay: SIM_SEED={seed} cargo test -p dr-witness --test simulation replay -- --nocapture",
                w.seed, w.t
            ))
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect("a number"))
}

/// 500 seeds per run (`SIM_SEEDS=N` for more, `SIM_BASE=B` to start
/// elsewhere). Fixed by default, so a run is reproducible.
#[test]
fn random_fault_schedules_keep_every_invariant() {
    let n = env_u64("SIM_SEEDS").unwrap_or(500);
    let base = env_u64("SIM_BASE").unwrap_or(0);
    let started = std::time::Instant::now();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = vec![];
    let (mut failovers, mut switchovers) = (0, 0);
    for seed in base..base + n {
        match run_seed(seed, false) {
            Ok((f, s)) => {
                failovers += f;
                switchovers += s;
            }
            Err(e) => failures.push(e),
        }
        if failures.len() >= 3 {
            break;
        }
    }
    std::panic::set_hook(hook);
    println!(
        "{n} seeds from {base} in {:.1?}: {failovers} failovers, {switchovers} switchovers committed",
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The schedules must actually exercise failover and switchover.
    assert!(
        failovers >= n / 10,
        "only {failovers} failovers in {n} seeds"
    );
    assert!(
        switchovers >= n / 10,
        "only {switchovers} switchovers in {n} seeds"
    );
}

/// `SIM_SEED=S cargo test -p dr-witness --test simulation replay -- --nocapture`
/// replays one seed with a full trace. Without SIM_SEED it replays seed 0.
#[test]
fn replay() {
    let seed = env_u64("SIM_SEED").unwrap_or(0);
    let verbose = std::env::var("SIM_SEED").is_ok();
    if let Err(e) = run_seed(seed, verbose) {
        panic!("{e}");
    }
}
