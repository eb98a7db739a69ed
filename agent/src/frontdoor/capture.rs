//! Write-path capture: the front door's mutations and DDL, logged once
//! Milvus has acknowledged them.
//!
//! Insert, Upsert and Delete of one collection go through one at a time
//! (a per-collection lock held from before the call reaches Milvus until
//! its log entry is on disk), so the change log has them in the order
//! Milvus applied them. A delete by expression is resolved to primary keys
//! under that lock, just before it runs, so the standby deletes exactly
//! the rows the primary deleted. The client gets Milvus's own answer,
//! after the entry is durable (and in sync mode, after the standby applied
//! it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use hyper::header::HeaderMap;
use prost::Message;

use super::changelog::{Appended, ChangeLog};
use crate::milvus::{self as mv, rows, Milvus, Pk};
use crate::replication::base;
use dr_proto::pb;
use milvus::proto::milvus::{DeleteRequest, MutationResult};

/// What the front door does with a call besides forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Insert or Upsert: the rows are logged.
    Rows,
    /// Delete: resolved to keys, which are logged.
    Delete,
    /// A catalog change: a catalog marker is logged.
    Ddl,
}

/// Methods that change the catalog the standby replicates: databases,
/// collections, partitions, indexes, load state.
pub const DDL_METHODS: &[&str] = &[
    "CreateDatabase",
    "DropDatabase",
    "CreateCollection",
    "DropCollection",
    "AlterCollection",
    "RenameCollection",
    "CreatePartition",
    "DropPartition",
    "CreateIndex",
    "DropIndex",
    "AlterIndex",
    "LoadCollection",
    "ReleaseCollection",
    "LoadPartitions",
    "ReleasePartitions",
];

pub fn kind(method: &str) -> Option<Kind> {
    match method {
        "Insert" | "Upsert" => Some(Kind::Rows),
        "Delete" => Some(Kind::Delete),
        m if DDL_METHODS.contains(&m) => Some(Kind::Ddl),
        _ => None,
    }
}

/// The one message of a unary gRPC body (`flag, length, message`).
pub fn grpc_message(body: &[u8]) -> Result<&[u8], String> {
    if body.len() < 5 {
        return Err(format!("a gRPC message of {} bytes", body.len()));
    }
    if body[0] != 0 {
        return Err("a compressed gRPC message (turn compression off on the client)".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(format!(
            "a gRPC body of {} bytes for a message of {len}",
            body.len()
        ));
    }
    Ok(&body[5..])
}

/// The database a call is for: the request's own, else the `dbname`
/// header pymilvus and the SDKs send, else `default`.
pub fn database(in_request: &str, headers: &HeaderMap) -> String {
    if !in_request.is_empty() {
        return in_request.to_string();
    }
    headers
        .get("dbname")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("default")
        .to_string()
}

/// Whether Milvus accepted the call: gRPC OK and a success status in the
/// reply (Milvus 2.3 reports most failures there).
pub fn mutation_ok(grpc_status: Option<u32>, body: &[u8]) -> Option<MutationResult> {
    if grpc_status != Some(0) {
        return None;
    }
    let r = MutationResult::decode(grpc_message(body).ok()?).ok()?;
    #[allow(deprecated)] // Milvus 2.3 still sets error_code.
    let ok = r
        .status
        .as_ref()
        .is_none_or(|s| s.code == 0 && s.error_code == 0);
    ok.then_some(r)
}

/// The keys of a mutation reply (auto-id collections get theirs here).
pub fn ids_of(r: &MutationResult) -> Option<pb::Keys> {
    use milvus::proto::schema::i_ds::IdField;
    match r.i_ds.as_ref()?.id_field.as_ref()? {
        IdField::IntId(a) => Some(pb::Keys {
            ints: a.data.clone(),
            strs: vec![],
        }),
        IdField::StrId(a) => Some(pb::Keys {
            ints: vec![],
            strs: a.data.clone(),
        }),
        _ => None,
    }
}

/// Sync mode's settings. Whether it is degraded (the standby did not
/// confirm a write in time) is `ReplicationState::sync_degraded`: set here
/// on a timeout, cleared by the source once the standby applied every
/// logged write.
#[derive(Debug, Default)]
pub struct Sync {
    pub on: bool,
    pub timeout: Duration,
    pub refuse_when_degraded: bool,
}

impl Sync {
    pub fn new(on: bool, timeout: Duration, refuse_when_degraded: bool) -> Sync {
        Sync {
            on,
            timeout,
            refuse_when_degraded,
        }
    }

    /// What status shows: "async", or in sync mode whether writes wait for
    /// the standby.
    pub fn describe(&self, degraded: bool) -> &'static str {
        match (self.on, degraded, self.refuse_when_degraded) {
            (false, _, _) => "async",
            (true, false, _) => "sync: writes wait until the standby applied them",
            (true, true, true) => {
                "sync, degraded: the standby does not confirm in time; writes are refused"
            }
            (true, true, false) => {
                "sync, degraded: the standby does not confirm in time; writes are accepted asynchronously"
            }
        }
    }
}

