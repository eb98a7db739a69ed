//! The replicated witness state and the commands that change it.
//!
//! This is what the witness Raft group agrees on: the epoch, which
//! datacenter is primary in it, the phase, and an audit trail of every
//! decision with its evidence. Nothing else decides a primary. Applying a
//! command is deterministic and compare-and-swap on the epoch, so a command
//! proposed against a stale view is rejected, never applied twice.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A datacenter id, as in the agents' config.
pub type Dc = String;
pub type Epoch = u64;
/// Witness (Raft node) id.
pub type WitnessId = u64;

/// How many audit entries the replicated state keeps (oldest dropped).
pub const AUDIT_KEEP: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Stable,
    /// A planned switchover to `to` is draining the primary.
    SwitchingOver {
        to: Dc,
        started_wall_ms: u64,
    },
}

/// One audited decision or operator command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub wall_ms: u64,
    /// The epoch after the entry was applied.
    pub epoch: Epoch,
    pub what: String,
    /// The facts the decision rested on, or why it was rejected.
    pub evidence: String,
    /// What a role change came to, for programs (`what` is for people).
    #[serde(default)]
    pub outcome: Option<Outcome>,
}

/// The result of an applied role-change command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A planned switchover made `to` primary.
    SwitchoverComplete { to: Dc },
    /// A planned switchover was abandoned; the primary did not change.
    SwitchoverAborted { why: String },
    /// An unplanned failover made `to` primary.
    FailoverCommitted { to: Dc, forced: bool },
}

/// The replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// 0 until initialised.
    pub epoch: Epoch,
    pub primary: Dc,
    pub datacenters: Vec<Dc>,
    pub phase: Phase,
    pub last_failover_wall_ms: Option<u64>,
    /// Datacenters demoted by a failover and not resynchronised since: no
    /// automatic failover or switchover may pick them (no automatic failback).
    pub needs_resync: BTreeSet<Dc>,
    /// For a demoted datacenter: what became of the writes it held that it
    /// had not replicated (recorded by its agent before it resynchronises;
    /// `mark-resynced` waits for it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub divergent: BTreeMap<Dc, Divergent>,
    /// Commands applied so far (a newer view of the same epoch has more).
    pub version: u64,
}

/// A demoted datacenter's divergent writes, as its agent exported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergent {
    /// The epoch at which it was primary.
    pub primary_epoch: Epoch,
    /// Rows extra or changed there, compared with what it had replicated.
    pub rows: u64,
    /// Keys it had replicated and no longer holds.
    pub deleted_keys: u64,
    /// Where the rows were written (empty when there were none).
    pub location: String,
}

/// What the witness state machine holds: the cluster view agents see, and
/// the audit trail operators see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessState {
    pub cluster: Cluster,
    pub audit: Vec<AuditEntry>,
}

impl WitnessState {
    /// Applies a committed command; rejections are audited too and leave
    /// the cluster otherwise unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), String> {
        let res = self.cluster.apply(cmd);
        let (what, evidence) = match &res {
            Ok(()) => (cmd.describe(), cmd.evidence().to_string()),
            Err(e) => (format!("rejected: {}", cmd.describe()), e.clone()),
        };
        let outcome = match (cmd, &res) {
            (Command::CompleteSwitchover { to, .. }, Ok(())) => {
                Some(Outcome::SwitchoverComplete { to: to.clone() })
            }
            (Command::AbortSwitchover { evidence, .. }, Ok(())) => {
                Some(Outcome::SwitchoverAborted {
                    why: evidence.clone(),
                })
            }
            (Command::Failover { to, forced, .. }, Ok(())) => Some(Outcome::FailoverCommitted {
                to: to.clone(),
                forced: *forced,
            }),
            _ => None,
        };
        self.audit.push(AuditEntry {
            wall_ms: cmd.wall_ms(),
            epoch: self.cluster.epoch,
            what,
            evidence,
            outcome,
        });
        if self.audit.len() > AUDIT_KEEP {
            let drop = self.audit.len() - AUDIT_KEEP;
            self.audit.drain(..drop);
        }
        res
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            epoch: 0,
            primary: String::new(),
            datacenters: vec![],
            phase: Phase::Stable,
            last_failover_wall_ms: None,
            needs_resync: BTreeSet::new(),
            divergent: BTreeMap::new(),
            version: 0,
        }
    }
}

impl Cluster {
    /// The other datacenter (deployments have exactly two).
    pub fn standby(&self) -> Option<&Dc> {
        self.datacenters.iter().find(|d| **d != self.primary)
    }

    /// Applies a committed command (see [`WitnessState::apply`]).
    pub fn apply(&mut self, cmd: &Command) -> Result<(), String> {
        self.version += 1;
        self.apply_inner(cmd)
    }

