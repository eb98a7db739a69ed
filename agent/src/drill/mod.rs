//! Drills, the agent's part: what it did and when (its events), the marker
//! writer, and a simulated outage of this datacenter.
//!
//! `drctl drill` (see [`run`]) drives these over the admin API. During a
//! failover drill the agent makes its datacenter look the way a dead Milvus
//! does: its heartbeats say Milvus is down and ask the witnesses to count
//! their own probes of it as failed, and its replication source stops
//! sending. The witnesses then decide exactly as for a real outage.

pub mod run;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use milvus::proto::common::KeyValuePair;
use milvus::proto::schema::{
    field_data::Field, scalar_field::Data as S, vector_field::Data as V, CollectionSchema,
    DataType, FieldData, FieldSchema, FloatArray, LongArray, ScalarField, StringArray, VectorField,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::milvus::{self as mv, rows, CollectionInfo, IndexInfo, Milvus, Pk};
use dr_proto::now_ms;
use dr_proto::pb;

/// Where drills write their markers: replicated whatever the filter says
/// (see [`crate::replication::catalog::Filter`]).
pub const MARKERS_DB: &str = "default";
pub const MARKERS_COLLECTION: &str = "_milvus_dr";
/// One marker row this often while a drill runs.
pub const MARKER_INTERVAL: Duration = Duration::from_millis(100);
/// A marker write that takes longer counts as failed.
const MARKER_TIMEOUT: Duration = Duration::from_secs(2);
/// Events kept (oldest dropped).
const EVENTS_KEPT: usize = 1_000;

/// What the agent records, for drill reports and `drctl status`.
pub mod kind {
    pub const ACTING_PRIMARY: &str = "acting_primary";
    pub const FENCED: &str = "fenced";
    pub const DRAINED: &str = "drained";
    pub const DNS_CHANGED: &str = "dns_changed";
    pub const DNS_AUTHORITATIVE: &str = "dns_authoritative";
    pub const DNS_VERIFIED: &str = "dns_verified";
    pub const DNS_FAILED: &str = "dns_failed";
    pub const OUTAGE_START: &str = "drill_outage_start";
    pub const OUTAGE_END: &str = "drill_outage_end";
}

/// A drill id: `[A-Za-z0-9_-]{1,64}` (it goes into a Milvus expression).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marker {
    pub seq: u64,
    pub written_ms: u64,
}

