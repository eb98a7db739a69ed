//! Taking a backup: every chosen collection read at one Milvus timestamp,
//! page by page, into Parquet objects streamed to S3; the manifest last.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use super::columns::{self, Column};
use super::lock::{fenced, Fence, Lock};
use super::manifest::{CollectionBackup, Manifest, ObjectEntry, Segment, Source, MANIFEST};
use super::progress::Progress;
use super::store::Upload;
use super::{qualified, Digest, Settings, Store};
use crate::milvus::{self as mv, rows, Milvus};
use crate::replication::catalog::{self, CollectionEntry};

/// What to back up and how to report.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// `database.collection` names; empty = everything the filter allows.
    pub only: Vec<String>,
    /// The source datacenter's replication epoch, when known.
    pub epoch: Option<u64>,
    /// Who runs this (written into the lock).
    pub holder: String,
    /// Show a progress bar on a terminal.
    pub interactive: bool,
    /// Re-read the backup after writing it (checksums and digests).
    pub verify: bool,
    /// Apply retention after a successful backup.
    pub prune: bool,
}

/// How long a run whose lock fence tripped gets to stop by itself (abort
/// its uploads, release a collection it loaded) before its work is dropped.
const FENCE_GRACE: Duration = Duration::from_secs(5);

/// The outcome of a successful run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub manifest: Manifest,
    pub seconds: f64,
    pub verified: bool,
    pub pruned: Vec<String>,
}

/// A new backup id: UTC time first, so ids sort by age.
pub fn new_id(datacenter: &str) -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{datacenter}-{}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        &r[..4]
    )
}

/// Takes the lock, backs up, then verifies and prunes as asked. A run
/// that loses the lock stops where it is with [`BackupError::LostLock`]:
/// no manifest after that, nothing pruned.
///
/// [`BackupError::LostLock`]: super::BackupError::LostLock
pub async fn run(
    store: &Store,
    milvus: &Milvus,
    settings: &Settings,
    opts: &CreateOptions,
) -> Result<RunReport> {
    let start = std::time::Instant::now();
    let lock = Lock::acquire(store, &opts.holder, settings.lock_lease).await?;
    let fence = lock.fence();
    let r = async {
        let manifest = fenced(
            &fence,
            FENCE_GRACE,
            create(store, milvus, settings, opts, &lock),
        )
        .await?;
        let written = || {
            format!(
                "backup {} is complete (its manifest was written under the lock); verify and retention did not run",
                manifest.id
            )
        };
        let mut verified = false;
        if opts.verify {
            // Verify only reads until it writes verified.json: dropped at
            // once when the fence trips.
            let v = fenced(
                &fence,
                Duration::ZERO,
                super::verify::verify(store, &manifest.id, opts.interactive),
            )
            .await
            .with_context(written)?;
            if !v.ok {
                anyhow::bail!(
                    "backup {} was written but does not verify: {}",
                    manifest.id,
                    v.problems.join("; ")
                );
            }
            verified = true;
        }
        let mut pruned = vec![];
        if opts.prune {
            pruned = super::retention::prune(store, settings, false, Some(&manifest.id), &lock)
                .await
                .context("apply retention")
                .with_context(written)?
                .into_iter()
                .filter(|d| d.delete)
                .map(|d| d.id)
                .collect();
        }
        Ok(RunReport {
            manifest,
            seconds: start.elapsed().as_secs_f64(),
            verified,
            pruned,
        })
    }
    .await;
    lock.release().await;
    r
}

/// The Parquet bytes the writer produced, shared with the uploader.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// Where an object's bytes go: an S3 multipart upload, or a local file.
pub enum Out {
    S3(Upload),
    File {
        file: std::fs::File,
        path: std::path::PathBuf,
        sha: Sha256,
        bytes: u64,
    },
}

