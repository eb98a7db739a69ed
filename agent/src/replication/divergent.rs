//! Divergent writes: what a demoted former primary holds that it had not
//! replicated, kept before the new primary's stream overwrites it.
//!
//! A primary cut off from its standby may still acknowledge writes (its
//! clients reach it; the witnesses fail over without it). When it comes back
//! as the standby, the resync makes it identical to the new primary: those
//! rows would be gone. So before this agent's sink accepts the first stream
//! after having acted as primary, it compares its Milvus with its own
//! capture base (the hash of every row it had replicated, as the standby
//! acknowledged them) and writes every row that differs (keys the base does
//! not have, rows whose content changed) as Parquet, with a manifest, in
//! the backup layout under `divergent/<datacenter>-epoch<N>/`: to the
//! backup bucket when `backup.s3` is configured, else to the state
//! directory. Keys the base has and Milvus no longer holds (deleted there)
//! are listed in the manifest. Then it reports the export to the
//! witnesses, who record it where `drctl witness mark-resynced` looks, and
//! lets the stream in.
//!
//! Rows acknowledged by the old primary just before the cut may be in the
//! export although they reached the new primary too (their batches were
//! not acknowledged): the export errs on the side of keeping.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::{error, info, warn};

use super::base::{self, Base};
use super::catalog::{self, CollectionEntry, Filter};
use crate::backup::columns::{self, Column};
use crate::backup::create::{object_key, ObjectWriter, Out};
use crate::backup::manifest::{CollectionBackup, ObjectEntry};
use crate::backup::{Digest, Store};
use crate::milvus::{self as mv, rows, Milvus, Pk};
use dr_proto::pb;

/// Rows per Parquet object of an export.
const OBJECT_ROWS: u64 = 200_000;
/// Deleted keys listed in a manifest, per collection.
const DELETED_LISTED: usize = 100_000;
/// Keys in a report's sample.
const SAMPLE: usize = 10;

/// Where exports go.
#[derive(Clone)]
pub enum Dest {
    /// The backup bucket (`backup.s3`), under its prefix.
    S3(Store),
    /// A local folder (no `backup.s3`): `<state_dir>/divergent`.
    Dir(PathBuf),
}

impl Dest {
    fn describe(&self, rel: &str) -> String {
        match self {
            Dest::S3(s) => s.url(rel),
            Dest::Dir(d) => d.join(rel).display().to_string(),
        }
    }

    fn out(&self, rel: &str) -> Result<Out> {
        match self {
            Dest::S3(s) => Ok(Out::S3(s.upload(rel))),
            Dest::Dir(d) => Out::file(&d.join(rel)),
        }
    }

    async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Dest::S3(s) => s.put(rel, bytes).await,
            Dest::Dir(d) => {
                let path = d.join(rel);
                if let Some(p) = path.parent() {
                    std::fs::create_dir_all(p)?;
                }
                dr_proto::statefile::write_atomic(&path, &bytes)
                    .with_context(|| format!("write {}", path.display()))
            }
        }
    }
}

/// The manifest of one export (`manifest.json`, written last).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// Always `divergent`.
    pub kind: String,
    pub id: String,
    pub datacenter: String,
    /// The epoch at which this datacenter acted as primary.
    pub primary_epoch: u64,
    /// The epoch of the primary whose stream it was about to accept.
    pub demoted_at_epoch: u64,
    pub created_at: String,
    /// What the rows were compared with.
    pub compared_with: String,
    pub tool: String,
    pub milvus_endpoint: String,
    pub total_rows: u64,
    pub total_deleted_keys: u64,
    pub collections: Vec<DivergentCollection>,
}

/// One collection (or partition) of an export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DivergentCollection {
    /// The collection as a backup describes it (schema, indexes, the
    /// Parquet objects holding the rows).
    pub collection: CollectionBackup,
    /// The partition compared, when partitions are replicated separately.
    pub partition: Option<String>,
    /// Rows whose key it had never replicated.
    pub extra_rows: u64,
    /// Rows whose content differs from what it had replicated.
    pub changed_rows: u64,
    /// Keys it had replicated and no longer holds (JSON numbers or strings),
    /// at most 100,000 listed.
    pub deleted_keys: Vec<serde_json::Value>,
    pub deleted_count: u64,
    /// Keys of the first rows, for the report.
    pub sample: Vec<serde_json::Value>,
}

