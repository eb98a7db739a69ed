//! Verify: re-read every object of a backup, check its size and SHA-256,
//! decode it and check its rows against the manifest's digests. Every
//! problem names the object.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::{Buf, Bytes};
use chrono::Utc;
use futures::StreamExt;
use milvus::proto::schema::FieldData;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::columns::{self, Column};
use super::create::parse_digest;
use super::manifest::{Manifest, ObjectEntry, Segment, Verified, MANIFEST, VERIFIED};
use super::progress::Progress;
use super::{BackupError, Digest, Store};
use crate::milvus::rows;

/// A temporary file removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!(
            "milvus-dr-{tag}-{}.parquet",
            uuid::Uuid::new_v4().simple()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads a Parquet file as batches of Milvus columns, on a blocking thread,
/// at most two batches ahead of the consumer.
pub fn read_object(
    path: &Path,
    cols: Vec<Column>,
    batch_rows: usize,
) -> mpsc::Receiver<Result<Vec<FieldData>>> {
    let (tx, rx) = mpsc::channel(2);
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let r = (|| -> Result<()> {
            let f = std::fs::File::open(&path)?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(f)
                .context("not a readable Parquet file")?
                .with_batch_size(batch_rows.max(1))
                .build()?;
            for batch in reader {
                let batch = batch.context("decode Parquet")?;
                let fields = columns::from_batch(&cols, &batch)?;
                if tx.blocking_send(Ok(fields)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// Streams an object of a backup as batches of Milvus columns, segment by
/// segment (see [`ObjectEntry::segments`]): the footer first, then each row
/// group, each checked against its length and SHA-256 before it is decoded.
/// The next row group downloads while one is decoded and consumed; memory
/// stays at a few row groups whatever the object's size.
pub fn stream_object(
    store: &Store,
    id: &str,
    o: ObjectEntry,
    cols: Vec<Column>,
    batch_rows: usize,
) -> mpsc::Receiver<Result<Vec<FieldData>>> {
    let (tx, rx) = mpsc::channel(2);
    let (store, rel, id) = (store.clone(), format!("{id}/{}", o.key), id.to_string());
    tokio::spawn(async move {
        let r = async {
            let corrupt = |what: &str| {
                anyhow::anyhow!(
                    "object {} is corrupt ({what} differs from the manifest): run drctl backup verify {id}",
                    o.key
                )
            };
            if !o.segments_cover() {
                return Err(corrupt("the segment list"));
            }
            let ranges = o.segment_ranges();
            let fetch = |(range, seg): (std::ops::Range<u64>, Segment)| {
                let (store, rel) = (store.clone(), rel.clone());
                async move {
                    let b = store
                        .get_range(&rel, range.start, seg.len)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("object {rel} is missing"))?;
                    let ok = b.len() as u64 == seg.len
                        && hex::encode(Sha256::digest(&b)) == seg.sha256;
                    anyhow::Ok((ok, range.start, b))
                }
            };
            let last = ranges.len() - 1;
            let (ok, _, footer) = fetch(ranges[last].clone()).await?;
            if !ok {
                return Err(corrupt("the footer's size or sha256"));
            }
            let meta = Arc::new(footer_metadata(&footer).context("not a readable Parquet file")?);
            if meta.num_row_groups() != last {
                return Err(corrupt("the number of row groups"));
            }
            let meta = ArrowReaderMetadata::try_new(meta, ArrowReaderOptions::new())?;
            let mut groups =
                futures::stream::iter(ranges[..last].iter().cloned().map(fetch)).buffered(2);
            let mut group = 0usize;
            while let Some(r) = groups.next().await {
                let (ok, start, bytes) = r?;
                if !ok {
                    return Err(corrupt(&format!("row group {group}'s size or sha256")));
                }
                let (meta, cols) = (meta.clone(), cols.clone());
                let batches = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<FieldData>>> {
                    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                        Window { start, bytes, file_len: o.bytes },
                        meta,
                    )
                    .with_row_groups(vec![group])
                    .with_batch_size(batch_rows.max(1))
                    .build()?;
                    reader
                        .map(|b| columns::from_batch(&cols, &b.context("decode Parquet")?))
                        .collect()
                })
                .await??;
                for b in batches {
                    if tx.send(Ok(b)).await.is_err() {
                        return Ok(());
                    }
                }
                group += 1;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// The metadata in a Parquet footer segment (which ends with the metadata,
/// its length and the magic).
fn footer_metadata(footer: &[u8]) -> Result<ParquetMetaData> {
    let n = footer.len();
    anyhow::ensure!(n >= 8 && &footer[n - 4..] == b"PAR1", "no Parquet footer");
    let len = u32::from_le_bytes(footer[n - 8..n - 4].try_into()?) as usize;
    anyhow::ensure!(len + 8 <= n, "the footer is cut short");
    Ok(ParquetMetaDataReader::decode_metadata(
        &footer[n - 8 - len..n - 8],
    )?)
}

/// One row group's bytes at their place in the file: all the reader of a
/// single row group asks for.
struct Window {
    start: u64,
    bytes: Bytes,
    file_len: u64,
}

impl Window {
    fn slice(&self, from: u64, len: Option<usize>) -> parquet::errors::Result<Bytes> {
        let end = self.start + self.bytes.len() as u64;
        let to = len.map_or(end, |l| from + l as u64);
        if from < self.start || to > end {
            return Err(parquet::errors::ParquetError::General(format!(
                "bytes {from}..{to} are outside the row group's {}..{end}",
                self.start
            )));
        }
        Ok(self
            .bytes
            .slice((from - self.start) as usize..(to - self.start) as usize))
    }
}

impl Length for Window {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for Window {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(self.slice(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, Some(length))
    }
}

/// Rows per decoded batch: 8192, fewer for wide rows (≤ ~16 MiB a batch).
pub fn batch_rows(cols: &[Column]) -> usize {
    (16 * 1024 * 1024 / columns::approx_row_bytes(cols)).clamp(64, 8192)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    pub objects: usize,
    pub bytes: u64,
    pub rows: u64,
    /// One line per problem, each naming the object.
    pub problems: Vec<String>,
}

/// Checks one object: download (size, checksum), decode (rows, digest).
async fn check_object(
    store: &Store,
    id: &str,
    o: &ObjectEntry,
    cols: &[Column],
) -> Result<Option<String>> {
    let rel = format!("{id}/{}", o.key);
    let tmp = TempFile::new("verify");
    let Some((size, sha)) = store.download(&rel, &tmp.0).await? else {
        return Ok(Some(format!("{}: missing", o.key)));
    };
    if size != o.bytes {
        return Ok(Some(format!(
            "{}: size {size} bytes, manifest says {}",
            o.key, o.bytes
        )));
    }
    if sha != o.sha256 {
        let (path, entry) = (tmp.0.clone(), o.clone());
        let wher = tokio::task::spawn_blocking(move || differing_segments(&path, &entry)).await??;
        return Ok(Some(format!(
            "{}: corrupt (sha256 {sha}, manifest says {}){wher}",
            o.key, o.sha256
        )));
    }
    let mut d = Digest::default();
    let mut rx = read_object(&tmp.0, cols.to_vec(), batch_rows(cols));
    while let Some(b) = rx.recv().await {
        match b.and_then(|f| Ok(rows::row_hashes(&f)?)) {
            Ok(h) => d.add_hashes(&h),
            Err(e) => return Ok(Some(format!("{}: unreadable: {e:#}", o.key))),
        }
    }
    if d.rows != o.rows || Some(d.sum) != parse_digest(&o.digest) {
        return Ok(Some(format!(
            "{}: content digest {} over {} rows, manifest says {} over {}",
            o.key,
            d.text(),
            d.rows,
            o.digest,
            o.rows
        )));
    }
    Ok(None)
}

/// Where a corrupt object differs from its manifest segments, as
/// "; differs in row group 3 (bytes a..b), the footer (bytes c..d)".
fn differing_segments(path: &Path, o: &ObjectEntry) -> Result<String> {
    use std::io::Read;
    let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut bad = Vec::new();
    let ranges = o.segment_ranges();
    for (i, (range, seg)) in ranges.iter().enumerate() {
        let mut sha = Sha256::new();
        std::io::copy(&mut (&mut f).take(seg.len), &mut sha)?;
        if hex::encode(sha.finalize()) != seg.sha256 {
            let what = if i + 1 == ranges.len() {
                "the footer".to_string()
            } else {
                format!("row group {i}")
            };
            bad.push(format!("{what} (bytes {range:?})"));
        }
    }
    Ok(if bad.is_empty() {
        String::new()
    } else {
        format!("; differs in {}", bad.join(", "))
    })
}

/// Reads and parses a backup's manifest.
pub async fn manifest(store: &Store, id: &str) -> Result<Manifest> {
    match store.get(&format!("{id}/{MANIFEST}")).await? {
        Some(b) => Manifest::from_json(&b).with_context(|| format!("backup {id}")),
        None => {
            if store.list(&format!("{id}/")).await?.is_empty() {
                Err(BackupError::NotFound(id.to_string()).into())
            } else {
                Err(BackupError::Incomplete(id.to_string()).into())
            }
        }
    }
}

/// Verifies a backup; on success records `verified.json` in it.
pub async fn verify(store: &Store, id: &str, interactive: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        id: id.to_string(),
        ..Default::default()
    };
    let m = match manifest(store, id).await {
        Ok(m) => m,
        Err(e) => match e.downcast_ref::<BackupError>() {
            Some(BackupError::NotFound(_)) => return Err(e),
            _ => {
                report.problems.push(format!("{MANIFEST}: {e:#}"));
                return Ok(report);
            }
        },
    };
    let mut progress = Progress::new(&format!("verify {id}"), m.total_rows, interactive);
    for c in &m.collections {
        let cols = columns::columns(&c.schema().with_context(|| c.qualified())?);
        let mut total = Digest::default();
        let mut all_ok = true;
        for o in &c.objects {
            report.objects += 1;
            match check_object(store, id, o, &cols).await? {
                Some(p) => {
                    all_ok = false;
                    report.problems.push(p);
                }
                None => {
                    report.bytes += o.bytes;
                    report.rows += o.rows;
                    total.merge(&Digest {
                        rows: o.rows,
                        sum: parse_digest(&o.digest).unwrap_or(0),
                    });
                    progress.add(o.rows, o.bytes);
                }
            }
        }
        if all_ok && (total.rows != c.rows || total.text() != c.digest) {
            report.problems.push(format!(
                "{}: the objects hold {} rows ({}), manifest says {} ({})",
                c.qualified(),
                total.rows,
                total.text(),
                c.rows,
                c.digest
            ));
        }
    }
    progress.finish();
    report.ok = report.problems.is_empty();
    if report.ok {
        let v = Verified {
            at: Utc::now().to_rfc3339(),
            by: super::tool_version(),
            objects: report.objects,
            bytes: report.bytes,
        };
        store
            .put(
                &format!("{id}/{VERIFIED}"),
                serde_json::to_vec_pretty(&v).unwrap_or_default(),
            )
            .await
            .context("record the verification")?;
    }
    Ok(report)
}

/// Human-readable verify output.
pub fn text(r: &VerifyReport) -> String {
    let mut out = format!(
        "backup {}: {} objects, {} rows, {:.1} MiB checked\n",
        r.id,
        r.objects,
        r.rows,
        r.bytes as f64 / 1048576.0
    );
    for p in &r.problems {
        out += &format!("  PROBLEM {p}\n");
    }
    out += if r.ok {
        "RESULT: good\n"
    } else {
        "RESULT: BAD\n"
    };
    out
}
