//! Failover timing and lease arithmetic, pure: no clock inside.
//!
//! Every node measures time on its own clock, whose rate may differ from
//! real time by at most `max_drift` (e.g. 0.01 = ±1 %). Leases are granted
//! by the witness Raft leader. The rules:
//!
//! - The primary agent counts its lease from when it *sent* the renewal
//!   that the leader acknowledged, shortened by the drift margin:
//!   [`Timing::agent_lease_until`]. It fences itself at that time.
//! - A witness counts the lease it granted from when it *received* the
//!   renewal, lengthened by the drift margin: [`Timing::witness_lease_until`].
//!   No promotion before that time.
//! - A witness that becomes leader does not know what its predecessor
//!   granted: it waits out a full lengthened lease before it may act
//!   ([`Timing::leader_may_act_at`]).
//!
//! Together these give the invariant the failover tests check: the old
//! primary fences, in real time, strictly before any witness could see its
//! lease as expired.

use serde::{Deserialize, Serialize};

/// Milliseconds on some node's own clock.
pub type Millis = u64;

/// An invalid timing configuration: the field, the problem, the fix.
pub type TimingError = dr_proto::ConfigError;

/// The failover timing knobs (the `failover` config section).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// How often agents heartbeat the witnesses and renew the lease.
    #[serde(default = "d_heartbeat")]
    pub heartbeat_ms: Millis,
    /// How long one renewal keeps the primary's lease.
    #[serde(default = "d_lease")]
    pub lease_ms: Millis,
    /// How long a witness majority must see the primary unhealthy.
    #[serde(default = "d_confirmation")]
    pub confirmation_ms: Millis,
    /// No automatic failover within this long of the previous one.
    #[serde(default = "d_anti_flap")]
    pub anti_flap_ms: Millis,
    /// Largest replication lag at which an automatic failover may proceed.
    #[serde(default = "d_budget")]
    pub data_loss_budget_ms: Millis,
    /// Largest clock-rate difference from real time, as a fraction.
    #[serde(default = "d_drift")]
    pub max_drift: f64,
}

fn d_heartbeat() -> Millis {
    1_000
}
fn d_lease() -> Millis {
    10_000
}
fn d_confirmation() -> Millis {
    30_000
}
fn d_anti_flap() -> Millis {
    600_000
}
fn d_budget() -> Millis {
    10_000
}
fn d_drift() -> f64 {
    0.01
}

impl Default for Timing {
    /// Resists blips: a primary must look dead for 30 s.
    fn default() -> Self {
        Timing {
            heartbeat_ms: d_heartbeat(),
            lease_ms: d_lease(),
            confirmation_ms: d_confirmation(),
            anti_flap_ms: d_anti_flap(),
            data_loss_budget_ms: d_budget(),
            max_drift: d_drift(),
        }
    }
}

/// The `failover` config section, shared by agents and witnesses (they
/// must agree): a profile, then any field overridden.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSection {
    /// `default` (a 30 s confirmation window) or `fast` (5 s).
    #[serde(default)]
    pub profile: Profile,
    pub heartbeat_ms: Option<Millis>,
    pub lease_ms: Option<Millis>,
    pub confirmation_ms: Option<Millis>,
    pub anti_flap_ms: Option<Millis>,
    pub data_loss_budget_ms: Option<Millis>,
    pub max_drift: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Default,
    Fast,
}

impl FailoverSection {
    /// The resulting timing, validated.
    pub fn resolve(&self) -> Result<Timing, TimingError> {
        let base = match self.profile {
            Profile::Default => Timing::default(),
            Profile::Fast => Timing::fast(),
        };
        let t = Timing {
            heartbeat_ms: self.heartbeat_ms.unwrap_or(base.heartbeat_ms),
            lease_ms: self.lease_ms.unwrap_or(base.lease_ms),
            confirmation_ms: self.confirmation_ms.unwrap_or(base.confirmation_ms),
            anti_flap_ms: self.anti_flap_ms.unwrap_or(base.anti_flap_ms),
            data_loss_budget_ms: self.data_loss_budget_ms.unwrap_or(base.data_loss_budget_ms),
            max_drift: self.max_drift.unwrap_or(base.max_drift),
        };
        t.validate()?;
        Ok(t)
    }
}

