//! The sink side: the `Replication` gRPC service of the standby's agent.
//!
//! It accepts one stream at a time from the peer agent's certificate,
//! refuses sources at an epoch older than the newest it knows, applies every
//! batch idempotently to the local Milvus, persists its checkpoint, and only
//! then acknowledges the batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use milvus::proto::schema::FieldData;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::base::keys_from_pb;
use super::catalog::{self, Managed};
use super::SharedState;
use crate::milvus::retry;
use crate::milvus::Milvus;
use dr_proto::pb::{self, replication_server::Replication, sink_message, source_message};

/// What the sink persists after every applied batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Newest epoch this sink has seen; older sources are refused.
    pub epoch: u64,
    pub lineage: String,
    pub applied_seq: u64,
    /// Snapshot time of the newest pass fully applied here.
    pub applied_snapshot_ms: i64,
    /// Collections this sink created or adopted, by `database.collection`.
    pub managed: BTreeMap<String, Managed>,
    /// Collections this sink managed until they left replication.databases
    /// / exclude on the primary: kept here, no longer replicated.
    #[serde(default)]
    pub unmanaged: std::collections::BTreeSet<String>,
    /// Primary-key field of each managed collection.
    #[serde(default)]
    pub pk_fields: BTreeMap<String, String>,
}

impl Checkpoint {
    /// A missing file is a sink that never applied anything; an unreadable
    /// or corrupt one is an error (its epoch floor is a promise).
    pub fn load(path: &Path) -> Result<Checkpoint> {
        Ok(dr_proto::statefile::read_json(
            path,
            "the sink checkpoint",
            "restore the file from a backup of the state directory; or, if this datacenter is not \
             primary, delete it and run `dr-agent reset-capture-base` on the primary's agent \
             (everything is resent once as upserts)",
        )?
        .unwrap_or_default())
    }

    /// Raises the newest known epoch. The data this sink holds may then have
    /// been changed by another primary (this datacenter's own, while it
    /// acted as one), so no source's capture base describes it any more:
    /// the lineage is forgotten, and the next source resends everything as
    /// upserts. Returns whether the epoch rose.
    pub fn raise_epoch(&mut self, epoch: u64) -> bool {
        if epoch <= self.epoch {
            return false;
        }
        self.epoch = epoch;
        self.lineage.clear();
        self.applied_seq = 0;
        true
    }

    /// Writes atomically and durably.
    pub fn store(&self, path: &Path) -> Result<()> {
        dr_proto::statefile::write_json(path, self)
    }
}

/// The `Replication` service.
#[derive(Clone)]
pub struct Sink {
    inner: Arc<Inner>,
}

struct Inner {
    datacenter: String,
    peer_identity: Vec<String>,
    milvus: Milvus,
    path: PathBuf,
    checkpoint: Mutex<Checkpoint>,
    state: SharedState,
    /// Incremented by every new stream; an older stream stops applying.
    generation: AtomicU64,
    /// The witness view: (epoch, primary datacenter), when witnesses run.
    view: std::sync::Mutex<Option<(u64, String)>>,
    /// The newest epoch known from the witnesses, in effect at once: a
    /// source older than this is refused, and a stream of an older epoch
    /// stops at its next message, even while an apply holds the checkpoint.
    floor: AtomicU64,
    /// Answers the peer's failsafe requests (when witnesses run).
    failsafe: std::sync::OnceLock<Arc<dyn FailsafeResponder>>,
    /// Keeps a former primary's divergent writes before it resynchronises.
    divergence: std::sync::OnceLock<super::divergent::Divergence>,
    /// Collections refused for a permanent reason, with the error.
    held: std::sync::Mutex<BTreeMap<(String, HeldKind), String>>,
}

/// Answers a peer's failsafe request (see `dr_witness::role`).
pub trait FailsafeResponder: Send + Sync {
    fn failsafe_asked(&self, epoch: u64) -> dr_witness::role::FailsafeAnswer;
}