/// The door's capture: the log, and what resolving deletes needs.
pub struct Capture {
    pub log: Arc<ChangeLog>,
    pub milvus: Milvus,
    pub sync: Arc<Sync>,
    state: crate::replication::SharedState,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    schemas: std::sync::Mutex<HashMap<String, mv::CollectionInfo>>,
    /// The log's time per write, by step (see [`super::Stats`]).
    log_seconds: LogSeconds,
}

/// The change log's time per step, as a metric family.
pub type LogSeconds = prometheus_client::metrics::family::Family<
    Vec<(String, String)>,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

impl Capture {
    pub fn new(
        log: Arc<ChangeLog>,
        milvus: Milvus,
        sync: Arc<Sync>,
        state: crate::replication::SharedState,
        log_seconds: LogSeconds,
    ) -> Capture {
        Capture {
            log,
            milvus,
            sync,
            state,
            locks: Default::default(),
            schemas: Default::default(),
            log_seconds,
        }
    }

    /// Runs `work` on the log off the async threads, timed as `step`.
    async fn timed<T: Send + 'static>(
        &self,
        step: &str,
        work: impl FnOnce(&ChangeLog) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let log = self.log.clone();
        let start = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || work(&log)).await;
        self.log_seconds
            .get_or_create(&vec![("step".into(), step.into())])
            .observe(start.elapsed().as_secs_f64());
        r
    }

    /// The write order of one collection.
    pub async fn lock(&self, db: &str, collection: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .unwrap()
            .entry(format!("{db}.{collection}"))
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// A DDL call went through: schemas may have changed.
    pub fn forget_schemas(&self) {
        self.schemas.lock().unwrap().clear();
    }

    async fn schema(&self, db: &str, collection: &str) -> Result<mv::CollectionInfo> {
        let key = format!("{db}.{collection}");
        if let Some(i) = self.schemas.lock().unwrap().get(&key) {
            return Ok(i.clone());
        }
        let info = self.milvus.describe(db, collection).await?;
        self.schemas.lock().unwrap().insert(key, info.clone());
        Ok(info)
    }

    /// The primary keys a delete will remove: every key matching its
    /// expression now (strong consistency), page by page in key order.
    pub async fn resolve_delete(&self, db: &str, req: &DeleteRequest) -> Result<Vec<Pk>> {
        if !req.expr_template_values.is_empty() {
            bail!("expression templates are not resolved by the front door");
        }
        let info = self.schema(db, &req.collection_name).await?;
        let pk = info
            .primary_field()
            .ok_or_else(|| anyhow!("{}: no primary key", req.collection_name))?
            .name
            .clone();
        // The SDKs' delete by ids: `pk in [1, 2]`. Deleting a key that is
        // not there is a no-op on both sides: no query needed.
        if let Some(keys) = keys_in_expr(&req.expr, &pk) {
            return Ok(keys);
        }
        let partition = (!req.partition_name.is_empty()).then_some(req.partition_name.as_str());
        let mut keys: Vec<Pk> = Vec::new();
        loop {
            let expr = match keys.last() {
                None => format!("({})", req.expr),
                Some(Pk::Int(v)) => format!("({}) and {pk} > {v}", req.expr),
                Some(Pk::Str(v)) => format!("({}) and {pk} > {}", req.expr, mv::quote(v)),
            };
            let f = self
                .milvus
                .query(
                    &info,
                    partition,
                    &expr,
                    std::slice::from_ref(&pk),
                    Some(mv::MAX_QUERY_WINDOW),
                    0,
                )
                .await?;
            if rows::num_rows(&f)? == 0 {
                break;
            }
            let mut page = rows::primary_keys(&f, &pk)?;
            page.sort();
            let n = page.len();
            if keys
                .last()
                .is_some_and(|l| page.first().is_some_and(|f| f <= l))
            {
                bail!("Milvus returned keys out of order while resolving a delete");
            }
            keys.extend(page);
            if n < mv::MAX_QUERY_WINDOW {
                break;
            }
        }
        Ok(keys)
    }

    /// Writes `entry` to the log before Milvus answers it (see
    /// [`ChangeLog::prepare`]); `None`: it could not be, and a scan pass
    /// was asked for.
    pub async fn prepare(&self, entry: pb::ChangeLogEntry) -> Option<Prepared> {
        match self.timed("prepare", move |log| log.prepare(&entry)).await {
            Ok(Ok(Appended::At(at))) => Some(Prepared {
                log: self.log.clone(),
                at: Some(at),
            }),
            r => {
                self.not_logged(NotLogged::of(r));
                None
            }
        }
    }

    /// Milvus acknowledged the prepared write at `acked_ms`: records its
    /// answer (and the keys it assigned). Returns the position to wait for
    /// in sync mode; `None` if the write is not in the log after all (a
    /// scan pass was asked for).
    pub async fn acknowledge(
        &self,
        mut p: Prepared,
        acked_ms: i64,
        ids: Option<pb::Keys>,
    ) -> Option<u64> {
        let at = p.at.take()?;
        let r = self
            .timed("acknowledge", move |log| log.acknowledge(at, acked_ms, ids))
            .await;
        match r {
            Ok(Ok(true)) => {
                self.state.lock().unwrap().log_depth = self.log.depth();
                Some(at)
            }
            Ok(Ok(false)) => None,
            Ok(Err(e)) => {
                self.not_logged(NotLogged::Failed(e));
                None
            }
            Err(e) => {
                self.not_logged(NotLogged::Panicked(e));
                None
            }
        }
    }

    /// Milvus refused the prepared write: it leaves the log.
    pub async fn abandon(&self, mut p: Prepared) {
        if let Some(at) = p.at.take() {
            let log = self.log.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || log.abandon(at)).await {
                tracing::error!(error = %format!("{e:#}"), "front door: dropping a refused write from the change log failed");
            }
        }
    }

    /// A write the log could not take: a scan pass will find it.
    fn not_logged(&self, why: NotLogged) {
        match why {
            NotLogged::Overflowed => {
                tracing::warn!("front door: the change log reached frontdoor.change_log_max_mb; cleared, a full scan pass replicates what it held");
                let mut s = self.state.lock().unwrap();
                s.log_overflows += 1;
                s.log_overflow_ms = dr_proto::now_ms();
                s.log_depth = self.log.depth();
            }
            NotLogged::Failed(e) => {
                tracing::error!(error = %format!("{e:#}"), "front door: a write could not be logged; a full scan pass will replicate it");
                let _ = self
                    .log
                    .request_rescan(&format!("a write could not be logged: {e:#}"));
            }
            NotLogged::Panicked(e) => {
                tracing::error!(error = %e, "front door: logging a write failed");
                let _ = self
                    .log
                    .request_rescan(&format!("logging a write failed: {e}"));
            }
        }
    }

    /// Logs what Milvus acknowledged; a write the log cannot take asks for
    /// a scan pass instead (nothing acknowledged is lost: the scan finds
    /// it). Returns the position to wait for in sync mode.
    pub async fn log(&self, entry: pb::ChangeLogEntry) -> Option<u64> {
        match self.timed("append", move |log| log.append(&entry)).await {
            Ok(Ok(Appended::At(at))) => {
                self.state.lock().unwrap().log_depth = self.log.depth();
                Some(at)
            }
            r => {
                self.not_logged(NotLogged::of(r));
                None
            }
        }
    }

    /// Sync mode: waits until the standby applied position `at`, or the
    /// timeout. Returns whether it did.
    pub async fn wait_applied(&self, at: u64) -> bool {
        let mut rx = self.log.subscribe_applied();
        let ok = tokio::time::timeout(self.sync.timeout, rx.wait_for(|a| *a >= at))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            let mut s = self.state.lock().unwrap();
            if !s.sync_degraded {
                tracing::warn!(timeout = ?self.sync.timeout, "sync mode: the standby did not apply a write in time; degraded until it has applied every logged write");
            }
            s.sync_degraded = true;
        }
        ok
    }

    pub fn degraded(&self) -> bool {
        self.state.lock().unwrap().sync_degraded
    }
}