/// What this agent remembers about its exports (`divergent.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Memory {
    /// The newest epoch at which this agent acted as primary.
    acted_epoch: u64,
    /// The newest `acted_epoch` whose divergent writes were kept.
    exported_epoch: u64,
    /// Where the newest export went, and what it held.
    #[serde(default)]
    last: Option<Done>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Done {
    id: String,
    location: String,
    rows: u64,
    deleted_keys: u64,
    reported: bool,
}

/// Reports an export to the witnesses' leader; whether it was recorded.
pub type Reporter =
    Arc<dyn Fn(pb::AgentReport) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// Holds the sink's first stream after acting as primary until the
/// divergent writes are kept.
#[derive(Clone)]
pub struct Divergence {
    inner: Arc<Inner>,
}

struct Inner {
    datacenter: String,
    milvus: Milvus,
    base: Arc<Base>,
    filter: Filter,
    page_rows: usize,
    dest: Dest,
    path: PathBuf,
    memory: Mutex<Memory>,
    reporter: Option<Reporter>,
    task: Mutex<Option<JoinHandle<()>>>,
    last_error: Mutex<String>,
}

impl Divergence {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        datacenter: String,
        milvus: Milvus,
        base: Arc<Base>,
        filter: Filter,
        page_rows: usize,
        dest: Dest,
        state_dir: &Path,
        reporter: Option<Reporter>,
    ) -> Result<Divergence> {
        let path = state_dir.join("divergent.json");
        let memory: Memory = dr_proto::statefile::read_json(
            &path,
            "the divergent-writes record",
            "delete it only after checking that no export is needed (a former primary then exports again)",
        )?
        .unwrap_or_else(|| Memory {
            // No record yet (a new agent, or one from before this record
            // existed): a capture base written as source says it acted
            // as primary at that epoch.
            acted_epoch: match (base.epoch(), base.next_seq()) {
                (Ok(e), Ok(seq)) if seq > 1 => e,
                _ => 0,
            },
            ..Default::default()
        });
        Ok(Divergence {
            inner: Arc::new(Inner {
                datacenter,
                milvus,
                base,
                filter,
                page_rows,
                dest,
                path,
                memory: Mutex::new(memory),
                reporter,
                task: Mutex::new(None),
                last_error: Mutex::new(String::new()),
            }),
        })
    }

    /// This agent is about to act as primary at `epoch`: whatever it
    /// accepts from now on and does not replicate must be kept if it is
    /// demoted. Persisted before it acts.
    pub fn acting(&self, epoch: u64) -> Result<()> {
        let mut m = self.inner.memory.lock().unwrap();
        if m.acted_epoch >= epoch {
            return Ok(());
        }
        let mut next = m.clone();
        next.acted_epoch = epoch;
        dr_proto::statefile::write_json(&self.inner.path, &next)?;
        *m = next;
        Ok(())
    }

    /// Whether a stream from a source at `epoch` may open now. If not, the
    /// export runs (started here when needed) and the status says so.
    pub fn gate(&self, epoch: u64) -> Result<(), Status> {
        let acted = {
            let m = self.inner.memory.lock().unwrap();
            if m.acted_epoch <= m.exported_epoch || epoch <= m.acted_epoch {
                return Ok(());
            }
            m.acted_epoch
        };
        let mut task = self.inner.task.lock().unwrap();
        if task.as_ref().is_none_or(|t| t.is_finished()) {
            let inner = self.inner.clone();
            *task = Some(tokio::spawn(async move {
                inner.keep(acted, epoch).await;
            }));
        }
        let last = self.inner.last_error.lock().unwrap().clone();
        Err(Status::unavailable(format!(
            "{} is keeping the writes it accepted as primary at epoch {acted} and had not replicated \
             before it resynchronises from the primary of epoch {epoch}{}",
            self.inner.datacenter,
            if last.is_empty() {
                String::new()
            } else {
                format!(" (last attempt: {last}; retrying)")
            }
        )))
    }
}