    fn check_epoch(&self, from_epoch: Epoch) -> Result<(), String> {
        if self.epoch != from_epoch {
            return Err(format!(
                "proposed against epoch {from_epoch}, but the epoch is {}",
                self.epoch
            ));
        }
        Ok(())
    }

    fn apply_inner(&mut self, cmd: &Command) -> Result<(), String> {
        match cmd {
            Command::Init {
                primary,
                datacenters,
                ..
            } => {
                if self.epoch != 0 {
                    return Err(format!("already initialised at epoch {}", self.epoch));
                }
                if datacenters.len() != 2 || !datacenters.contains(primary) {
                    return Err("need exactly two datacenters including the primary".into());
                }
                self.epoch = 1;
                self.primary = primary.clone();
                self.datacenters = datacenters.clone();
                Ok(())
            }
            Command::Failover {
                from_epoch,
                to,
                wall_ms,
                ..
            } => {
                self.check_epoch(*from_epoch)?;
                if *to == self.primary || !self.datacenters.contains(to) {
                    return Err(format!("{to} is not the standby"));
                }
                let old = std::mem::replace(&mut self.primary, to.clone());
                self.epoch += 1;
                self.phase = Phase::Stable;
                self.last_failover_wall_ms = Some(*wall_ms);
                // A new demotion: whatever was kept before is another story.
                self.divergent.remove(&old);
                self.divergent.remove(to);
                self.needs_resync.insert(old);
                self.needs_resync.remove(to);
                Ok(())
            }
            Command::BeginSwitchover {
                from_epoch,
                to,
                wall_ms,
                ..
            } => {
                self.check_epoch(*from_epoch)?;
                if self.phase != Phase::Stable {
                    return Err("a switchover is already in progress".into());
                }
                if *to == self.primary || !self.datacenters.contains(to) {
                    return Err(format!("{to} is not the standby"));
                }
                if self.needs_resync.contains(to) {
                    return Err(format!("{to} must be resynchronised first"));
                }
                self.phase = Phase::SwitchingOver {
                    to: to.clone(),
                    started_wall_ms: *wall_ms,
                };
                Ok(())
            }
            Command::CompleteSwitchover { from_epoch, to, .. } => {
                self.check_epoch(*from_epoch)?;
                match &self.phase {
                    Phase::SwitchingOver { to: t, .. } if t == to => {}
                    _ => return Err("no switchover to that datacenter in progress".into()),
                }
                self.primary = to.clone();
                self.epoch += 1;
                self.phase = Phase::Stable;
                Ok(())
            }
            Command::AbortSwitchover { from_epoch, .. } => {
                self.check_epoch(*from_epoch)?;
                if self.phase == Phase::Stable {
                    return Err("no switchover in progress".into());
                }
                self.phase = Phase::Stable;
                Ok(())
            }
            Command::MarkResynced { dc, .. } => {
                if !self.needs_resync.remove(dc) {
                    return Err(format!("{dc} was not waiting for a resync"));
                }
                self.divergent.remove(dc);
                Ok(())
            }
            Command::DivergentKept { dc, kept, .. } => {
                if !self.needs_resync.contains(dc) {
                    return Err(format!(
                        "{dc} is not waiting for a resync (recorded in the audit only)"
                    ));
                }
                self.divergent.insert(dc.clone(), kept.clone());
                Ok(())
            }
            Command::Note { .. } => Ok(()),
        }
    }
}

/// A command the witness leader proposes through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Epoch 1 with the configured initial primary; only on an empty state.
    Init {
        primary: Dc,
        datacenters: Vec<Dc>,
        wall_ms: u64,
    },
    /// Unplanned failover to the standby; raises the epoch.
    Failover {
        from_epoch: Epoch,
        to: Dc,
        wall_ms: u64,
        /// An operator forced it, acknowledging possible data loss.
        forced: bool,
        evidence: String,
    },
    BeginSwitchover {
        from_epoch: Epoch,
        to: Dc,
        wall_ms: u64,
        evidence: String,
    },
    CompleteSwitchover {
        from_epoch: Epoch,
        to: Dc,
        wall_ms: u64,
        evidence: String,
    },
    AbortSwitchover {
        from_epoch: Epoch,
        wall_ms: u64,
        evidence: String,
    },
    /// An operator states that `dc` has been resynchronised from the
    /// primary, making it eligible again.
    MarkResynced {
        dc: Dc,
        wall_ms: u64,
        evidence: String,
    },
    /// A demoted datacenter's agent kept the writes it held that it had
    /// not replicated, before resynchronising.
    DivergentKept {
        dc: Dc,
        wall_ms: u64,
        kept: Divergent,
        evidence: String,
    },
    /// An audited event that changes nothing (a held failover, a forced
    /// failover request).
    Note {
        wall_ms: u64,
        what: String,
        evidence: String,
    },
}

