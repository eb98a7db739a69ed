//! Restore: recreate collections from a backup in the same or another
//! Milvus (optionally renamed), insert their rows, build their indexes, load
//! them as they were, and check their content against the manifest.
//!
//! Resumable, exactly once: a local checkpoint file records, per target
//! collection, its Milvus id, the objects fully inserted, and how many rows
//! of the current object are acknowledged. Inserts are sequential and the
//! checkpoint is saved after each, so after a crash only rows past the
//! checkpoint in the current object can be in doubt: on a rerun those are
//! written with `upsert` (idempotent by primary key), everything after with
//! `insert`. Every byte is checked against the manifest's SHA-256s, row
//! group by row group (object segments), before a row it holds is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{FuturesOrdered, StreamExt};
use milvus::proto::schema::FieldData;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::columns;
use super::create::parse_digest;
use super::manifest::{CollectionBackup, Manifest, ObjectEntry};
use super::progress::Progress;
use super::verify;
use super::{qualified, Digest, Store};
use crate::milvus::{self as mv, rows, IndexInfo, Milvus};
use crate::replication::catalog::DEFAULT_PARTITION;

/// How restored collections are named.
#[derive(Debug, Clone, Default)]
pub enum Rename {
    #[default]
    Same,
    /// `name` → `name<suffix>`, same database.
    Suffix(String),
    /// `db.name` → `db2.name2` (or `name2`: same database). Collections not
    /// in the map keep their names.
    Map(BTreeMap<String, String>),
}

impl Rename {
    /// Parses `a=b` entries.
    pub fn parse_map(entries: &[String]) -> Result<Rename> {
        let mut m = BTreeMap::new();
        for e in entries {
            let (a, b) = e
                .split_once('=')
                .with_context(|| format!("--map {e}: write database.collection=new_name"))?;
            if a.split('.').count() != 2 {
                bail!("--map {e}: the source must be database.collection");
            }
            m.insert(a.to_string(), b.to_string());
        }
        Ok(Rename::Map(m))
    }