impl Out {
    /// A new local file (its folders created).
    pub fn file(path: &std::path::Path) -> Result<Out> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let file =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Out::File {
            file,
            path: path.to_path_buf(),
            sha: Sha256::new(),
            bytes: 0,
        })
    }

    fn bytes(&self) -> u64 {
        match self {
            Out::S3(u) => u.bytes(),
            Out::File { bytes, .. } => *bytes,
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Out::S3(u) => u.write(data).await,
            Out::File {
                file,
                path,
                sha,
                bytes,
            } => {
                file.write_all(data)
                    .with_context(|| format!("write {}", path.display()))?;
                sha.update(data);
                *bytes += data.len() as u64;
                Ok(())
            }
        }
    }

    async fn finish(self) -> Result<super::store::Uploaded> {
        match self {
            Out::S3(u) => u.finish().await,
            Out::File {
                file,
                path,
                sha,
                bytes,
            } => {
                file.sync_all()
                    .with_context(|| format!("write {}", path.display()))?;
                Ok(super::store::Uploaded {
                    bytes,
                    sha256: hex::encode(sha.finalize()),
                    parts: 1,
                })
            }
        }
    }

    async fn abort(&mut self) {
        match self {
            Out::S3(u) => u.abort().await,
            Out::File { path, .. } => {
                let _ = std::fs::remove_file(&*path);
            }
        }
    }
}

/// One Parquet object being written: a row group per page, each a checked
/// segment (see [`ObjectEntry::segments`]).
pub struct ObjectWriter {
    key: String,
    partition: Option<String>,
    writer: ArrowWriter<SharedBuf>,
    buf: SharedBuf,
    upload: Out,
    digest: Digest,
    segments: Vec<Segment>,
}

impl ObjectWriter {
    /// `key` is the object's path relative to its backup folder.
    pub fn new(
        key: String,
        partition: Option<String>,
        upload: Out,
        schema: &arrow_schema::SchemaRef,
        cols: &[Column],
        page_rows: usize,
    ) -> Result<ObjectWriter> {
        let buf = SharedBuf::default();
        Ok(ObjectWriter {
            upload,
            key,
            partition,
            writer: ArrowWriter::try_new(
                buf.clone(),
                schema.clone(),
                Some(writer_props(page_rows, cols)),
            )?,
            buf,
            digest: Digest::default(),
            segments: Vec::new(),
        })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.upload.bytes()
    }

    /// Writes one page as one row group (one segment).
    pub async fn write(&mut self, batch: &arrow_array::RecordBatch, hashes: &[u64]) -> Result<()> {
        self.writer.write(batch).context("encode Parquet")?;
        self.writer.flush().context("encode Parquet")?;
        // The row group, whole, into the buffer: one segment.
        self.writer.sync().context("encode Parquet")?;
        self.drain().await?;
        self.digest.add_hashes(hashes);
        Ok(())
    }

    pub async fn abort(mut self) {
        self.upload.abort().await;
    }

    /// Uploads what the writer produced since the last call, as one
    /// segment: called after each row group and after the footer.
    async fn drain(&mut self) -> Result<()> {
        let bytes = self.buf.take();
        if !bytes.is_empty() {
            self.segments.push(Segment {
                len: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            });
            self.upload.write(&bytes).await?;
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<ObjectEntry> {
        let r = async {
            self.writer.finish().context("finish the Parquet file")?;
            self.drain().await
        }
        .await;
        if let Err(e) = r {
            self.upload.abort().await;
            return Err(e);
        }
        let u = self.upload.finish().await?;
        let o = ObjectEntry {
            key: self.key,
            partition: self.partition,
            rows: self.digest.rows,
            bytes: u.bytes,
            sha256: u.sha256,
            parts: u.parts,
            digest: self.digest.text(),
            segments: self.segments,
        };
        if !o.segments_cover() {
            anyhow::bail!("{}: the segments do not cover the {} bytes", o.key, o.bytes);
        }
        Ok(o)
    }
}

/// One row group per scan page. Scalar columns are Snappy-compressed;
/// vectors (and arrays) are stored plain: embeddings do not compress, and
/// decompressing them would only cost a restore CPU time.
fn writer_props(page_rows: usize, cols: &[Column]) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(page_rows.max(1)))
        .set_created_by(super::tool_version());
    for c in cols.iter().filter(|c| columns::is_flat_scalar(c)) {
        b = b.set_column_compression(ColumnPath::from(c.name.as_str()), Compression::SNAPPY);
    }
    b.build()
}