impl From<Marker> for pb::Marker {
    fn from(m: Marker) -> Self {
        pb::Marker {
            seq: m.seq,
            written_ms: m.written_ms,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct MarkerStats {
    pub newest_acked: Option<Marker>,
    pub written: u64,
    pub failed: u64,
}

struct MarkerRun {
    id: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
    stats: Arc<Mutex<MarkerStats>>,
}

#[derive(Debug, Clone)]
struct Outage {
    id: String,
    start_wall_ms: u64,
    until: Instant,
}

/// The agent's drill state and event log. Cheap to clone.
#[derive(Clone)]
pub struct Drills {
    inner: Arc<Inner>,
}

struct Inner {
    milvus: Milvus,
    events: Mutex<VecDeque<pb::AgentEvent>>,
    outage: Mutex<Option<Outage>>,
    markers: tokio::sync::Mutex<Option<MarkerRun>>,
    /// The last marker run's figures, by drill id (kept after it stops).
    last: Mutex<Option<(String, MarkerStats)>>,
}

impl Drills {
    pub fn new(milvus: Milvus) -> Drills {
        Drills {
            inner: Arc::new(Inner {
                milvus,
                events: Mutex::new(VecDeque::new()),
                outage: Mutex::new(None),
                markers: tokio::sync::Mutex::new(None),
                last: Mutex::new(None),
            }),
        }
    }

    /// Records that this agent did `kind` at `epoch` now.
    pub fn record(&self, epoch: u64, kind: &str, detail: impl Into<String>) {
        self.record_at(now_ms().max(0) as u64, epoch, kind, detail)
    }

    /// Records that this agent did `kind` at `epoch` at `wall_ms`.
    pub fn record_at(&self, wall_ms: u64, epoch: u64, kind: &str, detail: impl Into<String>) {
        let mut ev = self.inner.events.lock().unwrap();
        ev.push_back(pb::AgentEvent {
            wall_ms,
            epoch,
            kind: kind.to_string(),
            detail: detail.into(),
        });
        while ev.len() > EVENTS_KEPT {
            ev.pop_front();
        }
    }

    pub fn events_since(&self, wall_ms: u64) -> Vec<pb::AgentEvent> {
        let ev = self.inner.events.lock().unwrap();
        ev.iter()
            .filter(|e| e.wall_ms >= wall_ms)
            .cloned()
            .collect()
    }

    /// How much longer a drilled outage of this datacenter lasts (`None`:
    /// none).
    pub fn outage_remaining(&self) -> Option<Duration> {
        let o = self.inner.outage.lock().unwrap();
        o.as_ref()
            .map(|o| o.until.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// When the current drilled outage started (wall ms).
    pub fn outage_started(&self) -> Option<u64> {
        self.outage_remaining()?;
        self.inner
            .outage
            .lock()
            .unwrap()
            .as_ref()
            .map(|o| o.start_wall_ms)
    }

    /// A source check: `Err` while a drilled outage lasts (a dead Milvus
    /// serves nothing to replicate).
    pub fn check_source(&self) -> anyhow::Result<()> {
        match self.outage_remaining() {
            Some(left) => anyhow::bail!(
                "drill: this datacenter is out (as if its Milvus were dead) for {left:?} more"
            ),
            None => Ok(()),
        }
    }

    /// Starts writing markers for drill `id` into the local Milvus
    /// (creating the collection if needed). Idempotent for the same id.
    pub async fn start_markers(&self, id: &str) -> anyhow::Result<()> {
        let mut run = self.inner.markers.lock().await;
        if run.as_ref().is_some_and(|r| r.id == id) {
            return Ok(());
        }
        if let Some(r) = run.take() {
            finish(r, &self.inner.last).await;
        }
        let info = ensure_collection(&self.inner.milvus).await?;
        let stats: Arc<Mutex<MarkerStats>> = Default::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_markers(
            self.inner.milvus.clone(),
            info,
            id.to_string(),
            stats.clone(),
            stop.clone(),
        ));
        info!(
            drill = id,
            "drill: writing a marker every {MARKER_INTERVAL:?}"
        );
        *run = Some(MarkerRun {
            id: id.to_string(),
            stop,
            task,
            stats,
        });
        Ok(())
    }

    /// Stops the marker writer (waiting for a write in flight) and returns
    /// its figures for `id`.
    pub async fn stop_markers(&self, id: &str) -> MarkerStats {
        if let Some(r) = self.inner.markers.lock().await.take() {
            finish(r, &self.inner.last).await;
        }
        match &*self.inner.last.lock().unwrap() {
            Some((last, s)) if last == id => s.clone(),
            _ => MarkerStats::default(),
        }
    }

    /// Stops markers of any drill: this agent stops acting as primary, so
    /// a client could not have written there either.
    pub async fn stop_any_markers(&self) {
        if let Some(r) = self.inner.markers.lock().await.take() {
            finish(r, &self.inner.last).await;
        }
    }

    /// Stops the markers, then starts the outage. Returns its start and the
    /// marker figures.
    pub async fn start_outage(&self, id: &str, max: Duration, epoch: u64) -> (u64, MarkerStats) {
        let stats = self.stop_markers(id).await;
        let start = now_ms().max(0) as u64;
        *self.inner.outage.lock().unwrap() = Some(Outage {
            id: id.to_string(),
            start_wall_ms: start,
            until: Instant::now() + max,
        });
        warn!(drill = id, max = ?max, "drill: this datacenter is now out, as if its Milvus were dead");
        self.record(
            epoch,
            kind::OUTAGE_START,
            format!("drill {id}: for at most {} ms", max.as_millis()),
        );
        (start, stats)
    }

    /// Ends the drill here: the outage and the markers. With
    /// `discard_after`, deletes the drill's markers newer than that seq
    /// (written here, lost by the failover). Returns how many it deleted.
    pub async fn end(
        &self,
        id: &str,
        discard_after: Option<u64>,
        epoch: u64,
    ) -> anyhow::Result<u64> {
        let stats = self.stop_markers(id).await;
        let ended = {
            let mut o = self.inner.outage.lock().unwrap();
            match o.take() {
                Some(x) if x.id == id => Some(x),
                other => {
                    *o = other;
                    None
                }
            }
        };
        if let Some(o) = ended {
            info!(drill = id, "drill: the outage is over");
            self.record(
                epoch,
                kind::OUTAGE_END,
                format!(
                    "drill {id}: after {} ms",
                    (now_ms().max(0) as u64).saturating_sub(o.start_wall_ms)
                ),
            );
        }
        let Some(after) = discard_after else {
            return Ok(0);
        };
        if stats.newest_acked.is_none_or(|m| m.seq <= after) && !self.has_markers().await {
            return Ok(0);
        }
        let info = self
            .inner
            .milvus
            .describe(MARKERS_DB, MARKERS_COLLECTION)
            .await?;
        let found = self
            .inner
            .milvus
            .query(
                &info,
                None,
                &format!("drill == \"{id}\" && seq > {after}"),
                &["id".to_string()],
                Some(mv::MAX_QUERY_WINDOW),
                0,
            )
            .await?;
        let keys = rows::primary_keys(&found, "id")?;
        if !keys.is_empty() {
            self.inner
                .milvus
                .delete(MARKERS_DB, MARKERS_COLLECTION, None, "id", &keys)
                .await?;
            info!(
                drill = id,
                n = keys.len(),
                after,
                "drill: deleted the markers the new primary lacks"
            );
        }
        Ok(keys.len() as u64)
    }

    async fn has_markers(&self) -> bool {
        self.inner
            .milvus
            .list_collections(MARKERS_DB)
            .await
            .is_ok_and(|c| c.iter().any(|n| n == MARKERS_COLLECTION))
    }

    /// The newest marker of drill `id` present in the local Milvus.
    pub async fn newest_present(&self, id: &str) -> anyhow::Result<Option<Marker>> {
        if !self.has_markers().await {
            return Ok(None);
        }
        let info = self
            .inner
            .milvus
            .describe(MARKERS_DB, MARKERS_COLLECTION)
            .await?;
        let fields = self
            .inner
            .milvus
            .query(
                &info,
                None,
                &format!("drill == \"{id}\""),
                &["id".to_string(), "seq".to_string()],
                Some(mv::MAX_QUERY_WINDOW),
                0,
            )
            .await?;
        let ids = rows::primary_keys(&fields, "id")?;
        let seqs = longs(&fields, "seq");
        Ok(ids
            .iter()
            .zip(seqs)
            .filter_map(|(k, s)| match k {
                Pk::Int(w) => Some(Marker {
                    seq: s as u64,
                    written_ms: *w as u64,
                }),
                Pk::Str(_) => None,
            })
            .max_by_key(|m| m.seq))
    }

    /// The figures of the current or last marker run of `id`.
    pub async fn marker_stats(&self, id: &str) -> MarkerStats {
        if let Some(r) = self
            .inner
            .markers
            .lock()
            .await
            .as_ref()
            .filter(|r| r.id == id)
        {
            return r.stats.lock().unwrap().clone();
        }
        match &*self.inner.last.lock().unwrap() {
            Some((last, s)) if last == id => s.clone(),
            _ => MarkerStats::default(),
        }
    }
}

async fn finish(r: MarkerRun, last: &Mutex<Option<(String, MarkerStats)>>) {
    r.stop.cancel();
    let _ = r.task.await;
    let s = r.stats.lock().unwrap().clone();
    info!(drill = %r.id, written = s.written, failed = s.failed, newest = ?s.newest_acked, "drill: marker writer stopped");
    *last.lock().unwrap() = Some((r.id, s));
}

fn longs(fields: &[FieldData], name: &str) -> Vec<i64> {
    fields
        .iter()
        .find(|f| f.field_name == name)
        .and_then(|f| match &f.field {
            Some(Field::Scalars(ScalarField {
                data: Some(S::LongData(a)),
                ..
            })) => Some(a.data.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn marker_schema() -> CollectionSchema {
    let field = |id: i64, name: &str, t: DataType, params: &[(&str, &str)], pk: bool| FieldSchema {
        field_id: id,
        name: name.into(),
        data_type: t as i32,
        is_primary_key: pk,
        type_params: params
            .iter()
            .map(|(k, v)| KeyValuePair {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    };
    CollectionSchema {
        name: MARKERS_COLLECTION.into(),
        description: "milvus-dr drill markers (RPO measurement)".into(),
        fields: vec![
            // The writer's wall clock (ms) when the row was written.
            field(100, "id", DataType::Int64, &[], true),
            field(
                101,
                "drill",
                DataType::VarChar,
                &[("max_length", "64")],
                false,
            ),
            field(102, "seq", DataType::Int64, &[], false),
            field(103, "v", DataType::FloatVector, &[("dim", "2")], false),
        ],
        ..Default::default()
    }
}

/// Creates, indexes and loads the marker collection if it is not there.
async fn ensure_collection(m: &Milvus) -> anyhow::Result<CollectionInfo> {
    let exists = m
        .list_collections(MARKERS_DB)
        .await?
        .iter()
        .any(|n| n == MARKERS_COLLECTION);
    if !exists {
        let info = CollectionInfo {
            database: MARKERS_DB.into(),
            name: MARKERS_COLLECTION.into(),
            id: 0,
            schema: marker_schema(),
            shards_num: 1,
            consistency_level: 0,
            properties: vec![],
            num_partitions: 0,
        };
        match m.create_collection(&info).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if m.list_indexes(MARKERS_DB, MARKERS_COLLECTION)
        .await?
        .is_empty()
    {
        m.create_index(
            MARKERS_DB,
            MARKERS_COLLECTION,
            &IndexInfo {
                field: "v".into(),
                index_name: "v".into(),
                params: vec![
                    ("index_type".into(), "FLAT".into()),
                    ("metric_type".into(), "L2".into()),
                ],
            },
        )
        .await?;
    }
    m.load(MARKERS_DB, MARKERS_COLLECTION).await?;
    m.wait_loaded(MARKERS_DB, MARKERS_COLLECTION, Duration::from_secs(60))
        .await?;
    Ok(m.describe(MARKERS_DB, MARKERS_COLLECTION).await?)
}

fn marker_row(drill: &str, m: Marker) -> Vec<FieldData> {
    let scalar = |name: &str, t: DataType, data: S| FieldData {
        r#type: t as i32,
        field_name: name.into(),
        field: Some(Field::Scalars(ScalarField {
            data: Some(data),
            ..Default::default()
        })),
        ..Default::default()
    };
    vec![
        scalar(
            "id",
            DataType::Int64,
            S::LongData(LongArray {
                data: vec![m.written_ms as i64],
            }),
        ),
        scalar(
            "drill",
            DataType::VarChar,
            S::StringData(StringArray {
                data: vec![drill.to_string()],
            }),
        ),
        scalar(
            "seq",
            DataType::Int64,
            S::LongData(LongArray {
                data: vec![m.seq as i64],
            }),
        ),
        FieldData {
            r#type: DataType::FloatVector as i32,
            field_name: "v".into(),
            field: Some(Field::Vectors(VectorField {
                dim: 2,
                data: Some(V::FloatVector(FloatArray {
                    data: vec![m.seq as f32, 0.0],
                })),
                ..Default::default()
            })),
            ..Default::default()
        },
    ]
}

async fn write_markers(
    m: Milvus,
    info: CollectionInfo,
    drill: String,
    stats: Arc<Mutex<MarkerStats>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(MARKER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    let mut last_ms = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        seq += 1;
        // Keys are write times: strictly increasing, so never a duplicate.
        let written_ms = (now_ms().max(0) as u64).max(last_ms + 1);
        last_ms = written_ms;
        let marker = Marker { seq, written_ms };
        let r = tokio::time::timeout(
            MARKER_TIMEOUT,
            m.insert(
                &info.database,
                &info.name,
                None,
                marker_row(&drill, marker),
                1,
            ),
        )
        .await;
        let mut s = stats.lock().unwrap();
        match r {
            Ok(Ok(())) => {
                s.newest_acked = Some(marker);
                s.written += 1;
            }
            Ok(Err(e)) => {
                s.failed += 1;
                tracing::debug!(drill = %drill, seq, error = %e, "drill marker not written");
            }
            Err(_) => {
                s.failed += 1;
                tracing::debug!(drill = %drill, seq, "drill marker write timed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_ids_are_safe_in_an_expression() {
        assert!(valid_id("drill-20261202T101500Z-3f2a"));
        assert!(!valid_id(""));
        assert!(!valid_id("a\" || id > 0 || \"b"));
        assert!(!valid_id(&"x".repeat(65)));
    }

    #[test]
    fn a_marker_row_has_every_column_of_the_schema() {
        let row = marker_row(
            "d1",
            Marker {
                seq: 7,
                written_ms: 1_700_000_000_000,
            },
        );
        let names: Vec<_> = row.iter().map(|f| f.field_name.clone()).collect();
        let schema: Vec<_> = marker_schema()
            .fields
            .iter()
            .map(|f| f.name.clone())
            .collect();
        assert_eq!(names, schema);
        assert_eq!(rows::num_rows(&row).unwrap(), 1);
        assert_eq!(
            rows::primary_keys(&row, "id").unwrap(),
            vec![Pk::Int(1_700_000_000_000)]
        );
        assert_eq!(longs(&row, "seq"), vec![7]);
    }
}