impl Command {
    pub fn wall_ms(&self) -> u64 {
        match self {
            Command::Init { wall_ms, .. }
            | Command::Failover { wall_ms, .. }
            | Command::BeginSwitchover { wall_ms, .. }
            | Command::CompleteSwitchover { wall_ms, .. }
            | Command::AbortSwitchover { wall_ms, .. }
            | Command::MarkResynced { wall_ms, .. }
            | Command::DivergentKept { wall_ms, .. }
            | Command::Note { wall_ms, .. } => *wall_ms,
        }
    }

    pub fn evidence(&self) -> &str {
        match self {
            Command::Init { .. } => "configured initial primary",
            Command::Failover { evidence, .. }
            | Command::BeginSwitchover { evidence, .. }
            | Command::CompleteSwitchover { evidence, .. }
            | Command::AbortSwitchover { evidence, .. }
            | Command::MarkResynced { evidence, .. }
            | Command::DivergentKept { evidence, .. }
            | Command::Note { evidence, .. } => evidence,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Command::Init { primary, .. } => format!("init: {primary} primary at epoch 1"),
            Command::Failover {
                from_epoch,
                to,
                forced,
                ..
            } => format!(
                "{}failover to {to} (epoch {from_epoch} -> {})",
                if *forced { "forced " } else { "" },
                from_epoch + 1
            ),
            Command::BeginSwitchover { from_epoch, to, .. } => {
                format!("switchover to {to} begins at epoch {from_epoch}")
            }
            Command::CompleteSwitchover { from_epoch, to, .. } => format!(
                "switchover to {to} complete (epoch {from_epoch} -> {})",
                from_epoch + 1
            ),
            Command::AbortSwitchover { from_epoch, .. } => {
                format!("switchover aborted at epoch {from_epoch}")
            }
            Command::MarkResynced { dc, .. } => format!("{dc} marked resynchronised"),
            Command::DivergentKept { dc, kept, .. } => {
                if kept.rows == 0 && kept.deleted_keys == 0 {
                    format!(
                        "{dc} held no divergent writes from epoch {}",
                        kept.primary_epoch
                    )
                } else {
                    format!(
                        "{dc} kept its divergent writes from epoch {}: {} rows, {} deleted keys, at {}",
                        kept.primary_epoch, kept.rows, kept.deleted_keys, kept.location
                    )
                }
            }
            Command::Note { what, .. } => what.clone(),
        }
    }