impl Sink {
    pub fn new(
        datacenter: String,
        peer_identity: String,
        milvus: Milvus,
        state_dir: &Path,
        state: SharedState,
    ) -> Result<Sink> {
        let path = state_dir.join("sink-checkpoint.json");
        let checkpoint = Checkpoint::load(&path)?;
        {
            let mut s = state.lock().unwrap();
            s.role = super::Role::Sink;
            s.epoch = checkpoint.epoch;
            s.acked_seq = checkpoint.applied_seq;
            s.applied_snapshot_ms = checkpoint.applied_snapshot_ms;
            s.lineage = checkpoint.lineage.clone();
            s.collections = unmanaged_status(&checkpoint.unmanaged);
        }
        Ok(Sink {
            inner: Arc::new(Inner {
                datacenter,
                peer_identity: vec![peer_identity],
                milvus,
                path,
                checkpoint: Mutex::new(checkpoint),
                state,
                generation: AtomicU64::new(0),
                view: std::sync::Mutex::new(None),
                floor: AtomicU64::new(0),
                held: Default::default(),
                failsafe: std::sync::OnceLock::new(),
                divergence: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn set_failsafe(&self, r: Arc<dyn FailsafeResponder>) {
        let _ = self.inner.failsafe.set(r);
    }

    /// From now on, the first stream after this agent acted as primary
    /// waits until its divergent writes are kept.
    pub fn set_divergence(&self, d: super::divergent::Divergence) {
        let _ = self.inner.divergence.set(d);
    }

    /// Follows the witness view: sources older than `epoch` are refused
    /// from now on, and at `epoch` only `primary` may stream. Takes effect
    /// at once and never waits (an apply stalled on Milvus may hold the
    /// checkpoint); the checkpoint's own floor follows in the background
    /// (the witness view, persisted by the failover runtime, is the
    /// durable promise).
    pub fn set_view(&self, epoch: u64, primary: &str) {
        *self.inner.view.lock().unwrap() = Some((epoch, primary.to_string()));
        self.inner.floor.fetch_max(epoch, Ordering::SeqCst);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut cp = inner.checkpoint.lock().await;
            if cp.raise_epoch(epoch) {
                if let Err(e) = cp.store(&inner.path) {
                    tracing::error!(error = %format!("{e:#}"), epoch, "could not persist the sink's epoch floor");
                }
                let mut s = inner.state.lock().unwrap();
                s.epoch = s.epoch.max(epoch);
                s.lineage.clear();
            }
        });
    }

    /// The epoch below which sources are refused right now.
    pub fn floor(&self) -> u64 {
        self.inner.floor.load(Ordering::SeqCst)
    }

    /// Drops `key` (`database.collection`) if this sink keeps it unmanaged;
    /// refuses anything else.
    pub async fn drop_unmanaged(&self, key: &str) -> Result<String, Status> {
        let mut cp = self.inner.checkpoint.lock().await;
        if !cp.unmanaged.contains(key) {
            return Err(Status::failed_precondition(format!(
                "{key} is not a collection this standby keeps unmanaged (managed collections follow the primary; `drctl status` lists the unmanaged ones)"
            )));
        }
        let (db, name) = key.split_once('.').unwrap_or((key, ""));
        match self.inner.milvus.drop_collection(db, name).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(internal(e)),
        }
        cp.unmanaged.remove(key);
        cp.store(&self.inner.path).map_err(internal)?;
        self.inner.state.lock().unwrap().collections = unmanaged_status(&cp.unmanaged);
        Ok(format!("dropped {key} on {}", self.inner.datacenter))
    }

    pub async fn checkpoint(&self) -> Checkpoint {
        self.inner.checkpoint.lock().await.clone()
    }
}

/// How `drctl status` shows collections the standby keeps unmanaged.
fn unmanaged_status(keys: &std::collections::BTreeSet<String>) -> Vec<pb::CollectionStatus> {
    keys.iter()
        .filter_map(|k| k.split_once('.'))
        .map(|(db, c)| pb::CollectionStatus {
            database: db.to_string(),
            collection: c.to_string(),
            state: format!(
                "unmanaged: no longer replicated (outside replication.databases / exclude); kept on this standby; `drctl drop-unmanaged DC {db}.{c}` drops it"
            ),
            ..Default::default()
        })
        .collect()
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("the standby could not apply the batch: {e}"))
}

type Out = mpsc::Sender<Result<pb::SinkMessage, Status>>;

#[tonic::async_trait]
impl Replication for Sink {
    type ReplicateStream = tokio_stream::wrappers::ReceiverStream<Result<pb::SinkMessage, Status>>;