/// Why a write is not in the change log (a scan pass replicates it).
enum NotLogged {
    /// The log reached its bound and was cleared.
    Overflowed,
    Failed(anyhow::Error),
    Panicked(tokio::task::JoinError),
}

impl NotLogged {
    /// From a log write that did not return a position.
    fn of(r: Result<Result<Appended>, tokio::task::JoinError>) -> NotLogged {
        match r {
            Ok(Ok(Appended::Overflowed)) => NotLogged::Overflowed,
            Ok(Ok(Appended::At(at))) => NotLogged::Failed(anyhow!("logged at {at}")),
            Ok(Err(e)) => NotLogged::Failed(e),
            Err(e) => NotLogged::Panicked(e),
        }
    }
}

/// A write in the change log waiting for Milvus's answer. Dropped
/// unanswered (the client went away mid-call, or Milvus's answer was
/// lost), it leaves the log and a scan pass is asked for: Milvus may have
/// applied it.
pub struct Prepared {
    log: Arc<ChangeLog>,
    at: Option<u64>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(at) = self.at.take() {
            let log = self.log.clone();
            let work = move || {
                let _ = log.abandon(at);
                let _ = log.request_rescan(
                    "a write was passed to Milvus and its answer never came back (the client went away, or the answer was lost)",
                );
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(work)),
                Err(_) => work(),
            }
        }
    }
}

