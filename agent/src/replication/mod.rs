//! Continuous replication between the primary's and the standby's Milvus.
//!
//! The agent of the primary datacenter is the **source**: every pass it
//! reads the catalog and scans every loaded collection in primary-key pages
//! pinned to one Milvus timestamp, diffs each page against its capture
//! [`base`](base::Base), and streams the differences as sequence-numbered,
//! epoch-stamped batches to the **sink**, the standby's agent, over mutual
//! TLS. The sink applies each batch idempotently (upsert/delete by primary
//! key, DDL as "make it so"), persists its checkpoint, then acks.
//!
//! Lag is honest: the sink's applied state is the Milvus time at which the
//! newest fully applied pass began; lag = now − that time, so a stalled
//! source, stream or sink shows a growing lag.

pub mod antientropy;
pub mod base;
pub mod catalog;
pub mod divergent;
pub mod sink;
pub mod source;

use std::sync::{Arc, Mutex};

use dr_proto::pb;

/// What this agent is doing in replication right now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not started yet (no witness view, or not the configured primary).
    #[default]
    Idle,
    /// Acting as primary: capturing and streaming to the peer.
    Source,
    /// Standby: applying what the primary's agent streams.
    Sink,
    /// Named primary by the witnesses but not acting (no valid lease, or
    /// its Milvus is unhealthy).
    Fenced,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Source, Role::Sink, Role::Idle, Role::Fenced];

    /// The name on the wire (`StatusReply.role`) and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Idle => "idle",
            Role::Source => "source",
            Role::Sink => "sink",
            Role::Fenced => "fenced",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live state of replication on this agent, shared by the source or
/// sink task, the admin API and the metrics endpoint.
#[derive(Debug, Default, Clone)]
pub struct ReplicationState {
    pub role: Role,
    pub epoch: u64,
    /// The datacenter named primary: the witnesses' view, or without
    /// witnesses the configured initial primary. Empty until known.
    pub primary: String,
    pub connected: bool,
    pub sent_seq: u64,
    pub acked_seq: u64,
    /// Source: snapshot time of the newest pass the sink acknowledged.
    /// Sink: snapshot time of the newest pass applied here.
    pub applied_snapshot_ms: i64,
    pub last_pass_snapshot_ms: i64,
    pub last_pass_duration_ms: i64,
    pub rows_upserted: u64,
    pub rows_deleted: u64,
    pub bytes_sent: u64,
    pub passes: u64,
    pub lineage: String,
    pub collections: Vec<pb::CollectionStatus>,
    pub last_error: String,
    /// With witnesses: the role logic's own account of this agent.
    pub failover: String,
    pub lease_remaining_ms: i64,
    /// Source: the anti-entropy runs' outcome.
    pub anti_entropy: antientropy::State,
    /// Source with the front door: the change log is the stream's source
    /// and lag is the age of its oldest entry.
    pub change_log: bool,
    pub log_depth: crate::frontdoor::changelog::Depth,
    /// Times the change log reached its bound and was cleared, and the
    /// newest (ms since the Unix epoch; 0: never).
    pub log_overflows: u64,
    pub log_overflow_ms: i64,
    /// Source with the front door: writes the scan found that did not come
    /// through it.
    pub bypass: Bypass,
    /// Sync mode: the standby did not apply a write within
    /// `replication.sync_timeout`; cleared once it applied every logged
    /// write.
    pub sync_degraded: bool,
    /// A planned switchover is draining this primary until then: its front
    /// door refuses writes (a write accepted now might miss the drain). If
    /// the drain does not complete by then, the switchover is aborted and
    /// writes are accepted again.
    pub draining_until: Option<std::time::Instant>,
}

/// Writes around the front door, as the scan passes found them.
#[derive(Debug, Default, Clone)]
pub struct Bypass {
    /// Rows since the agent started, by `database.collection`.
    pub total: std::collections::BTreeMap<String, u64>,
    /// Scan passes completed with the change log on.
    pub passes: u64,
    /// Rows the newest pass found.
    pub last_pass_rows: u64,
    /// The newest pass's findings: collection, rows, sample keys.
    pub findings: Vec<(String, u64, Vec<String>)>,
}

impl ReplicationState {
    /// Age of the newest primary state known to be applied on the sink, or
    /// `None` when nothing was ever applied.
    ///
    /// With the change log (front door), once the standby has applied a
    /// first pass: the age of the oldest write acknowledged to a client and
    /// not yet applied on the standby, 0 when there is none. It does not
    /// grow with the collections' size.
    pub fn lag_ms(&self, now: i64) -> Option<i64> {
        if self.applied_snapshot_ms <= 0 {
            return None;
        }
        if self.change_log && self.role == Role::Source {
            let oldest = self.log_depth.oldest_ms;
            return Some(if oldest > 0 { (now - oldest).max(0) } else { 0 });
        }
        Some((now - self.applied_snapshot_ms).max(0))
    }

    pub fn to_pb(&self, now: i64) -> pb::ReplicationStatus {
        pb::ReplicationStatus {
            connected: self.connected,
            sent_seq: self.sent_seq,
            acked_seq: self.acked_seq,
            last_pass_snapshot_ms: self.last_pass_snapshot_ms,
            last_pass_duration_ms: self.last_pass_duration_ms,
            applied_snapshot_ms: self.applied_snapshot_ms,
            lag_ms: self.lag_ms(now).unwrap_or(-1),
            rows_upserted: self.rows_upserted,
            rows_deleted: self.rows_deleted,
            lineage: self.lineage.clone(),
            collections: self.collections.clone(),
            last_error: self.last_error.clone(),
        }
    }
}

pub type SharedState = Arc<Mutex<ReplicationState>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_unknown_before_anything_applied_and_grows_after() {
        let mut s = ReplicationState::default();
        assert_eq!(s.lag_ms(1000), None);
        assert_eq!(s.to_pb(1000).lag_ms, -1);
        s.applied_snapshot_ms = 1000;
        assert_eq!(s.lag_ms(1500), Some(500));
        assert_eq!(s.lag_ms(9000), Some(8000));
    }

    #[test]
    fn with_the_change_log_lag_is_the_age_of_the_oldest_unapplied_write() {
        let mut s = ReplicationState {
            role: Role::Source,
            change_log: true,
            ..Default::default()
        };
        // Not before the standby applied a first pass.
        s.log_depth.oldest_ms = 900;
        assert_eq!(s.lag_ms(1000), None);
        s.applied_snapshot_ms = 100;
        assert_eq!(s.lag_ms(1000), Some(100));
        // Nothing waiting: no lag, however old the last pass.
        s.log_depth = Default::default();
        assert_eq!(s.lag_ms(1_000_000), Some(0));
    }
}