    async fn failsafe(
        &self,
        request: Request<pb::FailsafeRequest>,
    ) -> Result<Response<pb::FailsafeReply>, Status> {
        crate::tls::authorize(&request, &self.inner.peer_identity)?;
        let epoch = dr_witness::wire::failsafe_epoch(request.get_ref())?;
        let Some(r) = self.inner.failsafe.get() else {
            return Err(Status::failed_precondition(
                "this agent runs without witnesses: no failsafe",
            ));
        };
        Ok(Response::new(r.failsafe_asked(epoch).into()))
    }

    type InventoryStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::InventoryPage, Status>>;

    async fn inventory(
        &self,
        request: Request<pb::InventoryRequest>,
    ) -> Result<Response<Self::InventoryStream>, Status> {
        crate::tls::authorize(&request, &self.inner.peer_identity)?;
        let req = request.into_inner();
        if req.database.is_empty() || req.collection.is_empty() {
            return Err(Status::invalid_argument(
                "InventoryRequest needs a database and a collection",
            ));
        }
        let key = format!("{}.{}", req.database, req.collection);
        {
            let cp = self.inner.checkpoint.lock().await;
            let known = cp.epoch.max(self.inner.floor.load(Ordering::SeqCst));
            if req.epoch < known {
                return Err(Status::failed_precondition(format!(
                    "stale epoch: this sink knows epoch {known}, the source is at {}",
                    req.epoch
                )));
            }
            match cp.managed.get(&key) {
                Some(m) if m.source_id == req.source_id => {}
                _ => {
                    return Err(Status::failed_precondition(format!(
                        "{key} on this standby does not mirror the primary's collection {}: \
                         apply the catalog first",
                        req.source_id
                    )))
                }
            }
        }
        let m = self.inner.milvus.clone();
        let info = m
            .describe(&req.database, &req.collection)
            .await
            .map_err(|e| Status::unavailable(format!("describe {key}: {e}")))?;
        m.wait_loaded(
            &req.database,
            &req.collection,
            std::time::Duration::from_secs(300),
        )
        .await
        .map_err(|e| Status::unavailable(format!("{key} is not loaded on the standby: {e}")))?;
        let ts = retry("AllocTimestamp", 5, || m.alloc_timestamp())
            .await
            .map_err(internal)?;
        let page_rows = (req.page_rows as usize).clamp(1, 16_384);
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let partition = (!req.partition.is_empty()).then_some(req.partition.as_str());
            let mut pages = crate::milvus::scan_pages(&m, &info, partition, ts, page_rows);
            while let Some(page) = pages.recv().await {
                let page = match page.and_then(|p| {
                    let hashes = crate::milvus::rows::row_hashes(&p.fields)?;
                    Ok(pb::InventoryPage {
                        keys: Some(super::base::keys_to_pb(&p.keys)),
                        hashes,
                    })
                }) {
                    Ok(p) => Ok(p),
                    Err(e) => Err(Status::unavailable(format!("scan {key}: {e:#}"))),
                };
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn replicate(
        &self,
        request: Request<Streaming<pb::SourceMessage>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let who = crate::tls::authorize(&request, &self.inner.peer_identity)?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::SourceMessage {
                msg: Some(source_message::Msg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the stream must start with SourceHello",
                ))
            }
        };
        if hello.epoch == 0 {
            return Err(Status::invalid_argument(
                "SourceHello.epoch must be at least 1",
            ));
        }
        let view = self.inner.view.lock().unwrap().clone();
        if let Some((epoch, primary)) = view {
            if hello.epoch == epoch && hello.source_dc != primary {
                warn!(source_dc = %hello.source_dc, epoch, %primary, "refused a source that is not the primary of its epoch");
                return Err(Status::failed_precondition(format!(
                    "{} is not the primary of epoch {epoch} ({primary} is)",
                    hello.source_dc
                )));
            }
        }
        let floor = self.inner.floor.load(Ordering::SeqCst);
        if hello.epoch < floor {
            warn!(
                source_epoch = hello.epoch,
                known = floor,
                "refused a source at a stale epoch"
            );
            return Err(Status::failed_precondition(format!(
                "stale epoch: this sink knows epoch {floor}, the source is at {}",
                hello.epoch
            )));
        }
        if let Some(d) = self.inner.divergence.get() {
            if let Err(held) = d.gate(hello.epoch) {
                info!(source_dc = %hello.source_dc, epoch = hello.epoch, "stream held: {}", held.message());
                return Err(held);
            }
        }
        let my_gen = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = {
            let mut cp = self.inner.checkpoint.lock().await;
            if hello.epoch < cp.epoch {
                warn!(
                    source_epoch = hello.epoch,
                    known = cp.epoch,
                    "refused a source at a stale epoch"
                );
                return Err(Status::failed_precondition(format!(
                    "stale epoch: this sink knows epoch {}, the source is at {}",
                    cp.epoch, hello.epoch
                )));
            }
            if cp.raise_epoch(hello.epoch) {
                cp.store(&self.inner.path).map_err(internal)?;
                let mut s = self.inner.state.lock().unwrap();
                s.epoch = cp.epoch;
                s.lineage.clear();
            }
            pb::SinkHello {
                sink_dc: self.inner.datacenter.clone(),
                epoch: cp.epoch,
                lineage: cp.lineage.clone(),
                applied_seq: cp.applied_seq,
            }
        };
        info!(source = %who, source_dc = %hello.source_dc, epoch = hello.epoch, "replication stream accepted");
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(pb::SinkMessage {
            msg: Some(sink_message::Msg::Hello(reply)),
        }))
        .await
        .map_err(|_| Status::cancelled("stream closed"))?;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.state.lock().unwrap().connected = true;
            let r = inner.serve(my_gen, hello.epoch, &mut inbound, &tx).await;
            if let Err(status) = r {
                warn!(error = %status.message(), "replication stream failed");
                inner.state.lock().unwrap().last_error = status.message().to_string();
                let _ = tx.send(Err(status)).await;
            }
            if inner.generation.load(Ordering::SeqCst) == my_gen {
                inner.state.lock().unwrap().connected = false;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

impl Inner {
    async fn serve(
        &self,
        my_gen: u64,
        epoch: u64,
        inbound: &mut Streaming<pb::SourceMessage>,
        tx: &Out,
    ) -> Result<(), Status> {
        while let Some(msg) = inbound.message().await? {
            if self.generation.load(Ordering::SeqCst) != my_gen {
                return Err(Status::aborted("superseded by a newer replication stream"));
            }
            let floor = self.floor.load(Ordering::SeqCst);
            if epoch < floor {
                return Err(Status::failed_precondition(format!(
                    "stale epoch: this sink now knows epoch {floor}, the stream is at {epoch}"
                )));
            }
            match msg.msg {
                Some(source_message::Msg::Hello(h)) => {
                    // The source reset its capture base: a new lineage.
                    let mut cp = self.checkpoint.lock().await;
                    if h.lineage != cp.lineage {
                        info!(old = %cp.lineage, new = %h.lineage, "new replication lineage");
                        cp.lineage = h.lineage.clone();
                        cp.applied_seq = 0;
                        cp.store(&self.path).map_err(internal)?;
                        self.state.lock().unwrap().lineage = h.lineage;
                    }
                }
                Some(source_message::Msg::Batch(b)) => {
                    dr_proto::validate_batch(&b)?;
                    if b.epoch != epoch {
                        return Err(Status::failed_precondition(format!(
                            "batch epoch {} differs from the stream's epoch {epoch}",
                            b.epoch
                        )));
                    }
                    let seq = b.seq;
                    let held = self.apply(b).await?;
                    tx.send(Ok(pb::SinkMessage {
                        msg: Some(sink_message::Msg::Ack(pb::Ack { seq, held })),
                    }))
                    .await
                    .map_err(|_| Status::cancelled("stream closed"))?;
                }
                None => return Err(Status::invalid_argument("empty SourceMessage")),
            }
        }
        Ok(())
    }

    /// Applies one batch; returns the collections it holds (refused for a
    /// permanent reason: their rows in this batch are not applied).
    async fn apply(&self, b: pb::ChangeBatch) -> Result<Vec<pb::Held>, Status> {
        let mut cp = self.checkpoint.lock().await;
        let known = cp.epoch.max(self.floor.load(Ordering::SeqCst));
        if b.epoch < known {
            return Err(Status::failed_precondition(format!(
                "stale epoch {} (this sink knows {known})",
                b.epoch
            )));
        }
        if b.seq <= cp.applied_seq {
            // Already applied (a resent batch): acknowledge again.
            return Ok(vec![]);
        }
        let m = &self.milvus;
        let lineage = cp.lineage.clone();
        let started = std::time::Instant::now();
        let mut catalog_held = Vec::new();
        if b.catalog {
            let mut cat = catalog::from_ddl(&b.ddl)
                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
            cat.unreplicated = b.unreplicated.clone();
            let mut managed = cp.managed.clone();
            let mut unmanaged = cp.unmanaged.clone();
            let (changes, refused) =
                catalog::reconcile(m, &cat, &mut managed, &mut unmanaged, &lineage)
                    .await
                    .map_err(|e| internal(format!("{e:#}")))?;
            for c in &changes {
                info!(change = %c, "catalog");
            }
            cp.managed = managed;
            cp.unmanaged = unmanaged;
            for c in &cat.collections {
                let key = c.key();
                match refused.iter().find(|(k, _)| *k == key) {
                    Some((_, error)) => self.hold(&key, HeldKind::Catalog, error, &cp),
                    None => self.resume(&key, HeldKind::Catalog),
                }
            }
            catalog_held = refused
                .into_iter()
                .map(|(collection, error)| pb::Held { collection, error })
                .collect();
            self.show_collections(&cp);
            cp.pk_fields = cat
                .collections
                .iter()
                .filter_map(|c| Some((c.key(), c.info.primary_field()?.name.clone())))
                .collect();
        }
        let key = format!("{}.{}", b.database, b.collection);
        let mut held: Vec<pb::Held> = Vec::new();
        let (upserted, deleted) = match self.apply_rows(&b, &cp, &lineage).await {
            Ok(n) => {
                self.resume(&key, HeldKind::Rows);
                n
            }
            Err(RowsError::Milvus(e)) if !e.is_retryable() => {
                let error = format!("{e}");
                self.hold(&key, HeldKind::Rows, &error, &cp);
                held.push(pb::Held {
                    collection: key.clone(),
                    error,
                });
                (0, 0)
            }
            Err(RowsError::Milvus(e)) => return Err(internal(e)),
            Err(RowsError::Invalid(s)) => return Err(s),
        };
        tracing::debug!(
            seq = b.seq, collection = %key, upserted, deleted, catalog = b.catalog,
            ms = started.elapsed().as_millis() as u64, "applied batch"
        );
        cp.applied_seq = b.seq;
        // A scan pass's snapshot, or the change log's (writes through the
        // front door): the primary's state as of then is applied here.
        let snapshot = b.pass_snapshot_ms.max(b.log_snapshot_ms);
        if snapshot > 0 {
            cp.applied_snapshot_ms = cp.applied_snapshot_ms.max(snapshot);
        }
        cp.store(&self.path).map_err(internal)?;
        let mut s = self.state.lock().unwrap();
        s.acked_seq = cp.applied_seq;
        s.applied_snapshot_ms = cp.applied_snapshot_ms;
        s.last_pass_snapshot_ms = cp.applied_snapshot_ms;
        s.rows_upserted += upserted;
        s.rows_deleted += deleted;
        s.last_error.clear();
        held.extend(catalog_held);
        Ok(held)
    }

    /// Applies a batch's deletes and rows to the local Milvus; returns
    /// (rows upserted or inserted, keys deleted).
    async fn apply_rows(
        &self,
        b: &pb::ChangeBatch,
        cp: &Checkpoint,
        lineage: &str,
    ) -> Result<(u64, u64), RowsError> {
        let key = format!("{}.{}", b.database, b.collection);
        let m = &self.milvus;
        let partition = (!b.partition.is_empty()).then_some(b.partition.as_str());
        let mut deleted = 0u64;
        let mut upserted = 0u64;
        if let Some(keys) = b
            .deletes
            .as_ref()
            .filter(|k| !k.ints.is_empty() || !k.strs.is_empty())
        {
            let pk_field = match cp.pk_fields.get(&key) {
                Some(f) => f.clone(),
                None => m
                    .describe(&b.database, &b.collection)
                    .await?
                    .primary_field()
                    .map(|f| f.name.clone())
                    .ok_or_else(|| {
                        RowsError::Invalid(internal("collection without a primary key"))
                    })?,
            };
            let keys = keys_from_pb(keys);
            retry("apply deletes", 5, || {
                m.delete(&b.database, &b.collection, partition, &pk_field, &keys)
            })
            .await?;
            deleted += keys.len() as u64;
        }
        let may_insert = cp
            .managed
            .get(&key)
            .is_some_and(|mg| !mg.created_in.is_empty() && mg.created_in == lineage);
        for (rows, insert) in [(&b.inserts, may_insert), (&b.upserts, false)] {
            let Some(rows) = rows.as_ref().filter(|r| r.num_rows > 0) else {
                continue;
            };
            let fields: Vec<FieldData> = rows
                .fields
                .iter()
                .map(|f| FieldData::decode(f.as_slice()))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    RowsError::Invalid(Status::invalid_argument(format!(
                        "undecodable field data: {e}"
                    )))
                })?;
            let n = u32::try_from(rows.num_rows)
                .map_err(|_| RowsError::Invalid(Status::invalid_argument("too many rows")))?;
            match crate::milvus::rows::num_rows(&fields) {
                Ok(k) if k as u64 == rows.num_rows => {}
                _ => {
                    return Err(RowsError::Invalid(Status::invalid_argument(
                        "row count does not match the field data",
                    )))
                }
            }
            if insert {
                retry("apply inserts", 5, || {
                    m.insert(&b.database, &b.collection, partition, fields.clone(), n)
                })
                .await?;
            } else {
                retry("apply upserts", 5, || {
                    m.upsert(&b.database, &b.collection, partition, fields.clone(), n)
                })
                .await?;
            }
            upserted += rows.num_rows;
        }
        Ok((upserted, deleted))
    }

