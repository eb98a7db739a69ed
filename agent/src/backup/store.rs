//! The S3 side: one bucket and prefix, objects addressed relative to the
//! prefix, multipart uploads with bounded memory, streaming downloads that
//! checksum as they go.
//!
//! Every call is retried by the SDK (standard mode: exponential backoff with
//! jitter) on throttling, timeouts and connection errors; all our calls are
//! idempotent (PUT of a whole object or part, GET, LIST, DELETE).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::config::S3;

/// Multipart parts uploading at once per object (memory: this many parts
/// plus the one being filled).
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct Store {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
}

/// Why an S3 call failed, in one line (the SDK's Display is terse).
pub fn describe<E: ProvideErrorMetadata + std::error::Error>(
    e: &aws_sdk_s3::error::SdkError<E>,
) -> String {
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or("")
        ),
        SdkError::DispatchFailure(d) => {
            let mut msg = format!("cannot reach S3: {d:?}");
            if d.is_io() {
                msg = "cannot reach S3 (connection failed)".into();
            } else if d.is_timeout() {
                msg = "S3 did not answer in time".into();
            }
            msg
        }
        SdkError::TimeoutError(_) => "S3 did not answer in time".into(),
        other => format!("{other}"),
    }
}

/// The condition of a conditional write.
#[derive(Debug, Clone)]
pub enum Cond {
    /// The object must not exist.
    Absent,
    /// The object must still have this ETag.
    ETag(String),
}

fn status_of<E>(e: &aws_sdk_s3::error::SdkError<E>) -> Option<u16> {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
        _ => None,
    }
}

fn is_not_found<E: ProvideErrorMetadata>(e: &aws_sdk_s3::error::SdkError<E>) -> bool {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => {
            matches!(s.err().code(), Some("NoSuchKey") | Some("NotFound"))
                || s.raw().status().as_u16() == 404
        }
        _ => false,
    }
}