impl Timing {
    /// The "fast" profile: failover after about 5 s of confirmed death.
    pub fn fast() -> Timing {
        Timing {
            heartbeat_ms: 250,
            lease_ms: 2_000,
            confirmation_ms: 5_000,
            anti_flap_ms: 60_000,
            ..Timing::default()
        }
    }

    /// Checks the ordering heartbeat < lease < confirmation window, with
    /// room for at least two renewals per lease.
    pub fn validate(&self) -> Result<(), TimingError> {
        let e =
            |field: &str, problem: String, fix: String| Err(TimingError::new(field, problem, fix));
        if !(0.0..0.1).contains(&self.max_drift) {
            return e(
                "failover.max_drift",
                format!("{} is outside [0, 0.1)", self.max_drift),
                "use the clock-rate bound of your NTP setup, e.g. 0.01".into(),
            );
        }
        if self.heartbeat_ms == 0 {
            return e("failover.heartbeat_ms", "0".into(), "use e.g. 1000".into());
        }
        if self.lease_ms < 2 * self.heartbeat_ms {
            return e(
                "failover.lease_ms",
                format!("{} allows fewer than two renewals per lease", self.lease_ms),
                format!("use at least {} (2 × heartbeat_ms)", 2 * self.heartbeat_ms),
            );
        }
        // A lease must be able to run out within the confirmation window,
        // counting the witness-side drift margin.
        if (self.confirmation_ms as f64) <= self.lease_ms as f64 * (1.0 + self.max_drift) {
            return e(
                "failover.confirmation_ms",
                format!(
                    "{} is not longer than a lease ({} ms plus drift)",
                    self.confirmation_ms, self.lease_ms
                ),
                "make the confirmation window longer than lease_ms".into(),
            );
        }
        Ok(())
    }

    /// On the agent's clock: until when a renewal *sent* at `sent_at` and
    /// acknowledged by the leader keeps the agent primary.
    pub fn agent_lease_until(&self, sent_at: Millis) -> Millis {
        sent_at
            + (self.lease_ms as f64 * (1.0 - self.max_drift) / (1.0 + self.max_drift)).floor()
                as Millis
    }

    /// On a witness's clock: until when a renewal it *received* at
    /// `received_at` may keep the agent primary.
    pub fn witness_lease_until(&self, received_at: Millis) -> Millis {
        received_at
            + (self.lease_ms as f64 * (1.0 + self.max_drift) / (1.0 - self.max_drift)).ceil()
                as Millis
    }

    /// On a new leader's clock: the earliest time it may decide anything
    /// that depends on leases, having become leader at `became_leader_at`.
    pub fn leader_may_act_at(&self, became_leader_at: Millis) -> Millis {
        self.witness_lease_until(became_leader_at)
    }

    /// How quickly channels sized to this timing notice a dead path.
    pub fn liveness(&self) -> dr_proto::channel::Liveness {
        dr_proto::channel::Liveness::for_lease(
            std::time::Duration::from_millis(self.heartbeat_ms),
            std::time::Duration::from_millis(self.lease_ms),
        )
    }