    /// Holds `key` for `kind`: logs at ERROR once (not again while the
    /// same error recurs), shows it in status.
    fn hold(&self, key: &str, kind: HeldKind, error: &str, cp: &Checkpoint) {
        let newly = {
            let mut held = self.held.lock().unwrap();
            held.insert((key.to_string(), kind), error.to_string())
                .as_deref()
                != Some(error)
        };
        if newly {
            tracing::error!(
                collection = %key, %error,
                "the standby refuses this collection ({kind:?}) for a reason retrying will not cure: it is held, the other collections go on; fix the cause (e.g. drop or exclude the conflicting collection) and it resumes by itself"
            );
        }
        self.show_collections(cp);
    }

    fn resume(&self, key: &str, kind: HeldKind) {
        if self
            .held
            .lock()
            .unwrap()
            .remove(&(key.to_string(), kind))
            .is_some()
        {
            info!(collection = %key, "the standby accepts this collection again: resumed");
        }
    }

    /// `drctl status` on the sink: held and unmanaged collections.
    fn show_collections(&self, cp: &Checkpoint) {
        let mut list = unmanaged_status(&cp.unmanaged);
        for ((key, _), error) in self.held.lock().unwrap().iter() {
            if let Some((db, c)) = key.split_once('.') {
                list.push(pb::CollectionStatus {
                    database: db.to_string(),
                    collection: c.to_string(),
                    state: format!("held: {error}"),
                    ..Default::default()
                });
            }
        }
        self.state.lock().unwrap().collections = list;
    }
}

/// Why a collection is held on the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HeldKind {
    /// Its catalog entry cannot be made so (e.g. another schema here).
    Catalog,
    /// Its rows are refused.
    Rows,
}