impl Store {
    /// Builds a client for the configured bucket. Static credentials come
    /// from the configured environment variables or files; otherwise the
    /// AWS default chain applies.
    pub async fn connect(s3: &S3, part_size: usize) -> Result<Store> {
        let creds = crate::aws::Credentials {
            access_key_id_env: s3.access_key_id_env.as_deref(),
            secret_access_key_env: s3.secret_access_key_env.as_deref(),
            access_key_id_file: s3.access_key_id_file.as_ref(),
            secret_access_key_file: s3.secret_access_key_file.as_ref(),
        };
        let sdk = crate::aws::sdk_config(
            &s3.region,
            s3.endpoint.as_deref(),
            &creds,
            Duration::from_secs(300),
        )
        .await?;
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(s3.force_path_style)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        let mut prefix = s3.prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Store {
            client: Client::from_conf(conf),
            bucket: s3.bucket.clone(),
            prefix,
            part_size: part_size.max(1),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Full key of a path relative to the prefix.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// `s3://bucket/prefix/rel`, for messages.
    pub fn url(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(rel))
    }

    pub async fn put(&self, rel: &str, body: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(rel))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("put {}: {}", self.url(rel), describe(&e)))?;
        Ok(())
    }

    /// Writes a small object only if `cond` holds (S3 conditional writes:
    /// `If-None-Match: *`, `If-Match: <etag>`). Returns the new ETag, or
    /// `None` when S3 answered 412 Precondition Failed. Stores without
    /// conditional writes ignore the condition: callers read back.
    pub async fn put_if(&self, rel: &str, body: Vec<u8>, cond: Cond) -> Result<Option<String>> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(rel))
            .body(ByteStream::from(body));
        req = match cond {
            Cond::Absent => req.if_none_match("*"),
            Cond::ETag(e) => req.if_match(e),
        };
        match req.send().await {
            Ok(r) => Ok(Some(r.e_tag().unwrap_or_default().to_string())),
            Err(e) if status_of(&e) == Some(412) => Ok(None),
            Err(e) => anyhow::bail!("put {}: {}", self.url(rel), describe(&e)),
        }
    }

    /// A small object with its ETag, or `None` if it does not exist.
    pub async fn get_tagged(&self, rel: &str) -> Result<Option<(Vec<u8>, String)>> {
        let Some(r) = self.open(rel, None).await? else {
            return Ok(None);
        };
        let etag = r.e_tag().unwrap_or_default().to_string();
        let bytes = r
            .body
            .collect()
            .await
            .with_context(|| format!("read {}", self.url(rel)))?;
        Ok(Some((bytes.into_bytes().to_vec(), etag)))
    }

    /// Starts reading an object; `None` if it does not exist.
    async fn open(&self, rel: &str, range: Option<String>) -> Result<Option<GetObjectOutput>> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(rel))
            .set_range(range)
            .send()
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => anyhow::bail!("get {}: {}", self.url(rel), describe(&e)),
        }
    }

    /// Bytes `start..start + len` (len > 0) of an object, or `None` if it
    /// does not exist.
    pub async fn get_range(&self, rel: &str, start: u64, len: u64) -> Result<Option<Bytes>> {
        let range = format!("bytes={start}-{}", start + len.max(1) - 1);
        let Some(r) = self.open(rel, Some(range)).await? else {
            return Ok(None);
        };
        let bytes = r
            .body
            .collect()
            .await
            .with_context(|| format!("read {}", self.url(rel)))?;
        Ok(Some(bytes.into_bytes()))
    }

    /// The whole object, or `None` if it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_tagged(rel).await?.map(|(b, _)| b))
    }

    /// Streams an object into `file`, returning its size and SHA-256 (hex),
    /// or `None` if it does not exist. Memory stays at one network chunk.
    pub async fn download(&self, rel: &str, file: &Path) -> Result<Option<(u64, String)>> {
        let Some(r) = self.open(rel, None).await? else {
            return Ok(None);
        };
        let mut out = tokio::io::BufWriter::new(
            tokio::fs::File::create(file)
                .await
                .with_context(|| format!("create {}", file.display()))?,
        );
        let mut body = r.body;
        let mut sha = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .with_context(|| format!("read {}", self.url(rel)))?
        {
            sha.update(&chunk);
            n += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(Some((n, hex::encode(sha.finalize()))))
    }

    /// One listing under `rel_prefix`, every page: the objects (keys relative
    /// to the prefix, sizes) and, with a `delimiter`, the common prefixes.
    async fn list_all(
        &self,
        rel_prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<(Vec<(String, u64)>, Vec<String>)> {
        let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
        let rel = |k: &str| k.strip_prefix(&self.prefix).unwrap_or(k).to_string();
        let mut token = None;
        loop {
            let r = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.key(rel_prefix))
                .set_delimiter(delimiter.map(str::to_string))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("list {}: {}", self.url(rel_prefix), describe(&e)))?;
            for o in r.contents() {
                if let Some(k) = o.key() {
                    objects.push((rel(k), o.size().unwrap_or(0).max(0) as u64));
                }
            }
            for p in r.common_prefixes() {
                if let Some(p) = p.prefix() {
                    prefixes.push(rel(p));
                }
            }
            match r.next_continuation_token() {
                Some(t) if r.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok((objects, prefixes))
    }

    /// Keys (relative to the prefix) and sizes under `rel_prefix`.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self.list_all(rel_prefix, None).await?.0)
    }

    /// The first-level folders under the prefix (backup ids), sorted.
    pub async fn folders(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list_all("", Some("/"))
            .await?
            .1
            .into_iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .collect();
        out.sort();
        Ok(out)
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(rel))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("delete {}: {}", self.url(rel), describe(&e)))?;
        Ok(())
    }

    /// Deletes an object only if its ETag is still `etag` (`If-Match` on
    /// DeleteObject). Returns whether it was deleted: `false` when S3
    /// answered 412 Precondition Failed or the object is gone. Stores
    /// without conditional deletes ignore the condition: callers read
    /// first.
    pub async fn delete_if(&self, rel: &str, etag: &str) -> Result<bool> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(rel))
            .if_match(etag)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(412) || is_not_found(&e) => Ok(false),
            Err(e) => anyhow::bail!("delete {}: {}", self.url(rel), describe(&e)),
        }
    }

    /// Deletes every object under `rel_prefix`; returns how many. The
    /// manifest goes first, so a folder half deleted reads as incomplete,
    /// never as a complete backup with missing objects. `go_on` is asked
    /// before each deletion and stops the walk with its error.
    pub async fn delete_folder(
        &self,
        rel_prefix: &str,
        go_on: impl Fn() -> Result<()>,
    ) -> Result<usize> {
        let mut keys = self.list(rel_prefix).await?;
        keys.sort_by_key(|(k, _)| !k.ends_with("/manifest.json"));
        for (k, _) in &keys {
            go_on()?;
            self.delete(k).await?;
        }
        Ok(keys.len())
    }

    /// Starts writing an object (multipart once it outgrows one part).
    pub fn upload(&self, rel: &str) -> Upload {
        Upload {
            store: self.clone(),
            rel: rel.to_string(),
            upload_id: None,
            buf: Vec::new(),
            next_part: 1,
            parts: Vec::new(),
            in_flight: JoinSet::new(),
            bytes: 0,
            sha: Sha256::new(),
        }
    }
}