/// Writes one backup under `lock` (see [`run`]). Nothing claims success
/// until `manifest.json` is written, last, and only while the lock is
/// still ours.
pub async fn create(
    store: &Store,
    milvus: &Milvus,
    settings: &Settings,
    opts: &CreateOptions,
    lock: &Lock,
) -> Result<Manifest> {
    let fence = lock.fence();
    let started_at = Utc::now();
    let id = new_id(&settings.datacenter);
    let cat = catalog::read(milvus, &settings.filter)
        .await
        .context("read the Milvus catalog")?;
    let chosen: Vec<&CollectionEntry> = cat
        .collections
        .iter()
        .filter(|c| opts.only.is_empty() || opts.only.contains(&c.key()))
        .collect();
    for want in &opts.only {
        if !chosen.iter().any(|c| c.key() == *want) {
            anyhow::bail!("collection {want} not found in Milvus (write database.collection)");
        }
    }
    info!(backup = %id, collections = chosen.len(), "backup started");
    let mut progress = Progress::new(&format!("backup {id}"), 0, opts.interactive);
    let mut collections = Vec::new();
    for c in chosen {
        let cb = backup_collection(store, milvus, settings, &id, c, &mut progress, &fence)
            .await
            .with_context(|| format!("back up {}", c.key()))?;
        collections.push(cb);
    }
    progress.finish();
    let manifest = Manifest {
        format: super::manifest::FORMAT,
        id: id.clone(),
        started_at: started_at.to_rfc3339(),
        finished_at: Utc::now().to_rfc3339(),
        source: Source {
            datacenter: settings.datacenter.clone(),
            epoch: opts.epoch,
            milvus_endpoint: milvus.endpoint().to_string(),
            milvus_version: milvus.version().await.unwrap_or_default(),
        },
        tool: super::tool_version(),
        total_rows: collections.iter().map(|c| c.rows).sum(),
        total_bytes: collections
            .iter()
            .flat_map(|c| &c.objects)
            .map(|o| o.bytes)
            .sum(),
        collections,
    };
    // The commit point. S3 cannot make this write conditional on the lock,
    // so the run renews the lock right before it (a lock taken over is
    // noticed here at the latest) and bounds the write by what is left of
    // the lease. What remains is the write itself: one already sent when a
    // stalled holder's lease runs out could still land. The margin (a
    // fifth of the lease, a minute by default) is what keeps that apart
    // from another run's takeover.
    lock.confirm("writing the manifest").await?;
    let left = lock.valid_for();
    fence.check()?;
    tokio::time::timeout(
        left,
        store.put(&format!("{id}/{MANIFEST}"), manifest.to_json()),
    )
    .await
    .map_err(|_| fence_or_timeout(&fence))?
    .context("write manifest.json")?;
    info!(
        backup = %id,
        rows = manifest.total_rows,
        bytes = manifest.total_bytes,
        "backup written"
    );
    Ok(manifest)
}

/// The error once a write bounded by the lease ran out of it.
fn fence_or_timeout(fence: &Fence) -> anyhow::Error {
    if fence.is_tripped() {
        fence.error()
    } else {
        anyhow::anyhow!("writing manifest.json took longer than the lock's lease has left")
    }
}