/// The keys of an expression `pk in [k1, k2, ...]` on the primary key
/// `pk` (integers, or strings in single or double quotes), as the SDKs
/// write a delete by ids; `None` for any other expression.
pub fn keys_in_expr(expr: &str, pk: &str) -> Option<Vec<Pk>> {
    let rest = expr.trim().strip_prefix(pk)?;
    let rest = rest.trim_start();
    let rest = rest
        .strip_prefix("in")
        .or_else(|| rest.strip_prefix("IN"))?;
    if !rest.starts_with(|c: char| c.is_whitespace() || c == '[') {
        return None;
    }
    let list = rest.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut keys = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek().copied() {
            None => break,
            Some(q @ ('"' | '\'')) => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        c if c == q => break,
                        c => s.push(c),
                    }
                }
                keys.push(Pk::Str(s));
            }
            Some(_) => {
                let mut n = String::new();
                while let Some(c) = chars.next_if(|c| *c == '-' || c.is_ascii_digit()) {
                    n.push(c);
                }
                keys.push(Pk::Int(n.parse().ok()?));
            }
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(_) => return None,
        }
    }
    let mixed = keys.iter().any(|k| matches!(k, Pk::Int(_)))
        && keys.iter().any(|k| matches!(k, Pk::Str(_)));
    (!mixed).then_some(keys)
}

/// What the door reads of an Insert or Upsert request (the two share
/// these field numbers): enough to order and log it, without decoding its
/// rows (the raw request is what the log keeps).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RowsHead {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
    #[prost(string, tag = "4")]
    pub partition_name: String,
    #[prost(uint32, tag = "7")]
    pub num_rows: u32,
}

/// The head every collection-scoped DDL request of MilvusService shares
/// (`db_name` 2, `collection_name` 3; RenameCollection's `oldName` 3):
/// the write order it takes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DdlHead {
    #[prost(string, tag = "2")]
    pub db_name: String,
    #[prost(string, tag = "3")]
    pub collection_name: String,
}

/// Whether a DDL method is about one collection (not a database's).
pub fn collection_scoped(method: &str) -> bool {
    !matches!(method, "CreateDatabase" | "DropDatabase")
}

/// A log entry for an insert or upsert, before Milvus answered it (its
/// answer, and the keys of an auto-id insert, come with
/// [`Prepared::acknowledge`]).
pub fn rows_entry(epoch: u64, db: &str, head: &RowsHead, raw: &[u8]) -> pb::ChangeLogEntry {
    pb::ChangeLogEntry {
        epoch,
        database: db.to_string(),
        collection: head.collection_name.clone(),
        partition: head.partition_name.clone(),
        rows_request: raw.to_vec(),
        ..Default::default()
    }
}