    /// Whether a Raft leader whose quorum last acknowledged it
    /// `quorum_ack_age` ago (`None`: never in this term) still counts as
    /// the leader: only within one lease. A leader cut off from its peers
    /// keeps Raft's leader state until it hears of a newer term, long after
    /// the others may have elected another one.
    pub fn leader_confirmed(&self, quorum_ack_age: Option<Millis>) -> bool {
        quorum_ack_age.is_some_and(|age| age <= self.lease_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_fast_profile_are_valid_and_ordered() {
        for t in [Timing::default(), Timing::fast()] {
            t.validate().unwrap();
            assert!(t.heartbeat_ms < t.lease_ms && t.lease_ms < t.confirmation_ms);
        }
        assert_eq!(Timing::default().confirmation_ms, 30_000);
        assert_eq!(Timing::fast().confirmation_ms, 5_000);
    }

    #[test]
    fn validation_names_the_field() {
        let t = Timing {
            lease_ms: 1_500,
            ..Timing::default()
        };
        assert_eq!(t.validate().unwrap_err().field, "failover.lease_ms");
        let t = Timing {
            confirmation_ms: 10_000,
            ..Timing::default()
        };
        assert_eq!(t.validate().unwrap_err().field, "failover.confirmation_ms");
        let t = Timing {
            max_drift: 0.5,
            ..Timing::default()
        };
        assert_eq!(t.validate().unwrap_err().field, "failover.max_drift");
    }

    #[test]
    fn yaml_section_uses_defaults_and_rejects_unknown_fields() {
        let t: Timing = serde_norway::from_str("{}").unwrap();
        assert_eq!(t, Timing::default());
        let t: Timing = serde_norway::from_str("lease_ms: 4000\nheartbeat_ms: 500").unwrap();
        assert_eq!(
            (t.lease_ms, t.heartbeat_ms, t.confirmation_ms),
            (4_000, 500, 30_000)
        );
        assert!(serde_norway::from_str::<Timing>("lease: 4000").is_err());
    }

    /// The agent fences strictly before any witness's view of the lease
    /// ends, in real time, for any clock rates within the drift bound and
    /// any network delay.
    #[test]
    fn agent_fences_before_any_witness_sees_the_lease_expire() {
        let t = Timing::default();
        let d = t.max_drift;
        // Deterministic sweep over rates, offsets and delays.
        for agent_rate in [1.0 - d, 1.0, 1.0 + d] {
            for witness_rate in [1.0 - d, 1.0, 1.0 + d] {
                for delay_real in [0.0, 1.0, 250.0, 5_000.0] {
                    for (agent_off, witness_off) in [(0.0, 0.0), (123_456.0, 7.0), (5.0, 999_999.0)]
                    {
                        let send_real = 10_000.0;
                        let recv_real = send_real + delay_real;
                        // Local readings of those real instants.
                        // Clocks are read as whole milliseconds (floor).
                        let sent_local = (agent_off + send_real * agent_rate).floor() as Millis;
                        let recv_local = (witness_off + recv_real * witness_rate).floor() as Millis;
                        // Back to real time: when each side's deadline comes.
                        let agent_until = t.agent_lease_until(sent_local) as f64;
                        let agent_fence_real = (agent_until + 1.0 - agent_off) / agent_rate;
                        let witness_until = t.witness_lease_until(recv_local) as f64;
                        let witness_expiry_real = (witness_until - witness_off) / witness_rate;
                        assert!(
                            agent_fence_real < witness_expiry_real,
                            "rates {agent_rate}/{witness_rate} delay {delay_real}: agent fences at {agent_fence_real}, witness expiry {witness_expiry_real}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn without_the_drift_margin_the_invariant_breaks() {
        // The same check with naive arithmetic fails: the margin matters.
        let lease = 10_000.0;
        let (agent_rate, witness_rate) = (0.99, 1.01);
        let agent_fence_real = lease / agent_rate;
        let witness_expiry_real = lease / witness_rate;
        assert!(agent_fence_real > witness_expiry_real);
    }

    #[test]
    fn failover_section_picks_a_profile_and_overrides() {
        let f: FailoverSection =
            serde_norway::from_str("profile: fast\nconfirmation_ms: 8000").unwrap();
        let t = f.resolve().unwrap();
        assert_eq!(
            (t.heartbeat_ms, t.lease_ms, t.confirmation_ms),
            (250, 2_000, 8_000)
        );
        let f: FailoverSection = serde_norway::from_str("{}").unwrap();
        assert_eq!(f.resolve().unwrap(), Timing::default());
        let f: FailoverSection =
            serde_norway::from_str("profile: fast\nconfirmation_ms: 1000").unwrap();
        assert_eq!(f.resolve().unwrap_err().field, "failover.confirmation_ms");
        assert!(serde_norway::from_str::<FailoverSection>("profile: turbo").is_err());
    }

    #[test]
    fn a_leader_is_confirmed_only_within_a_lease_of_a_quorum_ack() {
        let t = Timing::fast();
        assert!(t.leader_confirmed(Some(0)));
        assert!(t.leader_confirmed(Some(t.lease_ms)));
        assert!(!t.leader_confirmed(Some(t.lease_ms + 1)));
        assert!(!t.leader_confirmed(None));
    }

    #[test]
    fn a_new_leader_waits_a_full_lengthened_lease() {
        let t = Timing::default();
        assert!(t.leader_may_act_at(1_000) >= 1_000 + t.lease_ms);
        assert_eq!(t.leader_may_act_at(1_000), t.witness_lease_until(1_000));
    }
}