async fn backup_collection(
    store: &Store,
    milvus: &Milvus,
    settings: &Settings,
    id: &str,
    c: &CollectionEntry,
    progress: &mut Progress,
    fence: &Fence,
) -> Result<CollectionBackup> {
    let info = &c.info;
    let (db, name) = (&info.database, &info.name);
    let mut cb = CollectionBackup::describe(info, &c.partitions, &c.indexes, c.loaded);
    // Milvus can only query a loaded collection: load it for the backup and
    // release it afterwards, as it was.
    if !c.loaded {
        info!(collection = %c.key(), "loading the collection for the backup (released afterwards)");
        milvus.load(db, name).await?;
        let loaded = tokio::select! {
            r = milvus.wait_loaded(db, name, Duration::from_secs(1800)) => r.map_err(anyhow::Error::from),
            _ = fence.tripped() => Err(fence.error()),
        };
        if let Err(e) = loaded {
            let _ = milvus.release(db, name).await;
            return Err(e);
        }
    }
    let r = write_rows(store, milvus, settings, id, c, &mut cb, progress, fence).await;
    if !c.loaded {
        if let Err(e) = milvus.release(db, name).await {
            warn!(collection = %c.key(), error = %e, "could not release the collection after the backup");
        }
    }
    r?;
    Ok(cb)
}

#[allow(clippy::too_many_arguments)]
async fn write_rows(
    store: &Store,
    milvus: &Milvus,
    settings: &Settings,
    id: &str,
    c: &CollectionEntry,
    cb: &mut CollectionBackup,
    progress: &mut Progress,
    fence: &Fence,
) -> Result<()> {
    let info = &c.info;
    let cols: Vec<Column> = columns::columns(&info.schema);
    let schema = columns::arrow_schema(&cols)?;
    let ts = milvus.alloc_timestamp().await?;
    cb.snapshot_ts = ts;
    let mut total = Digest::default();
    for partition in c.scan_partitions() {
        let part_dir = partition.clone().unwrap_or_else(|| "all".into());
        let mut seq = 0u32;
        let mut current: Option<ObjectWriter> = None;
        let mut pages = mv::scan_pages(milvus, info, partition.as_deref(), ts, settings.page_rows);
        let r: Result<()> = async {
            loop {
                // A lost lock stops the scan here, so the error path below
                // aborts the object being uploaded.
                let page = tokio::select! {
                    biased;
                    _ = fence.tripped() => return Err(fence.error()),
                    p = pages.recv() => p,
                };
                let Some(page) = page else { break };
                let page = page?;
                if page.keys.is_empty() {
                    continue;
                }
                let hashes = rows::row_hashes(&page.fields)?;
                let batch = columns::to_batch(&schema, &cols, &page.fields)?;
                drop(page);
                if current.is_none() {
                    let key = object_key(&info.database, &info.name, &part_dir, seq);
                    seq += 1;
                    current = Some(ObjectWriter::new(
                        key.clone(),
                        partition.clone(),
                        Out::S3(store.upload(&format!("{id}/{key}"))),
                        &schema,
                        &cols,
                        settings.page_rows,
                    )?);
                }
                let Some(w) = current.as_mut() else {
                    unreachable!()
                };
                let before = w.bytes();
                w.write(&batch, &hashes).await?;
                progress.add(hashes.len() as u64, w.bytes() - before);
                if w.bytes() >= settings.object_max {
                    if let Some(w) = current.take() {
                        let o = w.finish().await?;
                        total.merge(&digest_of(&o));
                        cb.objects.push(o);
                    }
                }
            }
            if let Some(w) = current.take() {
                let o = w.finish().await?;
                total.merge(&digest_of(&o));
                cb.objects.push(o);
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
    }
    cb.rows = total.rows;
    cb.digest = total.text();
    info!(
        collection = %qualified(&info.database, &info.name),
        rows = cb.rows,
        objects = cb.objects.len(),
        "collection backed up"
    );
    Ok(())
}

/// An object's path in its backup folder.
pub fn object_key(db: &str, collection: &str, part_dir: &str, seq: u32) -> String {
    format!("data/{db}/{collection}/{part_dir}/{seq:05}.parquet")
}

pub fn digest_of(o: &ObjectEntry) -> Digest {
    Digest {
        rows: o.rows,
        sum: parse_digest(&o.digest).unwrap_or(0),
    }
}

/// The sum of a digest text.
pub fn parse_digest(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("xxh3sum:")?, 16).ok()
}