/// A log entry for resolved deletes.
pub fn delete_entry(epoch: u64, db: &str, req: &DeleteRequest, keys: &[Pk]) -> pb::ChangeLogEntry {
    pb::ChangeLogEntry {
        epoch,
        acked_ms: dr_proto::now_ms(),
        database: db.to_string(),
        collection: req.collection_name.clone(),
        partition: req.partition_name.clone(),
        deletes: Some(base::keys_to_pb(keys)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8];
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(msg);
        b
    }

    #[test]
    fn grpc_bodies_are_unframed_and_bad_ones_named() {
        assert_eq!(grpc_message(&framed(b"abc")).unwrap(), b"abc");
        assert!(grpc_message(b"\0\0").unwrap_err().contains("2 bytes"));
        let mut c = framed(b"abc");
        c[0] = 1;
        assert!(grpc_message(&c).unwrap_err().contains("compressed"));
        let mut short = framed(b"abc");
        short.pop();
        assert!(grpc_message(&short).is_err());
    }

    #[test]
    fn a_mutation_counts_only_when_milvus_says_success() {
        use milvus::proto::common::Status;
        let ok = MutationResult {
            status: Some(Status::default()),
            insert_cnt: 2,
            ..Default::default()
        };
        assert!(mutation_ok(Some(0), &framed(&ok.encode_to_vec())).is_some());
        assert!(mutation_ok(Some(14), &framed(&ok.encode_to_vec())).is_none());
        let failed = MutationResult {
            status: Some(Status {
                code: 1100,
                reason: "field dim mismatch".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(mutation_ok(Some(0), &framed(&failed.encode_to_vec())).is_none());
    }

    #[test]
    fn deletes_by_ids_are_read_from_the_expression_and_others_are_not() {
        assert_eq!(
            keys_in_expr("id in [1, -2,3]", "id"),
            Some(vec![Pk::Int(1), Pk::Int(-2), Pk::Int(3)])
        );
        assert_eq!(
            keys_in_expr(r#"name in ["a", 'b\'c', "d,e"]"#, "name"),
            Some(vec![
                Pk::Str("a".into()),
                Pk::Str("b'c".into()),
                Pk::Str("d,e".into())
            ])
        );
        assert_eq!(keys_in_expr("id in []", "id"), Some(vec![]));
        for other in [
            "id >= 90 and id < 95",
            "id in [1, 2] or n > 3",
            "idx in [1]",
            "n in [1, 2]",
            "id in [1 2]",
            "id in [1.5]",
            "id in [1, \"a\"]",
            "id not in [1]",
        ] {
            assert_eq!(keys_in_expr(other, "id"), None, "{other}");
        }
    }

    #[test]
    fn ddl_calls_are_ordered_by_the_collection_they_name() {
        use milvus::proto::milvus::{
            CreateCollectionRequest, DropIndexRequest, LoadCollectionRequest,
            RenameCollectionRequest,
        };
        let head = |m: Vec<u8>| {
            let h = DdlHead::decode(grpc_message(&framed(&m)).unwrap()).unwrap();
            (h.db_name, h.collection_name)
        };
        let want = ("db1".to_string(), "c".to_string());
        assert_eq!(
            head(
                CreateCollectionRequest {
                    db_name: "db1".into(),
                    collection_name: "c".into(),
                    schema: vec![1, 2, 3],
                    shards_num: 2,
                    ..Default::default()
                }
                .encode_to_vec()
            ),
            want
        );
        assert_eq!(
            head(
                RenameCollectionRequest {
                    db_name: "db1".into(),
                    old_name: "c".into(),
                    new_name: "d".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            ),
            want
        );
        assert_eq!(
            head(
                DropIndexRequest {
                    db_name: "db1".into(),
                    collection_name: "c".into(),
                    field_name: "v".into(),
                    ..Default::default()
                }
                .encode_to_vec()
            ),
            want
        );
        assert_eq!(
            head(
                LoadCollectionRequest {
                    db_name: "db1".into(),
                    collection_name: "c".into(),
                    replica_number: 1,
                    ..Default::default()
                }
                .encode_to_vec()
            ),
            want
        );
        assert!(DDL_METHODS.iter().all(|m| kind(m) == Some(Kind::Ddl)));
        assert!(!collection_scoped("CreateDatabase") && !collection_scoped("DropDatabase"));
        assert!(collection_scoped("RenameCollection"));
    }

    #[test]
    fn the_database_comes_from_the_request_then_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(database("", &h), "default");
        h.insert("dbname", "sales".parse().unwrap());
        assert_eq!(database("", &h), "sales");
        assert_eq!(database("hr", &h), "hr");
    }

    #[test]
    fn methods_are_sorted_into_what_is_logged() {
        assert_eq!(kind("Insert"), Some(Kind::Rows));
        assert_eq!(kind("Upsert"), Some(Kind::Rows));
        assert_eq!(kind("Delete"), Some(Kind::Delete));
        assert_eq!(kind("CreateIndex"), Some(Kind::Ddl));
        assert_eq!(kind("Search"), None);
        for m in DDL_METHODS {
            assert!(super::super::is_write(m), "{m} must be fenced too");
        }
    }
}