    /// Whether applying this command raises the epoch when accepted.
    pub fn raises_epoch(&self) -> bool {
        matches!(
            self,
            Command::Init { .. } | Command::Failover { .. } | Command::CompleteSwitchover { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() -> WitnessState {
        let mut c = WitnessState::default();
        c.apply(&Command::Init {
            primary: "a".into(),
            datacenters: vec!["a".into(), "b".into()],
            wall_ms: 1,
        })
        .unwrap();
        c
    }

    fn failover(from_epoch: Epoch, to: &str) -> Command {
        Command::Failover {
            from_epoch,
            to: to.into(),
            wall_ms: 2,
            forced: false,
            evidence: "test".into(),
        }
    }

    #[test]
    fn failover_is_compare_and_swap_on_the_epoch() {
        let mut c = init();
        c.apply(&failover(1, "b")).unwrap();
        assert_eq!((c.cluster.epoch, c.cluster.primary.as_str()), (2, "b"));
        // The same decision replayed (e.g. proposed twice) is rejected.
        assert!(c.apply(&failover(1, "b")).is_err());
        assert_eq!(c.cluster.epoch, 2);
        assert!(c.cluster.needs_resync.contains("a"));
        assert!(c.audit.last().unwrap().what.starts_with("rejected"));
        // Init never runs twice.
        assert!(c
            .apply(&Command::Init {
                primary: "a".into(),
                datacenters: vec!["a".into(), "b".into()],
                wall_ms: 3
            })
            .is_err());
        assert_eq!(c.cluster.epoch, 2);
    }

    fn kept(dc: &str, primary_epoch: Epoch, rows: u64) -> Command {
        Command::DivergentKept {
            dc: dc.into(),
            wall_ms: 3,
            kept: Divergent {
                primary_epoch,
                rows,
                deleted_keys: 0,
                location: "s3://b/divergent/x/".into(),
            },
            evidence: String::new(),
        }
    }

    #[test]
    fn divergent_writes_are_recorded_per_demotion() {
        let mut c = init();
        // Not demoted: nothing to record.
        assert!(c.apply(&kept("a", 1, 5)).is_err());
        c.apply(&failover(1, "b")).unwrap();
        c.apply(&kept("a", 1, 5)).unwrap();
        assert_eq!(c.cluster.divergent["a"].rows, 5);
        assert!(c.audit.last().unwrap().what.contains("5 rows"));
        // Resynchronised: the record goes with the demotion.
        c.apply(&Command::MarkResynced {
            dc: "a".into(),
            wall_ms: 4,
            evidence: String::new(),
        })
        .unwrap();
        assert!(c.cluster.divergent.is_empty());
        // A record from an earlier demotion never carries over to a new one.
        let mut c = init();
        c.apply(&failover(1, "b")).unwrap();
        c.apply(&kept("a", 1, 0)).unwrap();
        c.apply(&failover(2, "a")).unwrap();
        c.apply(&failover(3, "b")).unwrap();
        assert!(c.cluster.divergent.is_empty());
        // And the state written before this field existed still reads.
        let mut v = serde_json::to_value(&c.cluster).unwrap();
        v.as_object_mut().unwrap().remove("divergent");
        let back: Cluster = serde_json::from_value(v).unwrap();
        assert_eq!(back, c.cluster);
    }

    #[test]
    fn no_switchover_to_a_datacenter_awaiting_resync() {
        let mut c = init();
        c.apply(&failover(1, "b")).unwrap();
        let begin = Command::BeginSwitchover {
            from_epoch: 2,
            to: "a".into(),
            wall_ms: 3,
            evidence: String::new(),
        };
        assert!(c.apply(&begin).is_err());
        c.apply(&Command::MarkResynced {
            dc: "a".into(),
            wall_ms: 4,
            evidence: "operator".into(),
        })
        .unwrap();
        c.apply(&begin).unwrap();
        assert!(matches!(c.cluster.phase, Phase::SwitchingOver { .. }));
        c.apply(&Command::CompleteSwitchover {
            from_epoch: 2,
            to: "a".into(),
            wall_ms: 5,
            evidence: String::new(),
        })
        .unwrap();
        let c = &c.cluster;
        assert_eq!(
            (c.epoch, c.primary.as_str(), &c.phase),
            (3, "a", &Phase::Stable)
        );
        // A planned switchover demotes nobody.
        assert!(c.needs_resync.is_empty());
    }

    #[test]
    fn role_changes_record_their_outcome_for_programs() {
        let mut c = init();
        let sw = |cmd: &str, epoch| match cmd {
            "begin" => Command::BeginSwitchover {
                from_epoch: epoch,
                to: "b".into(),
                wall_ms: 2,
                evidence: String::new(),
            },
            "abort" => Command::AbortSwitchover {
                from_epoch: epoch,
                wall_ms: 3,
                evidence: "drain timed out".into(),
            },
            _ => Command::CompleteSwitchover {
                from_epoch: epoch,
                to: "b".into(),
                wall_ms: 4,
                evidence: String::new(),
            },
        };
        c.apply(&sw("begin", 1)).unwrap();
        assert_eq!(c.audit.last().unwrap().outcome, None);
        c.apply(&sw("abort", 1)).unwrap();
        assert_eq!(
            c.audit.last().unwrap().outcome,
            Some(Outcome::SwitchoverAborted {
                why: "drain timed out".into()
            })
        );
        c.apply(&sw("begin", 1)).unwrap();
        c.apply(&sw("complete", 1)).unwrap();
        let done = c.audit.last().unwrap();
        assert_eq!(
            (done.epoch, done.outcome.clone()),
            (2, Some(Outcome::SwitchoverComplete { to: "b".into() }))
        );
        // A rejected command has no outcome.
        assert!(c.apply(&sw("complete", 1)).is_err());
        assert_eq!(c.audit.last().unwrap().outcome, None);
        c.apply(&failover(2, "a")).unwrap();
        assert_eq!(
            c.audit.last().unwrap().outcome,
            Some(Outcome::FailoverCommitted {
                to: "a".into(),
                forced: false
            })
        );
        // Entries written before outcomes existed still read.
        let old: AuditEntry =
            serde_json::from_str(r#"{"wall_ms":1,"epoch":1,"what":"w","evidence":"e"}"#).unwrap();
        assert_eq!(old.outcome, None);
    }

    #[test]
    fn audit_is_bounded() {
        let mut c = init();
        for i in 0..(AUDIT_KEEP + 10) {
            c.apply(&Command::Note {
                wall_ms: i as u64,
                what: "n".into(),
                evidence: String::new(),
            })
            .unwrap();
        }
        assert_eq!(c.audit.len(), AUDIT_KEEP);
        assert_eq!(c.audit.last().unwrap().wall_ms, (AUDIT_KEEP + 9) as u64);
    }
}