    /// Target (database, collection) of a backed-up collection.
    pub fn target(&self, c: &CollectionBackup) -> (String, String) {
        match self {
            Rename::Same => (c.database.clone(), c.name.clone()),
            Rename::Suffix(s) => (c.database.clone(), format!("{}{s}", c.name)),
            Rename::Map(m) => match m.get(&c.qualified()) {
                Some(t) => match t.split_once('.') {
                    Some((db, n)) => (db.to_string(), n.to_string()),
                    None => (c.database.clone(), t.clone()),
                },
                None => (c.database.clone(), c.name.clone()),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub id: String,
    /// `database.collection` names from the backup; empty = all.
    pub only: Vec<String>,
    pub rename: Rename,
    /// Where checkpoints are kept between runs.
    pub checkpoint_dir: PathBuf,
    pub interactive: bool,
    pub load_timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoredCollection {
    pub source: String,
    pub target: String,
    pub rows: u64,
    pub digest_ok: bool,
    /// Whether this run found the collection already restored or partly
    /// restored (a resumed restore).
    pub resumed: bool,
    /// Seconds spent writing rows (the rest: indexes, load, checking).
    pub data_seconds: f64,
    /// Of those, seconds spent waiting for an object's first rows.
    pub download_wait_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreReport {
    pub id: String,
    pub target: String,
    pub ok: bool,
    pub rows: u64,
    pub seconds: f64,
    pub collections: Vec<RestoredCollection>,
    /// Databases this restore had to create.
    pub created_databases: Vec<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CollState {
    collection_id: i64,
    done_objects: BTreeSet<String>,
    /// The object being inserted and its rows acknowledged so far.
    current: Option<(String, u64)>,
    data_done: bool,
    done: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    backup: String,
    target: String,
    collections: BTreeMap<String, CollState>,
}

struct CheckpointFile {
    path: PathBuf,
    state: Checkpoint,
}

impl CheckpointFile {
    fn open(dir: &Path, id: &str, target: &str) -> Result<CheckpointFile> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the checkpoint folder {}", dir.display()))?;
        let h = xxhash_rust::xxh3::xxh3_64(target.as_bytes());
        let path = dir.join(format!("restore-{id}-{h:016x}.json"));
        let state = dr_proto::statefile::read_json(
            &path,
            "the restore checkpoint",
            "drop the collections this restore created in the target Milvus, delete the file, \
             and run the restore again",
        )?
        .unwrap_or_else(|| Checkpoint {
            backup: id.to_string(),
            target: target.to_string(),
            collections: BTreeMap::new(),
        });
        Ok(CheckpointFile { path, state })
    }

    /// A crash leaves the old or the new checkpoint, durably.
    fn save(&self) -> Result<()> {
        dr_proto::statefile::write_json(&self.path, &self.state)
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Restores a backup into `target`.
pub async fn restore(
    store: &Store,
    target: &Milvus,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let start = Instant::now();
    let m: Manifest = verify::manifest(store, &opts.id).await?;
    let chosen: Vec<&CollectionBackup> = m
        .collections
        .iter()
        .filter(|c| opts.only.is_empty() || opts.only.contains(&c.qualified()))
        .collect();
    for want in &opts.only {
        if !chosen.iter().any(|c| c.qualified() == *want) {
            bail!("backup {} has no collection {want}", opts.id);
        }
    }
    let mut names = BTreeSet::new();
    for c in &chosen {
        let (db, n) = opts.rename.target(c);
        if !names.insert(qualified(&db, &n)) {
            bail!("two collections would be restored as {db}.{n}: rename them apart");
        }
    }
    // Before anything is created: every object must be readable by segments.
    if let Some(o) = chosen
        .iter()
        .flat_map(|c| &c.objects)
        .find(|o| o.segments.is_empty())
    {
        bail!(
            "object {} lists no segments: written by a development build; take a new backup",
            o.key
        );
    }
    let mut ckpt = CheckpointFile::open(&opts.checkpoint_dir, &opts.id, target.endpoint())?;
    let total_rows: u64 = chosen.iter().map(|c| c.rows).sum();
    let mut progress = Progress::new(
        &format!("restore {}", opts.id),
        total_rows,
        opts.interactive,
    );
    let mut report = RestoreReport {
        id: opts.id.clone(),
        target: target.endpoint().to_string(),
        ..Default::default()
    };
    info!(backup = %opts.id, target = %target.endpoint(), collections = chosen.len(), rows = total_rows, "restore started");
    for c in chosen {
        let (db, name) = opts.rename.target(c);
        let r = restore_collection(
            store,
            target,
            opts,
            c,
            &db,
            &name,
            &mut ckpt,
            &mut progress,
            &mut report,
        )
        .await
        .with_context(|| format!("restore {} as {db}.{name}", c.qualified()))?;
        if !r.digest_ok {
            report.problems.push(format!(
                "{}: restored content does not match the backup's digest",
                r.target
            ));
        }
        report.collections.push(r);
    }
    progress.finish();
    report.rows = progress.rows();
    report.seconds = start.elapsed().as_secs_f64();
    report.ok = report.problems.is_empty();
    if report.ok {
        ckpt.remove();
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn restore_collection(
    store: &Store,
    target: &Milvus,
    opts: &RestoreOptions,
    c: &CollectionBackup,
    db: &str,
    name: &str,
    ckpt: &mut CheckpointFile,
    progress: &mut Progress,
    report: &mut RestoreReport,
) -> Result<RestoredCollection> {
    let key = qualified(db, name);
    let info = c.info_as(db, name)?;
    let mut out = RestoredCollection {
        source: c.qualified(),
        target: key.clone(),
        rows: c.rows,
        ..Default::default()
    };
    // Does the target exist, and is it ours from an earlier run?
    let dbs = crate::replication::catalog::databases(target).await?;
    if !dbs.iter().any(|d| d == db) {
        target.create_database(db).await?;
        report.created_databases.push(db.to_string());
    }
    let exists = target.list_collections(db).await?.iter().any(|n| n == name);
    let state = ckpt.state.collections.get(&key).cloned();
    let mut st = match (state, exists) {
        (Some(st), true) if target.describe(db, name).await?.id == st.collection_id => {
            out.resumed = true;
            info!(collection = %key, "resuming an interrupted restore");
            st
        }
        (_, true) => bail!(
            "{key} already exists in the target Milvus and is not from an interrupted restore of \
             this backup: drop it, or restore under another name (--rename-suffix or --map)"
        ),
        (_, false) => {
            target.create_collection(&info).await?;
            if !info.has_partition_key() {
                for p in c.partitions.iter().filter(|p| *p != DEFAULT_PARTITION) {
                    target.create_partition(db, name, p).await?;
                }
            }
            let st = CollState {
                collection_id: target.describe(db, name).await?.id,
                ..Default::default()
            };
            ckpt.state.collections.insert(key.clone(), st.clone());
            ckpt.save()?;
            info!(collection = %key, "created");
            st
        }
    };
    if st.done {
        progress.add(c.rows, 0);
        out.digest_ok = true;
        return Ok(out);
    }
    let cols = columns::columns(&info.schema);
    let batch_rows = verify::batch_rows(&cols);
    let data_start = Instant::now();
    if !st.data_done {
        let todo: Vec<&ObjectEntry> = c
            .objects
            .iter()
            .filter(|o| {
                let done = st.done_objects.contains(&o.key);
                if done {
                    progress.add(o.rows, o.bytes);
                }
                !done
            })
            .collect();
        // Reading runs one object ahead of the inserts: each stream starts
        // fetching as soon as it is made.
        let mut streams = todo.iter().map(|o| {
            verify::stream_object(store, &opts.id, (*o).clone(), cols.clone(), batch_rows)
        });
        let mut ahead = streams.next();
        for o in &todo {
            let (skip, in_doubt) = match &st.current {
                Some((k, n)) if *k == o.key => (*n, true),
                _ => (0, false),
            };
            st.current = Some((o.key.clone(), skip));
            ckpt.state.collections.insert(key.clone(), st.clone());
            ckpt.save()?;
            let wait = Instant::now();
            let Some(mut rx) = ahead.take() else {
                bail!("no reader for {}", o.key)
            };
            ahead = streams.next();
            let partition = if info.has_partition_key() {
                None
            } else {
                o.partition.as_deref()
            };
            // Inserts in flight, acknowledged in order: the checkpoint only
            // ever records a prefix of the object that Milvus acknowledged;
            // rows past it are in doubt after a crash and upserted on rerun.
            let mut inflight = FuturesOrdered::new();
            let mut seen = 0u64;
            let mut first = Some(wait);
            loop {
                let next = if inflight.len() >= INSERTS_IN_FLIGHT {
                    None
                } else {
                    let b = rx.recv().await;
                    if let Some(wait) = first.take() {
                        out.download_wait_seconds += wait.elapsed().as_secs_f64();
                    }
                    b
                };
                let Some(batch) = next else {
                    match inflight.next().await {
                        Some(r) => {
                            let (end, k): (u64, u64) = r?;
                            st.current = Some((o.key.clone(), end));
                            ckpt.state.collections.insert(key.clone(), st.clone());
                            ckpt.save()?;
                            progress.add(k, 0);
                            continue;
                        }
                        None => break,
                    }
                };
                let mut fields = batch?;
                let n = rows::num_rows(&fields)? as u64;
                let batch_start = seen;
                seen += n;
                if seen <= skip {
                    progress.add(n, 0);
                    continue;
                }
                if batch_start < skip {
                    let from = (skip - batch_start) as usize;
                    let idx: Vec<usize> = (from..n as usize).collect();
                    progress.add(from as u64, 0);
                    fields = rows::take(&fields, &idx);
                }
                let k = rows::num_rows(&fields)? as u64;
                let (info, end) = (&info, seen);
                inflight.push_back(async move {
                    write_batch(target, info, partition, fields, k, in_doubt).await?;
                    anyhow::Ok((end, k))
                });
            }
            if seen != o.rows {
                bail!(
                    "object {} holds {seen} rows, the manifest says {}",
                    o.key,
                    o.rows
                );
            }
            progress.add(0, o.bytes);
            st.done_objects.insert(o.key.clone());
            st.current = None;
            ckpt.state.collections.insert(key.clone(), st.clone());
            ckpt.save()?;
        }
        st.data_done = true;
        ckpt.state.collections.insert(key.clone(), st.clone());
        ckpt.save()?;
    }
    out.data_seconds = data_start.elapsed().as_secs_f64();
    // Indexes, then load as it was, then check the content.
    let have = target.list_indexes(db, name).await?;
    for i in &c.indexes {
        if have
            .iter()
            .any(|h| h.index_name == i.index_name && h.field == i.field)
        {
            continue;
        }
        let idx = IndexInfo {
            field: i.field.clone(),
            index_name: i.index_name.clone(),
            params: i.params.clone(),
        }
        .creatable();
        target
            .create_index(db, name, &idx)
            .await
            .with_context(|| format!("create index {}", i.index_name))?;
    }
    let has_vector_index = !c.indexes.is_empty();
    if has_vector_index {
        target.load(db, name).await?;
        target.wait_loaded(db, name, opts.load_timeout).await?;
        let d = digest_of_collection(target, db, name).await?;
        let count = target.count(&target.describe(db, name).await?).await?;
        out.digest_ok =
            d.rows == c.rows && Some(d.sum) == parse_digest(&c.digest) && count == c.rows;
        if !out.digest_ok {
            warn!(collection = %key, rows = d.rows, count, digest = %d.text(), expected_rows = c.rows, expected = %c.digest, "restored content differs from the backup");
        }
        if !c.loaded {
            target.release(db, name).await?;
        }
    } else {
        // Milvus cannot load (and so cannot read) a collection without a
        // vector index: the content cannot be checked here.
        warn!(collection = %key, "no index in the backup: collection left unloaded and unchecked");
        out.digest_ok = c.rows == 0;
    }
    st.done = true;
    ckpt.state.collections.insert(key.clone(), st);
    ckpt.save()?;
    info!(collection = %key, rows = c.rows, digest_ok = out.digest_ok, "restored");
    Ok(out)
}

/// Insert requests a restore keeps in flight per collection.
const INSERTS_IN_FLIGHT: usize = 2;

/// Inserts a batch; rows whose earlier write is in doubt are upserted. A
/// failed insert is retried as an upsert (it may have been applied).
async fn write_batch(
    target: &Milvus,
    info: &mv::CollectionInfo,
    partition: Option<&str>,
    mut fields: Vec<FieldData>,
    n: u64,
    in_doubt: bool,
) -> Result<()> {
    mv::normalize(info, &mut fields);
    let (db, name) = (&info.database, &info.name);
    if !in_doubt {
        match target
            .insert(db, name, partition, fields.clone(), n as u32)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "insert failed; retrying as upsert");
            }
            Err(e) => return Err(e.into()),
        }
    }
    crate::milvus::retry("restore upsert", 6, || {
        target.upsert(db, name, partition, fields.clone(), n as u32)
    })
    .await?;
    Ok(())
}

/// Digest of a collection's current content (it must be loaded).
pub async fn digest_of_collection(m: &Milvus, db: &str, name: &str) -> Result<Digest> {
    let info = m.describe(db, name).await?;
    let ts = m.alloc_timestamp().await?;
    let mut pages = mv::scan_pages(m, &info, None, ts, 8192);
    let mut d = Digest::default();
    while let Some(p) = pages.recv().await {
        let p = p?;
        d.add_hashes(&rows::row_hashes(&p.fields)?);
    }
    Ok(d)
}

/// Human-readable restore output.
pub fn text(r: &RestoreReport) -> String {
    let mut out = format!(
        "restore of backup {} into {}: {} rows in {:.1}s\n",
        r.id, r.target, r.rows, r.seconds
    );
    for c in &r.collections {
        out += &format!(
            "  {:<40} -> {:<40} {:>10} rows  {}{}\n",
            c.source,
            c.target,
            c.rows,
            if c.digest_ok {
                "content matches"
            } else {
                "CONTENT DIFFERS"
            },
            if c.resumed { " (resumed)" } else { "" }
        );
    }
    for p in &r.problems {
        out += &format!("  PROBLEM {p}\n");
    }
    out += if r.ok {
        "RESULT: restored\n"
    } else {
        "RESULT: FAILED\n"
    };
    out
}