impl Inner {
    /// Exports (retrying with backoff until it succeeds), then reports.
    async fn keep(self: Arc<Self>, acted: u64, demoted_at: u64) {
        let mut backoff = Duration::from_secs(1);
        let manifest = loop {
            match export(&self, acted, demoted_at).await {
                Ok(m) => break m,
                Err(e) => {
                    let msg = format!("{e:#}");
                    error!(error = %msg, retry_in = ?backoff, "could not keep the divergent writes; the stream from the new primary waits");
                    *self.last_error.lock().unwrap() = msg;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        };
        self.last_error.lock().unwrap().clear();
        let location = if manifest.total_rows + manifest.total_deleted_keys == 0 {
            String::new()
        } else {
            self.dest.describe(&folder(&manifest.id))
        };
        let mut done = Done {
            id: manifest.id.clone(),
            location: location.clone(),
            rows: manifest.total_rows,
            deleted_keys: manifest.total_deleted_keys,
            reported: false,
        };
        let report = pb::AgentReport {
            dc: self.datacenter.clone(),
            epoch: demoted_at,
            what: if location.is_empty() {
                format!("held no divergent writes from epoch {acted}")
            } else {
                format!("kept its divergent writes from epoch {acted}")
            },
            evidence: evidence(&manifest, &location),
            divergent: Some(pb::DivergentExport {
                primary_epoch: acted,
                rows: manifest.total_rows,
                deleted_keys: manifest.total_deleted_keys,
                location,
            }),
        };
        if manifest.total_rows + manifest.total_deleted_keys > 0 {
            warn!(
                rows = manifest.total_rows,
                deleted_keys = manifest.total_deleted_keys,
                location = %report.divergent.as_ref().map_or("", |d| d.location.as_str()),
                "{}",
                report.evidence
            );
        } else {
            info!(epoch = acted, "no divergent writes: nothing to keep");
        }
        // The witnesses record it where `mark-resynced` looks. Their leader
        // may be changing: a few tries, then on in the background.
        if let Some(r) = &self.reporter {
            for attempt in 0.. {
                if r(report.clone()).await {
                    done.reported = true;
                    break;
                }
                if attempt == 10 {
                    let (r, report) = (r.clone(), report.clone());
                    tokio::spawn(async move {
                        let mut wait = Duration::from_secs(5);
                        while !r(report.clone()).await {
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(300));
                        }
                    });
                    warn!("no witness leader recorded the divergent-writes export yet; still trying (mark-resynced waits for it)");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let mut m = self.memory.lock().unwrap();
        let mut next = m.clone();
        next.exported_epoch = next.exported_epoch.max(acted);
        next.last = Some(done);
        match dr_proto::statefile::write_json(&self.path, &next) {
            Ok(()) => *m = next,
            Err(e) => {
                // Kept, but not remembered: the next stream exports again.
                error!(error = %format!("{e:#}"), "could not record the divergent-writes export");
            }
        }
    }
}

fn folder(id: &str) -> String {
    format!("divergent/{id}/")
}

fn evidence(m: &Manifest, location: &str) -> String {
    let mut parts = vec![];
    for c in &m.collections {
        if c.extra_rows + c.changed_rows + c.deleted_count == 0 {
            continue;
        }
        let keys: Vec<String> = c.sample.iter().map(|k| k.to_string()).collect();
        parts.push(format!(
            "{}.{}{}: {} extra, {} changed, {} deleted (keys {})",
            c.collection.database,
            c.collection.name,
            c.partition
                .as_deref()
                .map(|p| format!("/{p}"))
                .unwrap_or_default(),
            c.extra_rows,
            c.changed_rows,
            c.deleted_count,
            keys.join(", ")
        ));
    }
    let mut s = if parts.is_empty() {
        format!(
            "every row matched what it had replicated at epoch {}",
            m.primary_epoch
        )
    } else {
        format!(
            "{} rows and {} deleted keys that differ from what it had replicated at epoch {}, kept at {location}: {}",
            m.total_rows,
            m.total_deleted_keys,
            m.primary_epoch,
            parts.join("; ")
        )
    };
    if s.len() > 3_900 {
        let mut cut = 3_900;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" …");
    }
    s
}

fn key_json(k: &Pk) -> serde_json::Value {
    match k {
        Pk::Int(v) => serde_json::Value::from(*v),
        Pk::Str(s) => serde_json::Value::from(s.clone()),
    }
}

/// Compares every replicated collection with the capture base and writes
/// what differs.
async fn export(inner: &Inner, acted: u64, demoted_at: u64) -> Result<Manifest> {
    let id = format!("{}-epoch{acted}", inner.datacenter);
    let root = folder(&id);
    info!(%id, to = %inner.dest.describe(&root), "keeping the writes accepted as primary and not replicated, before resynchronising");
    let started = chrono::Utc::now();
    // Batches sent and never acknowledged: the standby may or may not
    // hold them, so their keys count as not replicated.
    let unsure = inner.base.recover_pending()?;
    if unsure > 0 {
        info!(
            keys = unsure,
            "keys of unacknowledged batches are compared as not replicated"
        );
    }
    let cat = catalog::read(&inner.milvus, &inner.filter)
        .await
        .context("read the Milvus catalog")?;
    let mut collections = vec![];
    for entry in &cat.collections {
        let (db, name) = (&entry.info.database, &entry.info.name);
        if !entry.loaded {
            // Milvus reads only loaded collections (after a restart they
            // may still be loading): load it, and release it afterwards.
            info!(collection = %entry.key(), "loading the collection to compare it (released afterwards)");
            inner.milvus.load(db, name).await?;
            inner
                .milvus
                .wait_loaded(db, name, Duration::from_secs(1800))
                .await?;
        }
        let mut r = Ok(());
        for part in entry.scan_partitions() {
            match export_scope(inner, &root, entry, part.as_deref()).await {
                Ok(c) => collections.push(c),
                Err(e) => {
                    r = Err(e.context(format!("compare {}", entry.key())));
                    break;
                }
            }
        }
        if !entry.loaded {
            if let Err(e) = inner.milvus.release(db, name).await {
                warn!(collection = %entry.key(), error = %e, "could not release the collection after comparing it");
            }
        }
        r?;
    }
    let manifest = Manifest {
        format: 1,
        kind: "divergent".into(),
        id,
        datacenter: inner.datacenter.clone(),
        primary_epoch: acted,
        demoted_at_epoch: demoted_at,
        created_at: started.to_rfc3339(),
        compared_with: "the rows this datacenter had replicated, as its standby acknowledged them (its capture base)".into(),
        tool: crate::backup::tool_version(),
        milvus_endpoint: inner.milvus.endpoint().to_string(),
        total_rows: collections.iter().map(|c| c.collection.rows).sum(),
        total_deleted_keys: collections.iter().map(|c| c.deleted_count).sum(),
        collections,
    };
    if manifest.total_rows + manifest.total_deleted_keys > 0 {
        inner
            .dest
            .put(
                &format!("{root}{}", crate::backup::manifest::MANIFEST),
                serde_json::to_vec_pretty(&manifest)?,
            )
            .await
            .context("write the manifest")?;
    }
    Ok(manifest)
}

/// One scope: a merge of the Milvus scan (key order) with the base.
async fn export_scope(
    inner: &Inner,
    root: &str,
    entry: &CollectionEntry,
    partition: Option<&str>,
) -> Result<DivergentCollection> {
    let info = &entry.info;
    let name = super::source::scope_name(entry, partition);
    let scope = inner
        .base
        .scopes_with_prefix(&name)?
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, id)| id);
    let is_str = info.pk_type() == Some(mv::PkType::Str);
    let cols: Vec<Column> = columns::columns(&info.schema);
    let schema = columns::arrow_schema(&cols)?;
    let mut cb = CollectionBackup::describe(info, &entry.partitions, &entry.indexes, entry.loaded);
    let ts = inner.milvus.alloc_timestamp().await?;
    cb.snapshot_ts = ts;
    let part_dir = partition.unwrap_or("all").to_string();
    let mut out = DivergentCollection {
        collection: cb,
        partition: partition.map(str::to_string),
        extra_rows: 0,
        changed_rows: 0,
        deleted_keys: vec![],
        deleted_count: 0,
        sample: vec![],
    };
    let deleted = |keys: &[Pk], out: &mut DivergentCollection| {
        out.deleted_count += keys.len() as u64;
        for k in keys {
            if out.deleted_keys.len() < DELETED_LISTED {
                out.deleted_keys.push(key_json(k));
            }
        }
    };
    let mut objects: Vec<ObjectEntry> = vec![];
    let mut current: Option<ObjectWriter> = None;
    let mut total = Digest::default();
    let mut pages = mv::scan_pages(&inner.milvus, info, partition, ts, inner.page_rows);
    let mut after: Option<Pk> = None;
    let r: Result<()> = async {
        while let Some(page) = pages.recv().await {
            let mv::Page { fields, keys } = page?;
            if keys.is_empty() {
                break;
            }
            let hashes = rows::row_hashes(&fields)?;
            let last = keys.last().cloned();
            let page = base::indexed(keys, &hashes);
            let known = match scope {
                Some(s) => inner.base.range(s, after.as_ref(), last.as_ref(), is_str)?,
                None => vec![],
            };
            after = last;
            let diff = base::diff_page(&page, &known);
            deleted(&diff.deletes, &mut out);
            out.extra_rows += diff.inserts.len() as u64;
            out.changed_rows += diff.upserts.len() as u64;
            let mut idx: Vec<usize> = diff.inserts.iter().chain(&diff.upserts).copied().collect();
            if idx.is_empty() {
                continue;
            }
            idx.sort_unstable();
            for &i in idx.iter().take(SAMPLE.saturating_sub(out.sample.len())) {
                out.sample.push(key_json(&page[i].0));
            }
            let kept = rows::take(&fields, &idx);
            let kept_hashes: Vec<u64> = idx.iter().map(|&i| hashes[i]).collect();
            let batch = columns::to_batch(&schema, &cols, &kept)?;
            if current.is_none() {
                let key = object_key(&info.database, &info.name, &part_dir, objects.len() as u32);
                current = Some(ObjectWriter::new(
                    key.clone(),
                    partition.map(str::to_string),
                    inner.dest.out(&format!("{root}{key}"))?,
                    &schema,
                    &cols,
                    inner.page_rows,
                )?);
            }
            let Some(w) = current.as_mut() else {
                unreachable!()
            };
            w.write(&batch, &kept_hashes).await?;
            total.add_hashes(&kept_hashes);
            if total.rows >= (objects.len() as u64 + 1) * OBJECT_ROWS {
                if let Some(w) = current.take() {
                    objects.push(w.finish().await?);
                }
            }
        }
        if let Some(w) = current.take() {
            objects.push(w.finish().await?);
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        if let Some(w) = current.take() {
            w.abort().await;
        }
        return Err(e);
    }
    // What the base still has after the last key: deleted here too.
    if let Some(s) = scope {
        let rest: Vec<Pk> = inner
            .base
            .range(s, after.as_ref(), None, is_str)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        deleted(&rest, &mut out);
    }
    out.collection.rows = total.rows;
    out.collection.digest = total.text();
    out.collection.objects = objects;
    Ok(out)
}

/// For tests and `drctl`: the exports' folders are `divergent/<id>/`.
pub fn manifest_key(id: &str) -> String {
    format!("{}{}", folder(id), crate::backup::manifest::MANIFEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(rows: &[(u64, u64, u64)]) -> Manifest {
        let collections = rows
            .iter()
            .enumerate()
            .map(|(i, &(extra, changed, deleted))| DivergentCollection {
                collection: CollectionBackup {
                    database: "default".into(),
                    name: format!("c{i}"),
                    id: 1,
                    fields: vec![],
                    enable_dynamic_field: false,
                    description: String::new(),
                    schema_proto: String::new(),
                    shards_num: 1,
                    consistency_level: 0,
                    properties: vec![],
                    num_partitions: 0,
                    partitions: vec![],
                    indexes: vec![],
                    loaded: true,
                    snapshot_ts: 0,
                    rows: extra + changed,
                    digest: String::new(),
                    objects: vec![],
                },
                partition: None,
                extra_rows: extra,
                changed_rows: changed,
                deleted_keys: vec![],
                deleted_count: deleted,
                sample: vec![serde_json::json!(7), serde_json::json!("k")],
            })
            .collect::<Vec<_>>();
        Manifest {
            format: 1,
            kind: "divergent".into(),
            id: "dc-a-epoch3".into(),
            datacenter: "dc-a".into(),
            primary_epoch: 3,
            demoted_at_epoch: 4,
            created_at: String::new(),
            compared_with: String::new(),
            tool: String::new(),
            milvus_endpoint: String::new(),
            total_rows: rows.iter().map(|r| r.0 + r.1).sum(),
            total_deleted_keys: rows.iter().map(|r| r.2).sum(),
            collections,
        }
    }

    #[test]
    fn the_evidence_names_only_collections_that_differ_and_stays_bounded() {
        let e = evidence(&manifest(&[(2, 1, 0), (0, 0, 0), (0, 0, 4)]), "s3://b/x/");
        assert!(e.contains("3 rows and 4 deleted keys"), "{e}");
        assert!(
            e.contains("default.c0: 2 extra, 1 changed, 0 deleted (keys 7, \"k\")"),
            "{e}"
        );
        assert!(!e.contains("default.c1"), "{e}");
        assert!(e.contains("default.c2"), "{e}");
        let quiet = evidence(&manifest(&[(0, 0, 0)]), "");
        assert!(quiet.starts_with("every row matched"), "{quiet}");
        let many = vec![(1, 1, 1); 500];
        assert!(evidence(&manifest(&many), "x").len() < 4_000);
    }

    fn memory_in(dir: &Path, m: &Memory) {
        dr_proto::statefile::write_json(&dir.join("divergent.json"), m).unwrap();
    }

    #[test]
    fn the_gate_holds_only_the_first_stream_after_acting_as_primary() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let base = Arc::new(Base::open(&dir.path().join("base.redb")).unwrap());
        let milvus = Milvus::connect(mv::Connection {
            endpoint: "http://127.0.0.1:9".into(),
            health_url: None,
            authorization: None,
            request_timeout: Duration::from_millis(100),
        })
        .unwrap();
        let open = |dir: &Path| {
            Divergence::new(
                "dc-a".into(),
                milvus.clone(),
                base.clone(),
                Filter::default(),
                100,
                Dest::Dir(dir.join("out")),
                dir,
                None,
            )
            .unwrap()
        };
        // Never primary: every stream opens.
        let d = open(dir.path());
        assert!(d.gate(2).is_ok());
        // Without a record, a base written as source at epoch 2 counts as
        // having acted as primary then (agents from before the record).
        {
            let other = tempfile::tempdir().unwrap();
            let b = Base::open(&other.path().join("base.redb")).unwrap();
            b.set_epoch(2).unwrap();
            b.set_next_seq(5).unwrap();
            let d = Divergence::new(
                "dc-a".into(),
                milvus.clone(),
                Arc::new(b),
                Filter::default(),
                100,
                Dest::Dir(other.path().join("out")),
                other.path(),
                None,
            )
            .unwrap();
            assert!(d.gate(2).is_ok());
            assert!(d.gate(3).is_err());
        }
        // Primary at epoch 3: a stream of epoch 3 (itself) is no demotion;
        // epoch 4 is held while the export runs (here it cannot reach
        // Milvus, so it keeps retrying and says so).
        d.acting(3).unwrap();
        assert!(d.gate(3).is_ok());
        let held = d.gate(4).unwrap_err();
        assert_eq!(held.code(), tonic::Code::Unavailable);
        assert!(held.message().contains("epoch 3"), "{}", held.message());
        // Remembered across restarts.
        let again = open(dir.path());
        assert!(again.gate(4).is_err());
        // Once exported for epoch 3, only a new term as primary holds again.
        memory_in(
            dir.path(),
            &Memory {
                acted_epoch: 3,
                exported_epoch: 3,
                last: None,
            },
        );
        let done = open(dir.path());
        assert!(done.gate(4).is_ok());
        done.acting(5).unwrap();
        assert!(done.gate(6).is_err());
        drop(rt);
    }
}