enum RowsError {
    Milvus(crate::milvus::MilvusError),
    Invalid(Status),
}

impl From<crate::milvus::MilvusError> for RowsError {
    fn from(e: crate::milvus::MilvusError) -> RowsError {
        RowsError::Milvus(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An apply stalled on a frozen Milvus holds the checkpoint; following
    /// a new witness view must neither wait for it nor let the old epoch
    /// in meanwhile.
    #[tokio::test]
    async fn a_new_view_takes_effect_while_an_apply_holds_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let milvus = crate::milvus::Milvus::connect(crate::milvus::Connection {
            endpoint: "http://127.0.0.1:9".into(),
            health_url: None,
            authorization: None,
            request_timeout: std::time::Duration::from_secs(1),
        })
        .unwrap();
        let state: SharedState = Default::default();
        let sink = Sink::new(
            "dc-b".into(),
            "agent.dc-a".into(),
            milvus,
            dir.path(),
            state,
        )
        .unwrap();
        {
            let mut cp = sink.inner.checkpoint.lock().await;
            cp.raise_epoch(1);
            cp.lineage = "L1".into();
        }
        let stalled = sink.inner.checkpoint.lock().await;
        let t = std::time::Instant::now();
        sink.set_view(2, "dc-b");
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(sink.floor(), 2, "the new floor is in force at once");
        let stale = pb::ChangeBatch {
            epoch: 1,
            seq: 1,
            ..Default::default()
        };
        drop(stalled);
        let err = sink.inner.apply(stale).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        // The checkpoint follows, and forgets the lineage of epoch 1.
        for _ in 0..100 {
            if sink.checkpoint().await.epoch == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let cp = sink.checkpoint().await;
        assert_eq!((cp.epoch, cp.lineage.as_str()), (2, ""));
        assert_eq!(
            Checkpoint::load(&dir.path().join("sink-checkpoint.json"))
                .unwrap()
                .epoch,
            2
        );
    }

    #[test]
    fn raising_the_epoch_forgets_the_lineage() {
        let mut cp = Checkpoint {
            epoch: 3,
            lineage: "L".into(),
            applied_seq: 9,
            ..Default::default()
        };
        assert!(!cp.raise_epoch(3));
        assert_eq!(cp.lineage, "L");
        assert!(cp.raise_epoch(4));
        assert_eq!((cp.epoch, cp.lineage.as_str(), cp.applied_seq), (4, "", 0));
    }

    #[test]
    fn checkpoint_round_trips_and_missing_file_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cp.json");
        assert_eq!(Checkpoint::load(&p).unwrap(), Checkpoint::default());
        let mut cp = Checkpoint {
            epoch: 3,
            lineage: "L".into(),
            applied_seq: 17,
            applied_snapshot_ms: 5,
            ..Default::default()
        };
        cp.managed.insert(
            "default.c".into(),
            Managed {
                source_id: 9,
                created_in: "L".into(),
            },
        );
        cp.store(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), cp);
    }
}