/// One object being written. Memory: the part being filled plus
/// [`PARTS_IN_FLIGHT`] parts uploading.
pub struct Upload {
    store: Store,
    rel: String,
    upload_id: Option<String>,
    buf: Vec<u8>,
    next_part: i32,
    parts: Vec<CompletedPart>,
    in_flight: JoinSet<Result<CompletedPart>>,
    bytes: u64,
    sha: Sha256,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub bytes: u64,
    pub sha256: String,
    pub parts: u32,
}

impl Upload {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.sha.update(data);
        self.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        while self.buf.len() >= self.store.part_size {
            let rest = self.buf.split_off(self.store.part_size);
            let part = std::mem::replace(&mut self.buf, rest);
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Vec<u8>) -> Result<()> {
        let s = self.store.clone();
        if self.upload_id.is_none() {
            let r = s
                .client
                .create_multipart_upload()
                .bucket(&s.bucket)
                .key(s.key(&self.rel))
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("start the upload of {}: {}", s.url(&self.rel), describe(&e))
                })?;
            self.upload_id = Some(
                r.upload_id()
                    .context("S3 answered CreateMultipartUpload without an upload id")?
                    .to_string(),
            );
        }
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let (client, bucket, key, url) = (
            s.client.clone(),
            s.bucket.clone(),
            s.key(&self.rel),
            s.url(&self.rel),
        );
        let upload_id = self.upload_id.clone().unwrap_or_default();
        let n = self.next_part;
        self.next_part += 1;
        self.in_flight.spawn(async move {
            let r = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(n)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("upload part {n} of {url}: {}", describe(&e)))?;
            Ok(CompletedPart::builder()
                .part_number(n)
                .set_e_tag(r.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(r) = self.in_flight.join_next().await {
            self.parts.push(r.context("part upload task")??);
        }
        Ok(())
    }

    /// Completes the object. On error the multipart upload is aborted.
    pub async fn finish(mut self) -> Result<Uploaded> {
        match self.finish_inner().await {
            Ok(u) => Ok(u),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn finish_inner(&mut self) -> Result<Uploaded> {
        let sha = hex::encode(self.sha.clone().finalize());
        if self.upload_id.is_none() {
            let body = std::mem::take(&mut self.buf);
            self.store.put(&self.rel, body).await?;
            return Ok(Uploaded {
                bytes: self.bytes,
                sha256: sha,
                parts: 1,
            });
        }
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.send_part(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        self.parts.sort_by_key(|p| p.part_number());
        let s = &self.store;
        s.client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(s.key(&self.rel))
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "complete the upload of {}: {}",
                    s.url(&self.rel),
                    describe(&e)
                )
            })?;
        Ok(Uploaded {
            bytes: self.bytes,
            sha256: sha,
            parts: self.parts.len() as u32,
        })
    }

    /// Best effort: frees the parts stored so far.
    pub async fn abort(&mut self) {
        self.in_flight.abort_all();
        if let Some(id) = self.upload_id.take() {
            let s = &self.store;
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                s.client
                    .abort_multipart_upload()
                    .bucket(&s.bucket)
                    .key(s.key(&self.rel))
                    .upload_id(id)
                    .send(),
            )
            .await;
        }
    }
}
